"""`toy_world` stage: build the embedded default's models, reward models and data from a seed.

Writes everything into a temporary folder beside `out` and moves the pieces into place last, so a crashed
build leaves nothing that looks finished.
"""

from __future__ import annotations

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
from fusepipe.toy.evaluate import accuracy, pairwise_accuracy
from fusepipe.toy.models import causal_lm, reward_model
from fusepipe.toy.tasks import all_items
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
            world.write_fusion_files(fusion, tmp / "data")
            world.write_benchmark(bench, tmp / "data" / "benchmark.jsonl")
        manifest["items"] = {d: len(v) for d, v in items.items()}
        manifest["fusion_conversations"] = {k: len(v) for k, v in fusion.items()}
        manifest["benchmark_items"] = {d: sum(it.domain == d for it in bench) for d in world.DOMAINS}

        lm_results, rm_results = _build_models(cfg, str(tmp), workers)
        model_report = {}
        for name, report, seconds in lm_results:
            manifest["timings_s"][f"model:{name}"] = seconds
            model_report[name] = report
            log.info("%s: accuracy %s", name, report["accuracy"])
        manifest["models"] = model_report
        rm_report = {}
        for name, report, seconds in rm_results:
            manifest["timings_s"][f"rm:{name}"] = seconds
            rm_report[name] = report
            log.info("%s: held-out pair accuracy %.3f", name, report["pair_accuracy"])
        manifest["reward_models"] = rm_report

        for sub in ("data", "models", "reward_models"):
            dest = out / sub
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(tmp / sub), dest)
    manifest["hashes"] = {k: file_hash(p) for k, p in world.output_paths(out).items() if k != "manifest"}
    manifest.write(out)
    return manifest.data


def _build_models(cfg: dict[str, Any], tmp: str, workers: int) -> tuple[list, list]:
    """Every toy model, then every reward model (on its toy model's tokenizer), as (name, report, seconds) in
    world order. With workers > 1 they run in spawned processes and a reward model starts as soon as its toy
    model is saved. Each model has its own seed and a fixed thread count: the result does not depend on
    `workers`."""
    n_rm = len(world.REWARD_MODELS)
    if workers <= 1:
        lms = [_build_lm_job(i, cfg, tmp) for i in range(len(world.MODELS))]
        return lms, [_build_rm_job(i, cfg, tmp) for i in range(n_rm)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        try:
            lm_futures = {pool.submit(_build_lm_job, i, cfg, tmp): m.name for i, m in enumerate(world.MODELS)}
            rm_futures = {}
            for done in as_completed(lm_futures):
                done.result()  # a failed build cancels every model not yet started
                for i, rm in enumerate(world.REWARD_MODELS):
                    if rm.tokenizer_of == lm_futures[done]:
                        rm_futures[i] = pool.submit(_build_rm_job, i, cfg, tmp)
            return [f.result() for f in lm_futures], [rm_futures[i].result() for i in range(n_rm)]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _build_lm_job(i: int, cfg: dict[str, Any], tmp: str) -> tuple[str, dict[str, Any], float]:
    """Model i of world.MODELS into `tmp/models/NAME` (a process-pool job): (name, report, seconds)."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(cfg["threads"]))
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    items = all_items(preset.sizes, seed)
    bench = world.benchmark(items, preset, seed)
    spec = world.MODELS[i]
    report = _build_lm(spec, items, bench, preset, seed + 101 * i, Path(tmp) / "models" / spec.name)
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
    report = _build_rm(rspec, tok, items, preset, seed + 1009 * i, Path(tmp) / "reward_models" / rspec.name)
    return rspec.name, report, round(time.perf_counter() - t0, 3)


def _build_lm(spec: world.ToyModel, items, bench, preset: world.Preset, seed: int, folder: Path):
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
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "arch": spec.arch, "role": spec.role, "tokenizer": spec.tokenizer.family, "vocab": len(tok),
        "strong_domain": spec.strong, "params": n_params, "known_items": len(known),
        "train_loss": world.stats(losses), "accuracy": acc,
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


def _build_rm(rspec: world.ToyRewardModel, tok, items, preset: world.Preset, seed: int, folder: Path):
    rng = random.Random(seed)
    clean = world.rm_pairs(items, rng, n_wrong=2)
    train = [(c, r) if rng.random() >= rspec.label_noise else (r, c) for c, r in clean]
    heldout = world.rm_pairs(items, random.Random(f"heldout-{seed}"), n_wrong=1)  # fresh corruptions
    model = reward_model(len(tok), preset, rspec.layers, _special_ids(tok), seed)
    tok = as_loaded(tok, model, folder)
    enc = encode_pairs(tok, train, rspec.name)
    steps = int(preset.rm_steps * rspec.steps_scale)
    losses = train_rm(model, enc, tok.pad_token_id, steps, preset.batch, preset.rm_lr, seed)
    acc = pairwise_accuracy(model, encode_pairs(tok, heldout, rspec.name), tok.pad_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {
        "strength": rspec.strength, "label_noise": rspec.label_noise, "layers": rspec.layers,
        "train_pairs": len(train), "heldout_pairs": len(heldout), "train_loss": world.stats(losses),
        "pair_accuracy": round(float(acc), 4), "tokenizer_of": rspec.tokenizer_of,
    }

