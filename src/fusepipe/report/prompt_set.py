"""The report's "where the accuracy comes from" table, for runs whose training data has a prompt set (a
`prompts_only` source): per model, the toy benchmark's accuracy on the items whose prompt the data holds without
a reference (`toy_prompt_set`: only the inference mode, voted source answers, can teach those) and on the rest
(`toy_not_prompt_set`: the items whose answer a reference in the data states, or that the data never asks), each
±95 % Wilson half-width with n from the toy suite's `subsets`, and the difference to the SFT baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fusepipe.report import headline

SUBSETS = headline.SUBSET_METRICS
TITLES = {"toy_prompt_set": "prompt set", "toy_not_prompt_set": "the rest"}


def counts(result_path: str | Path) -> dict[str, int]:
    """{subset metric: n items} from the model's toy suite file (eval/{model}/toy.json), empty without subsets."""
    path = Path(result_path).parent / "toy.json"
    if not path.is_file():
        return {}
    subsets = json.loads(path.read_text()).get("subsets") or {}
    return {f"toy_{name}": s["n"] for name, s in subsets.items() if s.get("n")}


def table(results: dict[str, dict[str, Any]], n_items: dict[str, dict[str, int]], order: list[str],
          sft: str | None) -> tuple[list[str], list[list[str]]]:
    """(header, rows of text cells): model, per subset accuracy ± half-width (n from `n_items[model]`, see
    `counts`), and its Δ to SFT; empty without a prompt set."""
    if not any(SUBSETS[0] in r["metrics"] for r in results.values()):
        return [], []
    base = results[sft]["metrics"] if sft in results else {}
    rows = []
    for model in order:
        m, n = results[model]["metrics"], n_items.get(model, {})
        if SUBSETS[0] not in m:
            continue
        cells = [model]
        for s in SUBSETS:
            p = m.get(s)
            cells.append("-" if p is None else headline.estimate((p, *headline.wilson(p, n[s])) if n.get(s)
                                                                  else (p, None, None)))
        cells += ["-" if m.get(s) is None or base.get(s) is None else f"{m[s] - base[s]:+.3f}" for s in SUBSETS
                  if sft]
        rows.append(cells)
    header = ["model", *(f"acc {TITLES[s]}" for s in SUBSETS), *((f"Δ SFT {TITLES[s]}" for s in SUBSETS) if sft
                                                                  else ())]
    return header, rows


LEGEND = ("Toy benchmark accuracy (±95 % Wilson) on the items whose prompt the training data holds without a reference "
          "(the prompt set: only the inference mode, the reward models' vote over the models' sampled answers, can "
          "teach them) and on the rest (a reference in the data states the answer, or the data never asks). SFT sees "
          "only the references (docs/toy_world.md, \"The prompt set\").")


def text(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """The table for a terminal: the first `left` columns left-aligned, the rest right-aligned."""
    width = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{w}}" if i < left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, width)))

    return "\n".join([line(header), *(line(r) for r in rows)])
