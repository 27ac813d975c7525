"""The report's "what fusion moved" table: per model with the pivot's tokenizer, the KL of each source's aligned
distributions to the model on the fusion data (`transfer_kl:{source}`, nats per token, from the `transfer`
suite: evaluate/transfer.py) and the share of ground-truth tokens that are its top-1 (`transfer_top1_gt`).

Teacher-forced fusion with λ > 1/2 keeps SFT's greedy answers on the fusion data (the target's argmax is the
ground-truth token wherever the teacher agrees with it); what it changes is the rest of the distribution. A
FuseChat target sits closest to its own source; SFT stays where the pivot was; a broken alignment or loss shows
here as a target no closer to its source than SFT.
"""

from __future__ import annotations

from typing import Any

PREFIX = "transfer_kl:"
TOP1 = "transfer_top1_gt"


def is_transfer(metric: str) -> bool:
    return metric.startswith("transfer_")


def table(results: dict[str, dict[str, Any]], order: list[str]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): model, KL to each source, top-1 = ground truth; only models with transfer figures."""
    sources = sorted({k.removeprefix(PREFIX) for r in results.values() for k in r["metrics"] if k.startswith(PREFIX)})
    if not sources:
        return [], []
    rows = []
    for model in order:
        m = results[model]["metrics"]
        if any(f"{PREFIX}{s}" in m for s in sources):
            rows.append([model, *[m.get(f"{PREFIX}{s}") for s in sources], m.get(TOP1)])
    return ["model", *[f"KL {s}" for s in sources], "top-1 = GT"], rows


LEGEND = ("KL(source ‖ model) in nats per token over the fusion data's ground-truth tokens, the source's top-k "
          "aligned onto the pivot (lower: closer to that source); top-1 = GT: share of those tokens the model "
          "ranks first. Fusion moves the distribution, not the greedy answers, when λ > 1/2 (docs/evaluate.md).")


def text(header: list[str], rows: list[list[Any]]) -> str:
    width = [max(len(str(h)), 6) for h in header]
    width[0] = max([len(header[0]), *(len(r[0]) for r in rows)])
    lines = ["  ".join(f"{h:>{w}}" if i else f"{h:{w}}" for i, (h, w) in enumerate(zip(header, width, strict=True)))]
    for r in rows:
        cells = [f"{r[0]:{width[0]}}"] + [f"{'-' if v is None else f'{v:.3f}':>{w}}"
                                           for v, w in zip(r[1:], width[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)
