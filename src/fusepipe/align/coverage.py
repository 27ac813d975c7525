"""Coverage of one (pivot, source) alignment: what share of pivot positions got a source distribution, through
which kind of link, how much source probability mass survived the vocabulary map, and how much of the
vocabulary the map covers. Shards add up their sums (`coverage_counts`, `merge_counts`); `coverage_report`
turns the totals into the shares written to `coverage.json` (read in docs/align.md).
"""

from __future__ import annotations

import numpy as np

from fusepipe.align.dtw import Links
from fusepipe.align.project import Projected

KINDS = ("unaligned", "one_to_one", "one_to_many", "many_to_one")


def coverage_counts(
    links: Links, proj: Projected, src_topk_ids: np.ndarray, src_topk_logprobs: np.ndarray, vmap: np.ndarray
) -> dict[str, float]:
    """Sums over one shard; positions are pivot target tokens, entries are source top-k entries."""
    kinds = np.bincount(proj.kind, minlength=len(KINDS))
    kept = np.where(proj.valid[:, None], np.exp(proj.logprobs.astype(np.float64)), 0.0).sum()
    ids = np.asarray(src_topk_ids)
    real = ids >= 0
    probs = np.exp(np.asarray(src_topk_logprobs, np.float64)) * real
    mapped = real & (np.asarray(vmap)[np.where(real, ids, 0)] >= 0)
    return {
        "positions": float(len(proj.kind)),
        **{k: float(c) for k, c in zip(KINDS, kinds)},
        "valid": float(proj.valid.sum()),
        "source_mass": float(proj.src_mass.astype(np.float64).sum()),
        "kept_mass": float(kept),
        "entries": float(real.sum()),
        "entries_mapped": float(mapped.sum()),
        "entry_mass": float(probs.sum()),
        "entry_mass_mapped": float(probs[mapped].sum()),
        "dtw_cost": float(links.cost.sum()),
    }


def merge_counts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Σ of the shards' counts."""
    return {key: sum(p[key] for p in parts) for key in parts[0]} if parts else {}


def coverage_report(counts: dict[str, float], vmap: np.ndarray) -> dict:
    """Shares for coverage.json (see docs/align.md, "Reading coverage.json")."""
    n = max(counts["positions"], 1.0)
    return {
        "positions": int(counts["positions"]),
        "link_share": {k: counts[k] / n for k in KINDS},
        "valid_share": counts["valid"] / n,
        "mass_kept": counts["kept_mass"] / max(counts["source_mass"], 1e-30),
        "topk_entries_mapped": counts["entries_mapped"] / max(counts["entries"], 1.0),
        "topk_mass_mapped": counts["entry_mass_mapped"] / max(counts["entry_mass"], 1e-30),
        "vocab_mapped": float(np.mean(np.asarray(vmap) >= 0)) if len(vmap) else 0.0,
        "dtw_cost_per_position": counts["dtw_cost"] / n,
    }
