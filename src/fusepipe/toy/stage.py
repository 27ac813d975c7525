"""`toy_world` stage: build the embedded default's models, reward models and data from a seed.

Writes everything into a temporary folder beside `out` and moves the pieces into place last, so a crashed
build leaves nothing that looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fusepipe.artifacts import Manifest, atomic_path, file_hash
from fusepipe.chat import render_text
from fusepipe.toy import world
from fusepipe.toy.evaluate import accuracy, likelihood_pair_accuracy, nll_per_byte, pairwise_accuracy, sample
from fusepipe.toy.models import causal_lm, reward_model
from fusepipe.toy.tasks import all_items, check
from fusepipe.toy.tokenizers import build_tokenizer, stop_token_ids
from fusepipe.toy.train import encode_pairs, encode_sft, train_lm, train_rm

log = logging.getLogger("fusepipe.toy")


def _special_ids(tok) -> dict[str, int | None]:
    return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def _template_examples(spec) -> list[str]:
    """Rendered sample chats, so the tokenizer learns the template's markers as pieces."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    probe = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")),
        bos_token=spec.bos or "", eos_token=spec.eos, chat_template=spec.template,
    )
    conv = world.conversation([], "short", system=True) + [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
    ]
    text, _ = render_text(probe, conv, "probe")
    return [text] * 20


def run(params: dict[str, Any], out: str | Path, workers: int = 1) -> dict[str, Any]:
    """Build the toy world into `out`, `workers` models at a time (the result does not depend on it)."""
    cfg = params["toy"]
    preset = world.PRESETS[cfg["preset"]]
    seed = int(cfg["seed"])
    torch.set_num_threads(int(cfg["threads"]))
    out = Path(out)
    manifest = Manifest("toy_world", params)
    items = all_items(preset.sizes, seed)
    bench = world.benchmark(items, preset, seed)

    with atomic_path(out.with_name(out.name + ".build")) as tmp:
        with manifest.phase("data"):
            fusion = world.fusion_data(items, preset, seed)
            prompts = world.prompt_set(items, fusion)
            world.write_fusion_files(fusion, prompts, tmp / "data")
            world.write_benchmark(bench, tmp / "data" / "benchmark.jsonl")
        manifest["items"] = {d: len(v) for d, v in items.items()}
        manifest["fusion_conversations"] = {k: len(v) for k, v in fusion.items()} | {"prompts": len(prompts)}
        manifest["benchmark_items"] = {d: sum(it.domain == d for it in bench) for d in world.DOMAINS}

        lm_results, rm_results = _build_models(cfg, str(tmp), workers)
        model_report = {}
        for name, report, seconds in lm_results:
            manifest["timings_s"][f"model:{name}"] = seconds
            model_report[name] = report
            log.info("%s: accuracy %s, NLL/byte on the fusion ground truth %s", name, report["accuracy"],
                     report["gt_nll_per_byte"])
        manifest["models"] = model_report
        manifest["source_advantage"] = source_advantage(model_report)
        rm_report = {}
        for name, report, seconds in rm_results:
            manifest["timings_s"][f"rm:{name}"] = seconds
            rm_report[name] = report
            log.info("%s: accuracy on held-out real candidate pairs %.3f (%d pairs; its base LM as a likelihood judge "
                     "%.3f), on corruption pairs %.3f", name, report["real_pair_accuracy"],
                     report["heldout_real_pairs"], report["base_lm_judge_accuracy"], report["pair_accuracy"])
        manifest["reward_models"] = rm_report

        for sub in ("data", "models", "reward_models", "candidates"):
            dest = out / sub
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp / sub), dest)
    manifest["hashes"] = {k: file_hash(p) for k, p in world.output_paths(out).items()
                          if k != "manifest"}
    manifest["fingerprint"] = fingerprint(out)
    log.info("toy world fingerprint %s", manifest["fingerprint"])
    manifest.write(out)
    return manifest.data


def run_twin(params: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Build the homogeneous twin (world.TWIN: the arith expert with the pivot's tokenizer) into
    `out/models/llama-arith-twin`, from the world's seed and preset alone (it reads nothing the world built): the
    same training as the arith expert's, with the seed it has as the world's fifth model."""
    cfg = params["toy"]
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    torch.set_num_threads(int(cfg["threads"]))
    manifest = Manifest("toy_twin", params)
    items = all_items(preset.sizes, seed)
    bench = world.benchmark(items, preset, seed)
    fusion = world.fusion_data(items, preset, seed)
    dest = world.twin_path(out)
    with atomic_path(dest) as tmp:
        with manifest.phase("build"):
            # its sampled answers as the world's models have them (sampling leaves the tokenizer set up exactly as
            # theirs, so its tokenizer.json is byte-identical to the pivot's); nothing reads them
            answers = tmp.with_name(tmp.name + ".candidates.jsonl")
            report = _build_lm(world.TWIN, items, bench, fusion, preset, seed + 101 * world.TWIN_INDEX, tmp, answers)
            answers.unlink()
        manifest["model"] = report
        manifest["hash"] = file_hash(tmp)
        manifest.write(tmp)
    log.info("%s: accuracy %s, NLL/byte on the fusion ground truth %s", world.TWIN.name, report["accuracy"],
             report["gt_nll_per_byte"])
    return manifest.data


def fingerprint(out: Path) -> str:
    """One hash over every file the build saved (data, models, reward models, candidates): two builds are the same
    world exactly when their fingerprints agree."""
    h = hashlib.sha256()
    for sub in ("data", "models", "reward_models", "candidates"):
        h.update(f"{sub}:{file_hash(out / sub)}".encode())
    return h.hexdigest()[:16]


def source_advantage(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per domain: every model's NLL per byte on that domain's fusion ground truth and its benchmark accuracy, the
    domain's expert, and how much lower the expert's NLL is than the pivot's (1 − expert / pivot): the papers'
    premise, that a source predicts the fusion data's responses better than the pivot in its own domain."""
    pivot = next(n for n, r in models.items() if r["role"] == "pivot")
    table = {}
    for domain in world.DOMAINS:
        expert = next((n for n, r in models.items() if r["strong_domain"] == domain), None)
        nll = {n: r["gt_nll_per_byte"][domain] for n, r in models.items()}
        row: dict[str, Any] = {"pivot": pivot, "expert": expert, "nll_per_byte": nll,
                               "accuracy": {n: r["accuracy"][domain] for n, r in models.items()}}
        if expert is not None:
            row["expert_nll_reduction"] = round(1 - nll[expert] / nll[pivot], 4)
        table[domain] = row
    return table


def _build_models(cfg: dict[str, Any], tmp: str, workers: int) -> tuple[list, list]:
    """Every toy model, then every reward model (on its toy model's tokenizer, trained on every toy model's sampled
    responses), as (name, report, seconds) in world order. With workers > 1 they run in spawned processes. Each
    model has its own seed and a fixed thread count: the result does not depend on `workers`."""
    n_lm, n_rm = len(world.models()), len(world.REWARD_MODELS)
    if workers <= 1:
        lms = [_build_lm_job(i, cfg, tmp) for i in range(n_lm)]
        return lms, [_build_rm_job(i, cfg, tmp) for i in range(n_rm)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            lms = [f.result() for f in [pool.submit(_build_lm_job, i, cfg, tmp) for i in range(n_lm)]]
            # the reward models learn from every model's real answers: they start once all are saved
            rms = [f.result() for f in [pool.submit(_build_rm_job, i, cfg, tmp) for i in range(n_rm)]]
            return lms, rms
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _build_lm_job(i: int, cfg: dict[str, Any], tmp: str) -> tuple[str, dict[str, Any], float]:
    """Model i of world.models() into `tmp/models/NAME` (a process-pool job): (name, report, seconds)."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(cfg["threads"]))
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    items = all_items(preset.sizes, seed)
    bench = world.benchmark(items, preset, seed)
    spec = world.models()[i]
    fusion = world.fusion_data(items, preset, seed)
    report = _build_lm(spec, items, bench, fusion, preset, seed + 101 * i, Path(tmp) / "models" / spec.name,
                       Path(tmp) / "candidates" / f"{spec.name}.jsonl")
    return spec.name, report, round(time.perf_counter() - t0, 3)


def _build_rm_job(i: int, cfg: dict[str, Any], tmp: str) -> tuple[str, dict[str, Any], float]:
    """Reward model i of world.REWARD_MODELS, on the tokenizer its toy model saved (a process-pool job)."""
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    torch.set_num_threads(int(cfg["threads"]))
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    items = all_items(preset.sizes, seed)
    rspec = world.REWARD_MODELS[i]
    tok = AutoTokenizer.from_pretrained(Path(tmp) / "models" / rspec.tokenizer_of)
    candidates = [json.loads(line) for m in world.MODELS
                  for line in (Path(tmp) / "candidates" / f"{m.name}.jsonl").read_text().splitlines()]
    report = _build_rm(rspec, tok, items, candidates, preset, seed, seed + 1009 * i,
                       Path(tmp) / "reward_models" / rspec.name)
    return rspec.name, report, round(time.perf_counter() - t0, 3)


def _build_lm(spec: world.ToyModel, items, bench, fusion, preset: world.Preset, seed: int, folder: Path,
              candidates: Path | None = None):
    """Train one toy LM into `folder`; its report has its benchmark accuracy and its NLL per byte on each domain's
    fusion ground truth. With `candidates`, also write its sampled answers to every item's prompt there (JSONL),
    the reward models' real candidates."""
    rng = random.Random(seed)
    corpus = world.tokenizer_corpus(items, _template_examples(spec.tokenizer))
    tok = build_tokenizer(spec.tokenizer, corpus)
    model = causal_lm(spec.arch, len(tok), preset, _special_ids(tok), seed)
    tok = as_loaded(tok, model, folder)
    known = world.known_items(spec, items, preset, seed)
    convs = world.training_conversations(known, rng)
    examples = encode_sft(tok, convs, spec.name)
    losses = train_lm(model, examples, tok.pad_token_id, preset.lm_steps, preset.batch, preset.lr, seed)
    stops = stop_token_ids(tok, spec.tokenizer)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    acc = accuracy(model, tok, bench, stops)
    nll = {domain: round(nll_per_byte(model, tok, convs_d, spec.name), 4) for domain, convs_d in fusion.items()}
    if candidates is not None:
        every = [it for d in world.DOMAINS for it in items[d]]
        answers = sample(model, tok, [[{"role": "user", "content": it.prompt}] for it in every], stops,
                         n=preset.samples, seed=seed)
        candidates.parent.mkdir(parents=True, exist_ok=True)
        with open(candidates, "w") as f:
            for it, responses in zip(every, answers):
                f.writelines(json.dumps({"model": spec.name, "domain": it.domain, "key": it.key, "response": r,
                                         "correct": check(it, r)}) + "\n" for r in responses)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "arch": spec.arch, "role": spec.role, "tokenizer": spec.tokenizer.family, "vocab": len(tok),
        "strong_domain": spec.strong, "params": n_params, "known_items": len(known),
        "train_loss": world.stats(losses), "accuracy": acc, "gt_nll_per_byte": nll,
    }


def as_loaded(tok, model, folder: Path):
    """The tokenizer as every consumer (transformers' AutoTokenizer, vLLM) will load it from `folder`.

    transformers 5 picks the tokenizer class from the model type and some classes rebuild parts of the pipeline
    from code: Qwen2Tokenizer replaces the saved byte-level pre-tokenizer with Qwen2's regex (digits one by one).
    Training with the tokenizer object as built would then teach ids nobody feeds the model; train with this one."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def rm_pairs(items, candidates: list[dict], preset: world.Preset, world_seed: int, rng: random.Random):
    """(training pairs, held-out real pairs) of a reward model, both (chosen, rejected) and noise-free: corruption
    pairs of every item plus real candidate pairs of the items it may see; every real pair of the held-out items."""
    held = {(it.domain, it.key) for d in world.DOMAINS for it in items[d] if world.rm_heldout(it, preset, world_seed)}
    seen = [c for c in candidates if (c["domain"], c["key"]) not in held]
    train = world.corruption_pairs(items, rng, n_wrong=2) + world.candidate_pairs(items, seen, rng, per_item=4)
    heldout = world.candidate_pairs(items, [c for c in candidates if (c["domain"], c["key"]) in held], None, None)
    return train, heldout


def _build_rm(rspec: world.ToyRewardModel, tok, items, candidates: list[dict], preset: world.Preset,
              world_seed: int, seed: int, folder: Path):
    """A reward model trained on corruption pairs of every item and on real candidate pairs of the items it may
    see; measured on held-out items' real candidate pairs (and on fresh corruption pairs). `base_lm_judge_accuracy`:
    its language model's own ordering of those pairs by likelihood, before the head is trained (what it knows)."""
    rng = random.Random(seed)
    clean, heldout_real = rm_pairs(items, candidates, preset, world_seed, rng)
    train = [(c, r) if rng.random() >= rspec.label_noise else (r, c) for c, r in clean]
    heldout_synthetic = world.corruption_pairs(items, random.Random(f"heldout-{seed}"), n_wrong=1)
    # the language model it starts from
    base = causal_lm("llama", len(tok), dataclasses.replace(preset, layers=rspec.layers), _special_ids(tok), seed)
    knowing = world.ToyModel(rspec.name, "llama", None, strong=None)  # type: ignore[arg-type]
    known = world.known_items(knowing, items, dataclasses.replace(preset, known_fraction=rspec.knows), seed)
    base_steps = int(preset.lm_steps * rspec.base_scale)
    lm_losses = train_lm(base, encode_sft(tok, world.training_conversations(known, rng), rspec.name), tok.pad_token_id,
                         base_steps, preset.batch, preset.lr, seed)
    lm_judge = likelihood_pair_accuracy(base, tok, heldout_real, rspec.name)
    model = reward_model(len(tok), preset, rspec.layers, _special_ids(tok), seed)
    model.model.load_state_dict(base.model.state_dict())
    tok = as_loaded(tok, model, folder)
    enc = encode_pairs(tok, train, rspec.name)
    steps = int(preset.rm_steps * rspec.steps_scale)
    losses = train_rm(model, enc, tok.pad_token_id, steps, preset.batch, preset.rm_lr, seed)
    real = pairwise_accuracy(model, encode_pairs(tok, heldout_real, rspec.name), tok.pad_token_id)
    by_prompt = {it.prompt: d for d in world.DOMAINS for it in items[d]}
    by_domain = {}
    for d in world.DOMAINS:
        sub = [p for p in heldout_real if by_prompt[p[0][0]["content"]] == d]
        by_domain[d] = round(float(pairwise_accuracy(model, encode_pairs(tok, sub, rspec.name), tok.pad_token_id)), 4)
    synthetic = pairwise_accuracy(model, encode_pairs(tok, heldout_synthetic, rspec.name), tok.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {
        "strength": rspec.strength, "label_noise": rspec.label_noise, "layers": rspec.layers,
        "knows": rspec.knows, "lm_train_loss": world.stats(lm_losses), "train_pairs": len(train), "heldout_real_pairs": len(heldout_real), "train_loss": world.stats(losses),
        "real_pair_accuracy": round(float(real), 4), "real_pair_accuracy_by_domain": by_domain,
        "pair_accuracy": round(float(synthetic), 4),
        "tokenizer_of": rspec.tokenizer_of,
        "base_lm_judge_accuracy": round(lm_judge, 4),
    }
