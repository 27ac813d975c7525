"""Benchmark: fusepipe's streaming merge against mergekit's `mergekit-yaml`, same method, same inputs.

For each input set (the tests' toy Llama and a larger random-weight Llama of a few hundred MB, both
fp32, pivot + 2 targets whose norm weights have tiny deltas, under mergekit's SCE weight guard) and each
method, both tools run as fresh processes, alternating, `--repeats` times. Printed: medians of wall time (process start to exit, imports included) and of peak RSS (the
child's own VmHWM, mapped file pages included), their ratios, whether the outputs agree (rtol 1e-5,
atol 1e-6), and fusepipe's peak RSS against its bound (K+2) × the largest tensor in fp32 + a constant.
The constant (runtime, libraries, fixed-size blocks) comes from the same merge on a "probe": the large
model with half its vocabulary, so only the largest tensors differ. bound = RSS_probe + (K+2)·(largest
− largest_probe): the RSS may grow by K+2 bytes per byte of the largest tensor. Linux only (/proc).

    python benchmarks/bench_merge.py [--workdir DIR] [--methods sce,ties] [--sizes toy,large] [--repeats 3]

mergekit is `$MERGEKIT_YAML`, else `mergekit-yaml` on PATH; without it only fusepipe runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from fusepipe.merge.engine import Checkpoint
from fusepipe.merge.export import export_mergekit

SIZES = {
    "toy": {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "intermediate_size": 256, "vocab_size": 300},
    "large": {"hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8, "num_hidden_layers": 4,
              "intermediate_size": 2816, "vocab_size": 32000},
}  # fmt: skip
SIZES["probe"] = SIZES["large"] | {"vocab_size": 16000}  # the large model with half its largest tensor
METHODS = {
    "sce": {"method": "sce", "sce": {"tau": 0.1, "semantics": "mergekit"}},
    "ties": {"method": "ties", "ties": {"density": 0.6}},
    "task_arithmetic": {"method": "task_arithmetic"},
    "linear": {"method": "linear"},
    "slerp": {"method": "slerp", "slerp": {"t": 0.3}},
    "dare": {"method": "dare", "dare": {"drop_rate": 0.4}},  # random masks: time and memory only
}
RANDOM = {"dare"}

# Runs a Python script (argv[1]) as __main__ and reports the process's peak RSS on exit.
LAUNCH = """
import atexit, runpy, sys
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nVMHWM_KB " + line.split()[1] + "\\n")
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OURS = """
import json, sys
from fusepipe.merge import MergeConfig, merge
pivot, *targets, out, params = sys.argv[1:]
merge(pivot, targets, out, MergeConfig.model_validate(json.loads(params)))
"""


NORM_SCALE = 1e-3
"""Delta scale of the norm weights in every target: Σ_j mean(δ̂_j²) falls under mergekit's SCE weight guard
(1e-6), as fine-tuning deltas of layernorm weights do; the other tensors get 0.01."""
INPUTS_VERSION = "2"  # 2: tiny norm-weight deltas (issue 17); a workdir built by an older version is rebuilt


def build(folder: Path, size: str) -> tuple[Path, list[Path]]:
    """pivot (random init) and two targets: pivot + N(0, (s·u)²), u ~ U(0.5, 2) per tensor, s = 0.01 (norm
    weights: NORM_SCALE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    pivot, targets = folder / "pivot", [folder / "t1", folder / "t2"]
    stamp = folder / "inputs-version"
    if stamp.exists() and stamp.read_text() == INPUTS_VERSION:
        return pivot, targets
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SIZES[size]))
    model.save_pretrained(pivot, max_shard_size="200MB")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for seed, target in enumerate(targets, 1):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                u = 0.5 + 1.5 * torch.rand((), generator=g)
                scale = NORM_SCALE if "norm" in name else 0.01
                p.copy_(state[name] + torch.randn(p.shape, generator=g) * scale * u)
        model.save_pretrained(target, max_shard_size="200MB")
    stamp.write_text(INPUTS_VERSION)
    return pivot, targets


def measure(python: str, script: Path, args: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of `python script args` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", LAUNCH, str(script), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    hwm = [line for line in proc.stderr.splitlines() if line.startswith("VMHWM_KB ")]
    return wall, int(hwm[-1].split()[1]) * 1024


def compare(a: Path, b: Path) -> tuple[float, int, int, float]:
    """Max |a − b|, elements outside rtol 1e-5 / atol 1e-6, total elements, and max |a − b| over the norm
    weights (the tensors with tiny deltas)."""
    ca, cb = Checkpoint(a), Checkpoint(b)
    worst, bad, total, norms = 0.0, 0, 0, 0.0
    for name in ca.order():
        x, y = ca.tensor(name).float(), cb.tensor(name).float()
        diff = float((x - y).abs().max())
        worst = max(worst, diff)
        if "norm" in name:
            norms = max(norms, diff)
        bad += int((~torch.isclose(x, y, rtol=1e-5, atol=1e-6)).sum())
        total += x.numel()
    return worst, bad, total, norms


def largest_fp32(pivot: Path) -> int:
    return max(math.prod(e.shape) for e in Checkpoint(pivot).entries.values()) * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fusepipe-bench-merge"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--sizes", default="toy,large", help="toy always runs first: it gives the RSS constant"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    mergekit = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")
    mk_python = Path(mergekit).read_text().splitlines()[0][2:].strip() if mergekit else None  # its shebang
    if not mergekit:
        print("mergekit-yaml not found (set MERGEKIT_YAML): timing fusepipe only")
    os.environ["PYTHONPATH"] = str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ["FUSEPIPE_NO_PROGRESS"] = "1"
    args.workdir.mkdir(parents=True, exist_ok=True)
    runner = args.workdir / "fusepipe_merge.py"
    runner.write_text(OURS)
    sizes = args.sizes.split(",")
    probe_pivot, probe_targets = build(args.workdir / "probe", "probe")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; medians of {args.repeats} "
          "runs")  # fmt: skip
    print(f"{'model':6} {'method':16} {'fusepipe s':>10} {'mergekit s':>10} {'speedup':>7} {'fp MiB':>7} "
          f"{'mk MiB':>7} {'mk/fp':>6} {'bound MiB':>9} {'max |diff|':>10} {'mismatched':>15} "
          f"{'norms |diff|':>12}")  # fmt: skip
    rows, probe = [], {}
    for size in sizes:
        pivot, targets = build(args.workdir / size, size)
        for method in args.methods.split(","):
            params = METHODS[method]
            run = args.workdir / f"{size}-{method}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            (run / "mk.yml").write_text(export_mergekit(params, pivot, targets))
            ours, theirs = [], []
            for _ in range(args.repeats):
                shutil.rmtree(run / "ours", ignore_errors=True)
                ours_args = [str(pivot), *map(str, targets), "ours", json.dumps(params)]
                ours.append(measure(sys.executable, runner, ours_args, run))
                if mergekit:
                    shutil.rmtree(run / "mk", ignore_errors=True)
                    mk_args = ["mk.yml", "mk", "--quiet", "--no-write-model-card"]
                    theirs.append(measure(mk_python, Path(mergekit), mk_args, run))
            row = {"model": size, "method": method, "fusepipe_s": statistics.median(w for w, _ in ours),
                   "fusepipe_rss": statistics.median(r for _, r in ours)}  # fmt: skip
            if size != "toy":
                if method not in probe:
                    probe_args = [str(probe_pivot), *map(str, probe_targets), "probe", json.dumps(params)]
                    runs = [measure(sys.executable, runner, probe_args, run)[1] for _ in range(args.repeats)]
                    probe[method] = statistics.median(runs)
                extra = largest_fp32(pivot) - largest_fp32(probe_pivot)
                row["bound"] = probe[method] + (len(targets) + 2) * extra
            if theirs:
                row |= {
                    "mergekit_s": statistics.median(w for w, _ in theirs),
                    "mergekit_rss": statistics.median(r for _, r in theirs),
                }
                if method not in RANDOM:
                    row |= dict(
                        zip(("max_abs_diff", "mismatched", "elements", "norm_max_abs_diff"),
                            compare(run / "ours", run / "mk"))
                    )  # fmt: skip
            print(format_row(row), flush=True)
            rows.append(row)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"results: {args.workdir / 'results.json'}")


def format_row(r: dict) -> str:
    mib = 2**20
    line = f"{r['model']:6} {r['method']:16} {r['fusepipe_s']:10.2f} "
    if "mergekit_s" in r:
        line += f"{r['mergekit_s']:10.2f} {r['mergekit_s'] / r['fusepipe_s']:6.2f}x "
        line += f"{r['fusepipe_rss'] / mib:7.0f} {r['mergekit_rss'] / mib:7.0f} {r['mergekit_rss'] / r['fusepipe_rss']:5.2f}x "
    else:
        line += f"{'':10} {'':7} {r['fusepipe_rss'] / mib:7.0f} {'':7} {'':6} "
    line += f"{r['bound'] / mib:9.0f} " if "bound" in r else f"{'-':>9} "
    if "max_abs_diff" in r:
        line += f"{r['max_abs_diff']:10.2e} {r['mismatched']:>5}/{r['elements']:<9} {r['norm_max_abs_diff']:12.2e}"
    elif "mergekit_s" in r:
        line += f"{'n/a (random masks)':>26}"
    if "bound" in r and r["fusepipe_rss"] > r["bound"]:
        line += "  RSS ABOVE BOUND"
    return line


if __name__ == "__main__":
    main()
