"""Logging and progress display shared by every stage: what it reads, does and writes, with rates."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True)


def setup_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=debug, markup=False)
    logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="[%X]", handlers=[handler], force=True)
    for noisy in ("transformers", "datasets", "filelock", "urllib3", "numba", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate with a progress bar (items/s) when attached to a terminal; plain otherwise."""
    if not (console.is_terminal and sys.stderr.isatty()) or os.environ.get("FUSEPIPE_NO_PROGRESS"):
        yield from items
        return
    cols = [TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.speed:.1f} " + unit + "/s" if True else "")]
    with Progress(*cols[:-1], console=console, transient=True) as progress:
        yield from progress.track(items, total=total, description=description)
