"""What a trained student took from a teacher beyond the ground truth (distillation transfer).

Teacher-forced fusion (FuseChat Eq. 4, ProFuser Eq. 4-5, InfiFusion Eq. 7) trains the pivot, at every ground-truth
position t, towards λ·1[y_t] + (1 − λ)·p_t (p_t: the fused teacher, renormalised over its top-k). Where the teacher
agrees with the ground truth (argmax p_t = y_t, the usual case when the teacher knows the data) this has the same
argmax as SFT's 1[y_t], so *greedy* answers on the fusion data cannot differ from SFT's at convergence whenever
λ > 1/2 (FuseChat λ = 0.9); what fusion changes is the rest of the distribution. This module measures it: for a
student (a trained or merged model folder) and a teacher (a source's distributions aligned onto the pivot,
`align/{pivot}~{source}/gt`), over the valid aligned positions of the fusion data:

- `nll_gt`:     mean −log q(y_t)                              (what SFT minimises)
- `ce_teacher`: mean −Σ_v p_t(v) log q(v)                      (what the fusion term minimises)
- `kl_teacher`: mean KL(p_t ‖ q) = ce_teacher − H(p_t)         (0 when the student is the teacher, on its top-k)
- `top1_gt`:    share of positions where argmax q = y_t
- `alt_mass`:   mean q(ŷ_t) where the teacher's top-1 ŷ_t ≠ y_t (the teacher's alternative; `n_alt` positions)

A student trained with a broken fusion path (a garbled vocabulary map, a sign error) has no lower `kl_teacher`
than the SFT student; tests/test_fusion_signal.py checks that on the session's run.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np

from fusepipe.errors import ArtifactError

METRICS = ("nll_gt", "ce_teacher", "kl_teacher", "top1_gt", "alt_mass", "n_alt", "n_tokens")


def teacher_rows(aligned_shards: list[str | Path], keys: set[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per sample key: the aligned teacher's pivot token ids, top-k ids and log-probs, validity."""
    from fusepipe.fuse.stage import aligned_dists

    out = {}
    for shard in aligned_shards:
        d = aligned_dists(shard, "teacher")
        for key in d.keys:
            if keys is None or key in keys:
                sl = d.span(key)
                out[key] = {"token_ids": d.token_ids[sl], "ids": d.ids[sl], "logprobs": d.logprobs[sl],
                            "valid": d.valid[sl]}
    return out


class _Sums:
    """Running sums of the METRICS against one teacher."""

    def __init__(self):
        self.sums = dict.fromkeys(("nll_gt", "ce_teacher", "kl_teacher", "top1_gt", "alt_mass"), 0.0)
        self.n_tok = self.n_alt = 0

    def add(self, key: str, t: dict[str, np.ndarray], positions: np.ndarray, labels: np.ndarray,
            logq: np.ndarray) -> None:
        """One example: `logq` the student's log-probs at every input position, `labels` its target tokens at
        `positions` (as train.data.Example holds them)."""
        import torch

        from fusepipe.losses import teacher_probs

        n = min(len(positions), len(t["token_ids"]))
        if not np.array_equal(np.asarray(t["token_ids"][:n]), labels[:n]):
            raise ArtifactError(f"sample {key}: the aligned teacher's tokens are not the student's targets")
        valid = t["valid"][:n]
        pos, labels = positions[:n][valid], labels[:n][valid]
        if not len(pos):
            return
        tids, tlp = t["ids"][:n][valid], t["logprobs"][:n][valid]
        rows = logq[pos - 1]  # the state at t-1 predicts the token at t
        p = teacher_probs(torch.from_numpy(np.ascontiguousarray(tlp))).double().numpy()
        q_top = np.take_along_axis(rows, np.maximum(tids, 0), axis=1)
        ce = -(p * q_top).sum(1)
        h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
        alt = (tids[:, 0] >= 0) & (tids[:, 0] != labels)
        self.sums["nll_gt"] += float(-rows[np.arange(len(pos)), labels].sum())
        self.sums["ce_teacher"] += float(ce.sum())
        self.sums["kl_teacher"] += float((ce - h).sum())
        self.sums["top1_gt"] += float((rows.argmax(1) == labels).sum())
        self.sums["alt_mass"] += float(np.exp(q_top[alt, 0]).sum())
        self.n_tok += len(pos)
        self.n_alt += int(alt.sum())

    def result(self) -> dict[str, float]:
        out = {k: v / max(self.n_tok, 1) for k, v in self.sums.items() if k != "alt_mass"}
        out["alt_mass"] = self.sums["alt_mass"] / max(self.n_alt, 1)
        return {**{k: round(v, 5) for k, v in out.items()}, "n_alt": self.n_alt, "n_tokens": self.n_tok}


def measure_many(student_path: str | Path, examples: list, teachers: dict[str, dict[str, dict[str, np.ndarray]]],
                 batch_size: int = 16) -> dict[str, dict[str, float]]:
    """The METRICS of one student over `examples` (train.data.Example, ground-truth mode) against each teacher of
    `teachers` ({name: teacher_rows(...)}): one forward pass per batch, scored against every teacher. An example
    counts for a teacher when the teacher has its key."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(student_path), dtype=torch.float32)
    model.eval()
    sums = {name: _Sums() for name in teachers}
    usable = [e for e in examples if any(e.key in rows for rows in teachers.values())]
    for start in range(0, len(usable), batch_size):
        batch = usable[start:start + batch_size]
        length = max(len(e.input_ids) for e in batch)
        ids = torch.zeros((len(batch), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, e in enumerate(batch):
            ids[b, :len(e.input_ids)] = torch.from_numpy(e.input_ids)
            mask[b, :len(e.input_ids)] = 1
        with torch.no_grad():
            logq = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1).numpy()
        for b, e in enumerate(batch):
            for name, rows in teachers.items():
                if e.key in rows:
                    sums[name].add(e.key, rows[e.key], e.positions, e.labels, logq[b])
    return {name: s.result() for name, s in sums.items()}


def measure(student_path: str | Path, examples: list, teachers: dict[str, dict[str, np.ndarray]],
            batch_size: int = 16) -> dict[str, float]:
    """The METRICS of one student over `examples` against one teacher (`teacher_rows`)."""
    return measure_many(student_path, examples, {"teacher": teachers}, batch_size)["teacher"]


def examples_from_data(data_path: str | Path, pivot: dict[str, Any], overlong: str, limit: int | None,
                       sample_ids: set[str] | None = None) -> list:
    """The first `limit` fusion conversations (sample_id order; only `sample_ids` when given) tokenized for the
    pivot as the logits stage does (every assistant message a target; `max_model_len` and `overlong` as there)."""
    from fusepipe.generate.stage import read_conversations
    from fusepipe.logits.capture import prepare
    from fusepipe.models import load_tokenizer
    from fusepipe.train.data import Example

    tokenizer = load_tokenizer(pivot)
    out = []
    conversations = read_conversations(data_path, 0, 1)
    if sample_ids is not None:
        conversations = [c for c in conversations if c[0] in sample_ids]
    for sid, messages in conversations[:limit]:
        prep = prepare(tokenizer, messages, last_only=False, max_len=int(pivot["max_model_len"]), overlong=overlong,
                       name=pivot["name"], key=sid)
        if prep is not None:
            out.append(Example(sid, "gt", np.asarray(prep.ids, np.int64), prep.positions))
    return out


def run_suite(params: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    """The `transfer` suite of one model: per source `transfer_kl:{source}`, then `transfer_nll_gt` and
    `transfer_top1_gt` (against the ground truth, the same for every source). A source model has no figures: its
    distributions are over another vocabulary."""
    from fusepipe import paths

    model, pivot = params["model"], params["pivot_model"]
    if params["about"].get("kind") == "source":
        return {"metrics": {}, "skipped": f"{model['name']} does not share the pivot's tokenizer"}
    examples = examples_from_data(paths.data(workdir, "train"), pivot, params["logits"]["overlong"],
                                  params["suite"]["max_prompts"])
    keys = {e.key for e in examples}
    teachers = {}
    for source in params["sources"]:
        shards = [paths.align_shard(workdir, pivot["name"], source, "gt", i) for i in range(params["logits"]["shards"])]
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise ArtifactError(f"{missing[0]}: missing; run the align stage for {pivot['name']}~{source} first")
        teachers[source] = teacher_rows(shards, keys)
    per_source = measure_many(model["path"], examples, teachers)
    metrics: dict[str, float] = {f"transfer_kl:{source}": fig["kl_teacher"] for source, fig in per_source.items()}
    if per_source:
        first = next(iter(per_source.values()))
        metrics["transfer_nll_gt"] = first["nll_gt"]
        metrics["transfer_top1_gt"] = first["top1_gt"]
    return {"metrics": metrics, "per_source": per_source, "conversations": len(examples)}


def examples_of(results: str | Path, recipe: str, target: str, pivot: dict[str, Any], domain: str | None,
                max_len: int = 512) -> list:
    """The ground-truth-mode training examples of one recipe target, those of the fusion data's `domain` only."""
    import polars as pl

    from fusepipe.models import load_tokenizer
    from fusepipe.train.data import load_examples

    results = Path(results)
    shards = sorted(glob.glob(str(results / "targets" / recipe / target / "shard-*.parquet")))
    if not shards:
        raise ArtifactError(f"{results}/targets/{recipe}/{target}: no target shards; run the fuse stage first")
    examples = [e for e in load_examples(shards, load_tokenizer(pivot), pivot, max_len) if e.mode == "gt"]
    if domain is None:
        return examples
    data = pl.read_parquet(results / "data" / "train.parquet", columns=["sample_id", "source"])
    domain_of = dict(zip(data["sample_id"], data["source"]))
    return [e for e in examples if domain_of.get(e.key) == domain]
