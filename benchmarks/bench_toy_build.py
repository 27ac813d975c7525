"""The toy world's build: models one after another (`toy.workers: 1`) against side by side (`workers: 2`).

    PYTHONPATH=src python benchmarks/bench_toy_build.py [--preset tiny] [--rounds 1] [--workers 2]

Each round builds the whole world (4 toy LMs, 3 reward models, data) twice into fresh folders, once per worker
count, interleaved so that a change of load hits both, and lists the outputs whose hashes differ. Every model has
its own seed and one torch thread, so nothing should depend on the worker count; but the `tokenizers` Unigram
trainer (mistral-facts) is not deterministic run to run (its scores differ by up to 1.6e-3 between two trainings
in one process), so mistral-facts and rm-small (on its tokenizer) differ between ANY two builds (open, RESULTS.md). Prints the wall
time of each build, the ratio sequential / parallel (median over rounds), and the sum of per-model times the
manifest records (the work; the ideal speed-up is sum / longest chain). Run it on an otherwise idle machine:
with W workers on fewer than W free cores the ratio only shows the contention.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(preset: str, workers: int, out: Path) -> float:
    slice_json = json.dumps({"toy": {"enabled": True, "preset": preset, "seed": 0, "threads": 1}})
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fusepipe", "toy_world", "--config-json", slice_json, "--out", str(out),
                    "--cpus", str(workers)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    walls: dict[int, list[float]] = {1: [], args.workers: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            hashes = {}
            for w, times in walls.items():
                out = Path(tmp) / f"r{r}-w{w}" / "toy"
                times.append(build(args.preset, w, out))
                manifest = json.loads((out / "_manifest.json").read_text())
                hashes[w] = manifest["hashes"]
                work = sum(v for k, v in manifest["timings_s"].items() if k.startswith(("model:", "rm:")))
                print(f"round {r} workers {w}: {times[-1]:.1f} s wall, {work:.1f} s of model builds")
            differ = sorted(k for k in hashes[1] if len({h[k] for h in hashes.values()}) > 1)
            print(f"round {r}: outputs that differ between the builds: {differ or 'none'}")
    med = {w: statistics.median(v) for w, v in walls.items()}
    print(f"toy world ({args.preset}) build, median wall: workers 1 {med[1]:.1f} s, workers {args.workers} "
          f"{med[args.workers]:.1f} s, ratio {med[1] / med[args.workers]:.2f}x")


if __name__ == "__main__":
    main()
