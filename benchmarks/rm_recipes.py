"""How far training takes a toy reward model on real candidate pairs (issue 16: rm-large ≥ .85).

Rebuilds one reward model of a built toy world with its preference steps scaled (`steps_scale`, × the preset's
`rm_steps`), everything else as `toy_world` builds it (the same seed, pairs and language-model base), and prints
per scale its accuracy on the held-out items' real candidate pairs (overall and per domain), the build time, and
both as ratios against the world's own recipe. `--tokenizers` repeats that on other toy models' tokenizers (and
chat templates): the same pairs and recipe, only the vocabulary the reward model reads them in changes. The first
row also prints the base language model's own accuracy as a likelihood judge on the same pairs
(Σ log p(chosen) > Σ log p(rejected), no head): what the reward model could know. `--batching` first times Bradley–Terry steps with length-grouped batches (the world's) against random
ones (the earlier recipe) on the same pairs, alternating, and prints the median ratio.

    python benchmarks/rm_recipes.py results/toy [--rm rm-large] [--scales 3 6 9 12] [--batching]
        [--tokenizers llama-pivot qwen-arith]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from fusepipe.toy import world
from fusepipe.toy.models import reward_model
from fusepipe.toy.stage import _build_rm, _special_ids, rm_pairs
from fusepipe.toy.tasks import all_items
from fusepipe.toy.train import encode_pairs, train_rm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("toy", type=Path, help="a built toy world (results/toy)")
    ap.add_argument("--rm", default="rm-large")
    ap.add_argument("--scales", type=float, nargs="+", default=[3.0, 6.0, 9.0])
    ap.add_argument("--batching", action="store_true", help="time grouped against random batches first")
    ap.add_argument("--tokenizers", nargs="+", default=[], metavar="MODEL",
                    help="toy models whose tokenizer the reward model is rebuilt on (default: its own)")
    args = ap.parse_args()
    cfg = json.loads((args.toy / "_manifest.json").read_text())["config"]["toy"]
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    torch.set_num_threads(int(cfg["threads"]))
    index = [r.name for r in world.REWARD_MODELS].index(args.rm)
    rspec = world.REWARD_MODELS[index]
    items = all_items(preset.sizes, seed)
    candidates = [json.loads(line) for m in world.MODELS
                  for line in (args.toy / "candidates" / f"{m.name}.jsonl").read_text().splitlines()]
    tokenizers = {name: AutoTokenizer.from_pretrained(args.toy / "models" / name)
                  for name in dict.fromkeys([rspec.tokenizer_of, *args.tokenizers])}
    if args.batching:
        time_batching(rspec, tokenizers[rspec.tokenizer_of], items, candidates, preset, seed)
    recipes = [(rspec.tokenizer_of, rspec.steps_scale)]
    recipes += [(t, s) for t in tokenizers for s in [rspec.steps_scale, *args.scales] if (t, s) not in recipes]
    rows = []
    for i, (tok_of, scale) in enumerate(recipes):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            report = _build_rm(dataclasses.replace(rspec, tokenizer_of=tok_of, steps_scale=scale), tokenizers[tok_of],
                               items, candidates, preset, seed, seed + 1009 * index, Path(tmp) / args.rm)
        rows.append((scale, report, time.perf_counter() - t0))
        if i == 0:
            print(f"{args.rm}, world seed {seed}: {report['heldout_real_pairs']} held-out real pairs; its base LM as "
                  f"a likelihood judge: {report['base_lm_judge_accuracy']:.3f}")
        base_acc, base_s = rows[0][1]["real_pair_accuracy"], rows[0][2]
        by = report["real_pair_accuracy_by_domain"]
        print(f"{tok_of}'s tokenizer, steps_scale {scale:>4g} ({int(preset.rm_steps * scale)} steps): real pairs "
              f"{report['real_pair_accuracy']:.3f} (" + ", ".join(f"{d} {v:.2f}" for d, v in by.items())
              + f"), x{report['real_pair_accuracy'] / base_acc:.2f} of the world's recipe; build "
              f"x{(time.perf_counter() - t0) / base_s:.2f} of its time", flush=True)


def time_batching(rspec, tok, items, candidates, preset, seed: int, steps: int = 20, rounds: int = 3) -> None:
    """Seconds per Bradley–Terry step on the reward model's training pairs (as `_build_rm` builds them, without
    the label noise), grouped vs random batches, alternating `rounds` times; prints the median ratio."""
    pairs, _ = rm_pairs(items, candidates, preset, seed, random.Random(seed))
    enc = encode_pairs(tok, pairs, rspec.name)
    per_step: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for grouped in (True, False):
            model = reward_model(len(tok), preset, rspec.layers, _special_ids(tok), 0)
            t0 = time.perf_counter()
            train_rm(model, enc, tok.pad_token_id, steps, preset.batch, preset.rm_lr, 0, grouped=grouped)
            per_step[grouped].append((time.perf_counter() - t0) / steps)
    g, r = statistics.median(per_step[True]), statistics.median(per_step[False])
    print(f"Bradley-Terry step on {len(enc)} pairs, batch {preset.batch}: grouped {g:.3f} s, random {r:.3f} s "
          f"(median of {rounds}); grouped / random = x{g / r:.2f}", flush=True)


if __name__ == "__main__":
    main()
