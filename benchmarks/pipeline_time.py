"""Where a finished `snakemake` run's time went, from Snakemake's own records (`.snakemake/metadata`).

    python benchmarks/pipeline_time.py RUN [BASELINE]

RUN and BASELINE are folders where `snakemake all` ran (the checkout after `make run`, or a copy). Prints per rule
the jobs and their summed seconds (a job's wall time: Python start, imports and engine start included), the run's
span, its critical path, and the span a greedy 2-core schedule of the same jobs gives (a check that the cores were
busy: the two spans agree when they were). With BASELINE, the ratios RUN / BASELINE of span and job seconds.

A job's own work is in its stage manifest (`timings_s`); the difference to its wall time here is the per-process
cost (docs/toy_world.md, "Time").
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
from collections import Counter
from pathlib import Path


def read_jobs(run: Path) -> dict[int, dict]:
    """Jobs of a run keyed by Snakemake's job hash: rule, outputs, inputs, start and end (epoch seconds)."""
    records = run / ".snakemake" / "metadata"
    if not records.is_dir():
        raise SystemExit(f"{records}: missing; run `snakemake all` in {run} first")
    jobs: dict[int, dict] = {}
    for record in records.iterdir():
        meta = json.loads(record.read_text())
        job = jobs.setdefault(meta["job_hash"], {"rule": meta["rule"], "outputs": set(), "inputs": set(meta["input"]),
                                                 "start": meta["starttime"], "end": meta["endtime"]})
        job["outputs"].add(base64.b64decode(record.name).decode())
        job["start"], job["end"] = min(job["start"], meta["starttime"]), max(job["end"], meta["endtime"])
    return jobs


def dependencies(jobs: dict[int, dict]) -> dict[int, set[int]]:
    producer = {out: key for key, job in jobs.items() for out in job["outputs"]}
    return {key: {producer[i] for i in job["inputs"] if i in producer} for key, job in jobs.items()}


def critical_path(jobs, deps) -> tuple[float, list[str]]:
    """The longest chain of dependent jobs, by their wall times."""
    best: dict[int, tuple[float, list[str]]] = {}

    def longest(key):
        if key not in best:
            before = max((longest(d) for d in deps[key]), default=(0.0, []), key=lambda x: x[0])
            job = jobs[key]
            best[key] = (before[0] + job["end"] - job["start"], [*before[1], job["rule"]])
        return best[key]

    return max((longest(k) for k in jobs), key=lambda x: x[0])


def greedy_span(jobs, deps, cores: int = 2) -> float:
    """Span of a list schedule on `cores`: jobs start in the order the run started them, as soon as their inputs
    exist and a core is free. The toy world's build takes every core (its pool), as in the run."""
    width = {k: cores if j["rule"] == "toy_world" else 1 for k, j in jobs.items()}
    order = sorted(jobs, key=lambda k: jobs[k]["start"])
    done: set[int] = set()
    running: list[tuple[float, int]] = []
    now, free = 0.0, cores
    waiting = list(order)
    while len(done) < len(jobs):
        for key in list(waiting):
            if width[key] <= free and deps[key] <= done:
                waiting.remove(key)
                free -= width[key]
                heapq.heappush(running, (now + jobs[key]["end"] - jobs[key]["start"], key))
        now, key = heapq.heappop(running)
        done.add(key)
        free += width[key]
    return now


def summary(run: Path) -> dict:
    jobs = read_jobs(run)
    deps = dependencies(jobs)
    seconds, count = Counter(), Counter()
    for job in jobs.values():
        seconds[job["rule"]] += job["end"] - job["start"]
        count[job["rule"]] += 1
    span = max(j["end"] for j in jobs.values()) - min(j["start"] for j in jobs.values())
    return {"jobs": len(jobs), "span": span, "job_seconds": sum(seconds.values()), "seconds": seconds,
            "count": count, "critical": critical_path(jobs, deps), "greedy": greedy_span(jobs, deps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("baseline", type=Path, nargs="?")
    args = ap.parse_args()
    now = summary(args.run)
    print(f"{args.run}: {now['jobs']} jobs, span {now['span']:.0f} s (greedy 2-core schedule {now['greedy']:.0f} s), "
          f"{now['job_seconds']:.0f} job seconds")
    print(f"{'rule':20s} {'jobs':>5s} {'seconds':>8s} {'per job':>8s}")
    for rule, sec in now["seconds"].most_common():
        print(f"{rule:20s} {now['count'][rule]:5d} {sec:8.1f} {sec / now['count'][rule]:8.1f}")
    length, chain = now["critical"]
    print(f"critical path {length:.0f} s: {' → '.join(chain)}")
    if args.baseline:
        base = summary(args.baseline)
        print(f"{args.baseline}: {base['jobs']} jobs, span {base['span']:.0f} s, {base['job_seconds']:.0f} job seconds")
        print(f"ratio run / baseline: span ×{now['span'] / base['span']:.2f}, "
              f"job seconds ×{now['job_seconds'] / base['job_seconds']:.2f}, jobs {now['jobs']} / {base['jobs']}")


if __name__ == "__main__":
    main()
