"""`fusepipe plan`: what a config will cost before it runs — jobs, GPU-hours, CPU-hours, disk and peak memory per stage.

Everything is derived from the config and named, overridable assumptions (`Assumptions`); nothing is downloaded.
- Model sizes: `fusepipe.sizes` (local config.json, `params_b`, the hub table). MoE models compute with their
  routed experts only (`sizes.compute_params`).
- Tokens: per data source, samples (`n_samples`, else the row count of a local file, else the toy preset) ×
  tokens per sample (measured from up to 200 rows of a local file at 4 characters per token, else `TOKENS` by hub
  id, else `DEFAULT_TOKENS`; `--tokens NAME=TOTAL[/RESPONSE]` overrides). Response tokens are the targets.
- Compute: forward = 2·N·tokens, training = 6·N·tokens (8·N·tokens with gradient checkpointing: the forward is
  recomputed), at `mfu` of the GPU's peak dense bf16 FLOP/s (`GPUS`). Decoding is also bounded by reading the
  weights once per step of `max_num_seqs` sequences from HBM.
- Storage: logits 6.35 + 2.47·k B per target token (benchmarks/RESULTS.md: 31.0 B at k=10, 129.8 at k=50);
  aligned shards 82 B per pivot target token at k=10 (fp32, docs/align.md), scaled by k; targets like aligned;
  text 2 B per token; a model 2 B per parameter (bf16).
- Training memory per GPU (DeepSpeed, mixed-precision Adam, 16 B/param): ZeRO-2 2·N + 14·N/g, ZeRO-3 16·N/g,
  plus activations micro_batch·max_len·(2·hidden·layers [checkpoints] + 4·vocab [fp32 logits]) bytes.
- CPU stages: alignment 10 core-µs per target token and mode (bench_align: 3.45 core-ms per 500-token sample for
  the links, plus projection), fusion 2 core-µs per target token and member, merging 200 MB/s of weights read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fusepipe import config as fpconfig
from fusepipe import pipeline, recipes, sizes
from fusepipe.errors import ConfigError, DataError
from fusepipe.params.data import DataSource

GiB = 2**30

# name: (peak dense bf16 FLOP/s, HBM bytes/s, memory per GPU in bytes)
GPUS: dict[str, tuple[float, float, int]] = {
    "a100": (312e12, 2.0e12, 80 * GiB),
    "a800": (312e12, 2.0e12, 80 * GiB),
    "h100": (989e12, 3.35e12, 80 * GiB),
    "h800": (989e12, 3.35e12, 80 * GiB),
    "h200": (989e12, 4.8e12, 141 * GiB),
}

# hub id (lower case): (tokens per sample, of which response tokens); rough means of the public datasets
TOKENS: dict[str, tuple[int, int]] = {
    "fuseai/fusechat-mixture": (900, 500),  # FuseChat App. E: "average length of 500 tokens" (the targets)
    "shahules786/orca-best": (450, 250),
    "huggingfaceh4/no_robots": (350, 250),
    "shibing624/sharegpt_gpt4": (1200, 800),
    "openassistant/oasst_top1_2023-08-25": (700, 450),
    "meta-math/metamathqa": (320, 240),
    "vivacem/mmiqc": (350, 250),
    "nvidia/openmathinstruct-2": (400, 320),
    "ise-uiuc/magicoder-oss-instruct-75k": (600, 450),
    "theblackcat102/evol-codealpaca-v1": (550, 400),
    "ajibawa-2023/python-code-23k-sharegpt": (450, 300),
}
DEFAULT_TOKENS = (600, 400)
TOY_TOKENS = (60, 20)  # the toy world's short task conversations, before it is built
# hub id (lower case): rows, for sources without n_samples (the papers' counts)
ROWS: dict[str, int] = {"fuseai/fusechat-mixture": 95_000, "shahules786/orca-best": 329_000,
                        "huggingfaceh4/no_robots": 9_500, "openassistant/oasst_top1_2023-08-25": 12_900}
CHARS_PER_TOKEN = 4
# lm-eval suites: (forward tokens, generated tokens) per model, rough sizes of the task lists with their shots
SUITE_TOKENS = {"open_llm": (80e6, 0.4e6), "infifusion": (25e6, 3e6), "fusechat": (40e6, 2e6), "toy": (2e4, 2e3)}
STAGES = ("data", "generate", "reward", "vote", "logits", "align", "fuse", "train", "merge", "evaluate")


@dataclass
class Assumptions:
    """The planning assumptions; every one is a CLI option of `fusepipe plan`."""

    gpu: str = "h100"
    mfu_forward: float = 0.40  # prefill, teacher forcing, reward scoring, lm-eval log-likelihoods
    mfu_decode: float = 0.10  # sampling; also bounded by HBM bandwidth
    mfu_train: float = 0.35
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # per source name: (total, response)

    @property
    def peak(self) -> float:
        return GPUS[self.gpu][0]

    @property
    def hbm(self) -> float:
        return GPUS[self.gpu][1]

    @property
    def gpu_mem(self) -> int:
        return GPUS[self.gpu][2]


@dataclass
class Stage:
    jobs: int = 0
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    disk_bytes: float = 0.0
    peak_gpu_bytes: float = 0.0  # per GPU
    peak_host_bytes: float = 0.0  # per job
    notes: list[str] = field(default_factory=list)

    def add(self, jobs=0, gpu_h=0.0, cpu_h=0.0, disk=0.0, gpu_mem=0.0, host=0.0) -> None:
        self.jobs += jobs
        self.gpu_hours += gpu_h
        self.cpu_hours += cpu_h
        self.disk_bytes += disk
        self.peak_gpu_bytes = max(self.peak_gpu_bytes, gpu_mem)
        self.peak_host_bytes = max(self.peak_host_bytes, host)


# ---------------------------------------------------------------------------------------------- config loading


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's `--configfile` semantics: dicts merge key by key, everything else (lists too) is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(configfile: str | Path, base: str | Path | None = "config/config.yaml") -> fpconfig.Config:
    """A recipe file as Snakemake reads it: deep-merged over `base` (None: the file alone), then validated."""
    raw: dict[str, Any] = {}
    for path in [p for p in (base, configfile) if p is not None]:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: config file not found")
        raw = deep_merge(raw, yaml.safe_load(Path(path).read_text()) or {})
    return pipeline.load_dict(raw, str(configfile))


# ---------------------------------------------------------------------------------------------- sizes and tokens


def _toy_arch(cfg: fpconfig.Config) -> sizes.Arch:
    from fusepipe.toy.world import PRESETS

    p = PRESETS[cfg.toy.preset]
    heads = p.hidden // 32
    return sizes.Arch(hidden=p.hidden, layers=p.layers, heads=heads, kv_heads=max(1, heads // 2),
                      intermediate=p.intermediate, vocab=512)


def _is_toy(cfg: fpconfig.Config, spec: Any) -> bool:
    return cfg.toy.enabled and str(spec.path).startswith(f"{cfg.workdir}/toy/")


def model_size(cfg: fpconfig.Config, spec: Any) -> tuple[int, int, sizes.Arch | None]:
    """(parameters, compute parameters, architecture) of a model; a toy model not built yet: from its preset."""
    n = sizes.param_count(spec)
    if n is None and _is_toy(cfg, spec):
        a = _toy_arch(cfg)
        return a.params(), a.compute_params(), a
    if n is None:
        kind = "reward model" if hasattr(spec, "strength") else "model"
        raise ConfigError(f"{kind} {spec.name!r} ({spec.path}): unknown size; it is neither a local folder with a "
                          "config.json nor in fusepipe.sizes.HUB, so set `params_b:` (parameters in billions) on it")
    return n, sizes.compute_params(spec) or n, sizes.arch(spec)


def _local_measure(src: DataSource) -> tuple[int, tuple[int, int]] | None:
    """(rows, (tokens, response tokens) per sample) of a local file, from up to 200 rows at 4 chars per token."""
    from fusepipe.data.ingest import detect_format, iter_rows, to_messages

    path = Path(src.path)
    if not path.is_file():
        return None
    rows, total, resp, fmt = 0, 0, 0, src.format
    for row in iter_rows(src.path, src.loader, src.split):
        rows += 1
        if rows > 200 or isinstance(row.record, Exception):
            continue
        try:
            fmt = detect_format(row.record, row.where) if fmt == "auto" else fmt
            msgs = to_messages(row.record, fmt, row.where, src.columns)
        except DataError:  # a bad row only leaves the measurement
            continue
        total += sum(len(m["content"]) for m in msgs)
        resp += sum(len(m["content"]) for m in msgs if m["role"] == "assistant")
    sampled = min(rows, 200)
    if not sampled:
        return None
    return rows, (max(1, total // sampled // CHARS_PER_TOKEN), max(1, resp // sampled // CHARS_PER_TOKEN))


def data_tokens(cfg: fpconfig.Config, a: Assumptions) -> list[dict[str, Any]]:
    """Per source: samples, tokens per sample, response tokens per sample, and where the numbers come from."""
    out = []
    for src in cfg.data.sources:
        measured = _local_measure(src)
        rows = measured[0] if measured else None
        if rows is None and cfg.toy.enabled:
            from fusepipe.toy.world import PRESETS, prompt_set_size

            rows = (prompt_set_size(cfg.toy.preset, cfg.toy.seed) if src.prompts_only
                    else PRESETS[cfg.toy.preset].n_fusion.get(src.name))
        rows = rows or ROWS.get(src.path.lower())
        n = min(src.n_samples, rows) if src.n_samples and rows else (src.n_samples or rows)
        if n is None:
            raise ConfigError(f"data source {src.name!r} ({src.path}): unknown number of samples (not a local file, "
                              "not in fusepipe.plan.ROWS); set n_samples on it")
        if src.name in a.tokens:
            tok, origin = a.tokens[src.name], "--tokens"
        elif measured:
            tok, origin = measured[1], "measured"
        elif src.path.lower() in TOKENS:
            tok, origin = TOKENS[src.path.lower()], "table"
        elif cfg.toy.enabled and src.path.startswith(f"{cfg.workdir}/toy/"):
            tok, origin = TOY_TOKENS, "toy default"
        else:
            tok, origin = DEFAULT_TOKENS, "default"
        out.append({"name": src.name, "samples": n, "tokens": tok[0], "response": tok[1], "origin": origin,
                    "prompts_only": src.prompts_only})
    return out


# ---------------------------------------------------------------------------------------------- the estimate


def _hours(flops: float, a: Assumptions, mfu: float) -> float:
    return flops / (a.peak * mfu) / 3600


def _logits_bytes(k: int) -> float:
    return 6.35 + 2.469 * k


def estimate(cfg: fpconfig.Config, a: Assumptions | None = None) -> dict[str, Any]:
    """Per stage and in total: jobs, GPU-hours, CPU-hours, disk bytes, peak GPU and host bytes (see the module)."""
    a = a or Assumptions()
    if a.gpu not in GPUS:
        raise ConfigError(f"unknown gpu {a.gpu!r}; known: {', '.join(GPUS)}")
    st = {s: Stage() for s in STAGES}
    src = data_tokens(cfg, a)
    n_all = sum(s["samples"] for s in src)
    refs = [s for s in src if not s["prompts_only"]] or src  # a prompt set has no reference: inference mode only
    n_ref = sum(s["samples"] for s in refs) * (1 - cfg.data.eval_fraction)  # training rows with a reference
    n_train = n_ref + sum(s["samples"] for s in src if s["prompts_only"])  # every training prompt
    tok = sum(s["samples"] * s["tokens"] for s in refs) / sum(s["samples"] for s in refs)  # mean tokens per sample
    resp = sum(s["samples"] * s["response"] for s in refs) / sum(s["samples"] for s in refs)
    n_mode = {"gt": n_ref, "inf": n_train}
    prompt = tok - resp
    size = {m.name: model_size(cfg, m) for m in [*cfg.models, *cfg.reward_models]}
    wbytes = {name: n * 2 for name, (n, _, _) in size.items()}
    host_load = {name: 1.5 * b + 4 * GiB for name, b in wbytes.items()}
    vllm_mem = {m.name: m.gpu_memory_utilization * a.gpu_mem for m in [*cfg.models, *cfg.reward_models]}

    st["data"].add(1, cpu_h=n_all * tok / 50e3 / 3600, disk=n_all * tok * 2, host=4 * GiB)
    if cfg.toy.enabled:
        st["data"].add(1, cpu_h=0.05)
        st["data"].notes.append("includes toy_world")

    infer = bool(cfg.reward_models)
    gen_tok = min(resp, cfg.generate.max_tokens)
    if infer:
        S = cfg.generate.shards
        for m in cfg.generators:
            _, nc, _ = size[m.name]
            seqs = n_train * cfg.generate.n
            prefill = _hours(2 * nc * seqs * prompt, a, a.mfu_forward)
            decode_flops = _hours(2 * nc * seqs * gen_tok, a, a.mfu_decode)
            decode_bw = seqs * gen_tok / m.max_num_seqs * wbytes[m.name] / (a.hbm * m.tensor_parallel_size) / 3600
            wall = prefill / m.tensor_parallel_size + max(decode_flops / m.tensor_parallel_size, decode_bw)
            st["generate"].add(S, gpu_h=wall * m.tensor_parallel_size, disk=seqs * gen_tok * 4,
                               gpu_mem=vllm_mem[m.name], host=host_load[m.name])
        for r in cfg.reward_models:
            _, nc, _ = size[r.name]
            seqs = n_train * cfg.generate.n * len(cfg.generators)
            st["reward"].add(S, gpu_h=_hours(2 * nc * seqs * (prompt + gen_tok), a, a.mfu_forward),
                             disk=seqs * 16, gpu_mem=vllm_mem[r.name], host=host_load[r.name])
        st["vote"].add(1, cpu_h=n_train * len(cfg.generators) * len(cfg.reward_models) / 1e6 / 3600,
                       disk=n_train * 64, host=4 * GiB)

    L = cfg.logits.shards
    lb = _logits_bytes(cfg.logits.k)
    for mode in cfg.logits.modes:
        models = cfg.main_models if mode == "gt" else cfg.generators  # what `all` runs (no controls)
        targets = resp if mode == "gt" else gen_tok
        for m in models:
            _, nc, _ = size[m.name]
            st["logits"].add(L, gpu_h=_hours(2 * nc * n_mode[mode] * (prompt + targets), a, a.mfu_forward),
                             disk=n_mode[mode] * targets * lb, gpu_mem=vllm_mem[m.name], host=host_load[m.name])

    k_al = cfg.align.k or cfg.logits.k
    aligned_b = 82 * k_al / 10
    largest_vocab = max((ar.vocab for _, _, ar in size.values() if ar), default=32000)
    for s in cfg.sources:
        modes = cfg.align_modes(s.name)
        t = sum(n_mode[md] * (resp if md == "gt" else gen_tok) for md in modes)
        st["align"].add(2 * len(modes) * L + 2, cpu_h=t * 10e-6 / 3600, disk=t * aligned_b,
                        host=8 * GiB + largest_vocab * 64 * cfg.logits.k)

    pivot_n, pivot_nc, pivot_arch = size[cfg.pivot.name]
    for r in cfg.recipes:
        res = recipes.resolve(r)
        tr = r.train
        for t in recipes.targets(cfg, r):
            members = len(recipes.members(cfg, res, t))
            t_tok = sum(n_mode[md] * (resp if md == "gt" else gen_tok) for md in res["modes"])
            st["fuse"].add(L, cpu_h=t_tok * members * 2e-6 / 3600, disk=t_tok * aligned_b, host=8 * GiB)
            seq_tokens = sum(n_mode[md] * (tok if md == "gt" else prompt + gen_tok) * p["epochs"] * tr.epochs_scale
                             for p in res["schedule"] for md in p["modes"])
            factor = 8 if tr.gradient_checkpointing else 6
            g = tr.gpus
            state = (2 * pivot_n + 14 * pivot_n / g) if tr.zero_stage == 2 else 16 * pivot_n / g
            h, layers, vocab = ((pivot_arch.hidden, pivot_arch.layers, pivot_arch.vocab) if pivot_arch
                                else (4096, 32, 32000))
            act = tr.micro_batch * tr.max_len * (2 * h * layers + 4 * vocab)
            hours = _hours(factor * pivot_nc * seq_tokens, a, a.mfu_train)
            st["train"].add(1, gpu_h=hours, disk=2 * pivot_n, gpu_mem=state + act, host=4 * pivot_n + 8 * GiB)
            st["train"].notes.append(f"{r.name}/{t}: {hours:.1f} GPU-h ({hours / g:.1f} h on {g} GPUs), "
                                     f"{seq_tokens / 1e6:.0f}M tokens trained")
    for r in recipes.merge_recipes(cfg):
        k = len(recipes.targets(cfg, r))
        for _ in cfg.merge.methods:
            read = (k + 1) * 2 * pivot_n
            largest = pivot_arch.largest_tensor() if pivot_arch else pivot_n / 50
            st["merge"].add(1, cpu_h=read / 200e6 / 3600, disk=2 * pivot_n, host=(k + 2) * largest * 4 + 4 * GiB)

    evals = pipeline.eval_models(cfg)
    for suite in cfg.eval_suites:
        fwd, gen = SUITE_TOKENS.get(suite, (0, 0))
        for info in evals.values():
            spec = info["spec"]
            _, nc, _ = size[spec.name]
            if suite == "rm":
                from fusepipe.evaluate import suites as fpsuites

                s = fpsuites.resolve(suite, {k: v.model_dump(exclude_none=True) for k, v in cfg.evaluate.suites.items()})
                gen = s["max_prompts"] * s["max_tokens"]
                rm_h = sum(_hours(2 * size[r.name][1] * s["max_prompts"] * (prompt + s["max_tokens"]), a,
                                  a.mfu_forward) for r in cfg.reward_models)
            else:
                rm_h = 0.0
            hours = _hours(2 * nc * fwd, a, a.mfu_forward) + _hours(2 * nc * gen, a, a.mfu_decode) + rm_h
            st["evaluate"].add(1, gpu_h=hours, disk=1e6,
                               gpu_mem=vllm_mem.get(spec.name, 0.9 * a.gpu_mem), host=host_load[spec.name])
    st["evaluate"].jobs += len(evals)  # eval_results: one gather job per model
    if cfg.toy.enabled:  # tiny models run on CPUs in the toy world: count their compute as CPU time
        for s in st.values():
            s.cpu_hours += s.gpu_hours
            s.gpu_hours = 0.0
            s.peak_gpu_bytes = 0.0
    total = Stage()
    for s in st.values():
        total.add(s.jobs, s.gpu_hours, s.cpu_hours, s.disk_bytes, s.peak_gpu_bytes, s.peak_host_bytes)
    total.jobs += 2  # report and all (Snakemake counts the target rule as a job)
    return {"assumptions": {**asdict(a), "peak_flops": a.peak, "hbm_bytes_per_s": a.hbm, "gpu_mem_bytes": a.gpu_mem},
            "data": {"samples": n_all, "train_samples": n_train, "tokens_per_sample": tok,
                     "response_tokens_per_sample": resp, "sources": src},
            "models": {k: {"params": v[0], "compute_params": v[1]} for k, v in size.items()},
            "stages": {k: asdict(v) for k, v in st.items()}, "total": asdict(total)}


# ---------------------------------------------------------------------------------------------- output


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b / 1024:.0f} KiB" if b else "0"


def table(plan: dict[str, Any]) -> str:
    """The plan as a fixed-width table with a total row and the assumptions under it."""
    head = f"{'stage':<10} {'jobs':>6} {'GPU-h':>9} {'CPU-h':>9} {'disk':>11} {'peak GPU':>10} {'peak host':>10}"
    lines = [head, "-" * len(head)]
    rows = [*plan["stages"].items(), ("total", plan["total"])]
    for name, s in rows:
        if name == "total":
            lines.append("-" * len(head))
        lines.append(f"{name:<10} {s['jobs']:>6} {s['gpu_hours']:>9.1f} {s['cpu_hours']:>9.2f} "
                     f"{_fmt_bytes(s['disk_bytes']):>11} {_fmt_bytes(s['peak_gpu_bytes']):>10} "
                     f"{_fmt_bytes(s['peak_host_bytes']):>10}")
    d, a = plan["data"], plan["assumptions"]
    lines.append("")
    for name, s in plan["stages"].items():
        lines.extend(f"{name}: {note}" for note in s["notes"])
    lines.append(f"data: {d['samples']:,.0f} samples ({d['train_samples']:,.0f} train), {d['tokens_per_sample']:.0f} "
                 f"tokens per sample of which {d['response_tokens_per_sample']:.0f} response; sources: "
                 + ", ".join(f"{s['name']} {s['samples']:,}×{s['tokens']}/{s['response']} ({s['origin']})"
                             for s in d["sources"]))
    lines.append(f"assumptions: gpu {a['gpu']} ({a['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
                 f"{a['gpu_mem_bytes'] / GiB:.0f} GiB), MFU forward {a['mfu_forward']}, decode {a['mfu_decode']}, "
                 f"train {a['mfu_train']}; peak GPU is per GPU (vLLM reserves gpu_memory_utilization of it)")
    return "\n".join(lines)


def to_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, default=float)
