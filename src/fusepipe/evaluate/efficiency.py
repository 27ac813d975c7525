"""Alignment efficiency (the tokenizer ablation grid): how much of what fusion moves from a heterogeneous source
survives the token alignment, measured against the source's homogeneous twin (the control: the same knowledge
with the pivot's tokenizer, so its alignment onto the pivot is the identity; InfiFusion's homogeneous case).

The control's own distributions, aligned onto the pivot (`align/{pivot}~{control}/gt`), are the common reference
of the source's knowledge in the pivot's vocabulary. For every student q (fusepipe.evaluate.transfer, Eq. of the
`transfer` suite), over the fusion conversations of the control's domain:

    KL_s   = mean_t KL(p_control,t ‖ q_s,t)
    gain_s = KL_baseline − KL_s                         (baseline: the SFT model: what fusion adds to SFT)
    efficiency_v     = gain(source target, alignment v) / gain(control target)
    efficiency_net_v = (gain_v − gain_other) / (gain_control − gain_other)

`other` is the target of an unrelated source: any fused target moves a little towards the control, since every
teacher is sharper than the pivot, so the net figure subtracts that. 1.0 means the alignment kept everything a
perfect (identity) alignment transfers; 0 means the source taught no more than an unrelated one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fusepipe.artifacts import Manifest, write_json
from fusepipe.errors import ArtifactError
from fusepipe.evaluate.transfer import examples_from_data, measure_many, teacher_rows

log = logging.getLogger("fusepipe.evaluate")


def examples(params: dict[str, Any], workdir: str | Path) -> list:
    """The first `limit` fusion conversations of `data_source` (all sources: None), tokenized for the pivot."""
    import polars as pl

    from fusepipe import paths

    data = paths.data(workdir, "train")
    if not Path(data).is_file():
        raise ArtifactError(f"{data}: missing; run the data stage first")
    source, keep = params["tokenizer"]["data_source"], None
    if source is not None:  # only that source's conversations are tokenized
        rows = pl.read_parquet(data, columns=["sample_id", "source"])
        keep = set(rows.filter(pl.col("source") == source)["sample_id"].to_list())
    every = examples_from_data(data, params["pivot_model"], params["logits"]["overlong"], None, keep)
    if not every:
        raise ArtifactError(f"{data}: no training conversation of data source {source!r} "
                            "(ablations.tokenizer.data_source)")
    return every[:int(params["tokenizer"]["limit"])]


def gains(kl: dict[str, float]) -> dict[str, Any]:
    """Gains over the baseline and efficiencies from each student's KL to the control (`value:NAME` keys for the
    grid's values, plus `baseline`, `other`, `control`)."""
    base = kl["baseline"]
    gain = {role: base - v for role, v in kl.items()}
    g_control, g_other = gain["control"], gain["other"]
    out: dict[str, Any] = {"kl": kl, "gain": gain, "values": {}}
    for role, g in gain.items():
        if role.startswith("value:"):
            eff = g / g_control if g_control > 0 else None
            net = (g - g_other) / (g_control - g_other) if g_control > g_other else None
            out["values"][role.removeprefix("value:")] = {"kl": kl[role], "gain": g, "efficiency": eff,
                                                          "efficiency_net": net}
    return out


def run(params: dict[str, Any], workdir: str | Path, out: str | Path) -> dict[str, Any]:
    """Measure every student against the control's aligned distributions and write `out` (JSON)."""
    t = params["tokenizer"]
    manifest = Manifest("efficiency", params)
    missing = [s for s in params["teacher_shards"] if not Path(s).is_file()]
    if missing:
        raise ArtifactError(f"{missing[0]}: missing; run the align stage for the control {t['control']!r} first")
    with manifest.phase("examples"):
        exs = examples(params, workdir)
        teacher = teacher_rows(params["teacher_shards"], {e.key for e in exs})
    kl: dict[str, float] = {}
    measured: dict[str, Any] = {}
    with manifest.phase("measure"):
        for role, student in params["students"].items():
            if not Path(student["path"]).is_dir():
                raise ArtifactError(f"{student['path']}: missing; train {student['model']} first")
            fig = measure_many(student["path"], exs, {"control": teacher})["control"]
            measured[role] = {"model": student["model"], **fig}
            kl[role] = fig["kl_teacher"]
            log.info("%-16s %-44s KL(control ‖ model) %.4f", role, student["model"], fig["kl_teacher"])
    result = {"control": t["control"], "source": t["source"], "other": t["other"], "data_source": t["data_source"],
              "conversations": len(exs), "students": measured, **gains(kl)}
    write_json(result, out)
    manifest["conversations"] = len(exs)
    manifest.write(Path(out).parent, name=f"_manifest.{Path(out).stem}.json")
    return result
