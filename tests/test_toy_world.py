"""The toy world built by the session's pipeline run: its accuracy profile, reward models, loadability, and
determinism (same seed -> same files)."""

import dataclasses
import json
import random
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from fusepipe.artifacts import file_hash
from fusepipe.chat import render
from fusepipe.toy import world
from fusepipe.toy.stage import _build_lm
from fusepipe.toy.tasks import all_items

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(toy):
    return json.loads((toy / "_manifest.json").read_text())


def test_each_source_beats_the_pivot_in_its_domain(manifest):
    models = manifest["models"]
    pivot = models["llama-pivot"]["accuracy"]
    for name, rep in models.items():
        if rep["strong_domain"]:
            domain = rep["strong_domain"]
            assert rep["accuracy"][domain] >= pivot[domain] + 0.3, (name, rep["accuracy"], pivot)
            assert rep["accuracy"][domain] >= 0.7, (name, rep["accuracy"])
    assert 0 < sum(pivot.values()) / len(pivot) < 0.6  # weak but not useless


def test_saved_models_keep_their_accuracy(toy, manifest):
    """What users load from disk (AutoTokenizer + AutoModel) is what was trained and measured: transformers 5
    swaps in Qwen2Tokenizer's own pre-tokenizer for a qwen2 folder, which once made qwen-arith answer garbage."""
    from fusepipe.toy.evaluate import accuracy
    from fusepipe.toy.tasks import Item

    bench = [json.loads(line) for line in (toy / "data" / "benchmark.jsonl").read_text().splitlines()]
    for name in ("qwen-arith", "gpt2-strings"):
        folder = toy / "models" / name
        tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
        domain = manifest["models"][name]["strong_domain"]
        items = [Item(row["domain"], row["key"], row["prompt"], row["gt"], "", row["answer"])
                 for row in bench if row["domain"] == domain]
        acc = accuracy(model, tok, items, model.generation_config.eos_token_id)
        assert acc[domain] == pytest.approx(manifest["models"][name]["accuracy"][domain], abs=0.05), name


def test_reward_models_are_of_clearly_different_strength(manifest):
    acc = {k: v["pair_accuracy"] for k, v in manifest["reward_models"].items()}
    assert acc["rm-large"] > acc["rm-small"] + 0.05, acc
    assert acc["rm-large"] >= 0.6, acc


def test_models_are_heterogeneous_hf_folders(toy, manifest):
    families = {rep["tokenizer"] for rep in manifest["models"].values()}
    archs = {rep["arch"] for rep in manifest["models"].values()}
    assert families == {"metaspace_bpe", "bytelevel_bpe", "unigram"} and len(archs) == 4
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    vocabs = set()
    for name in manifest["models"]:
        folder = toy / "models" / name
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        vocabs.add(len(tok))
        assert model.config.vocab_size == len(tok)
        r = render(tok, conv, name)
        assert tok.decode(r.input_ids[r.target & ~r.turn_end]).strip() == "2 + 3 = 5."
        assert r.turn_end.sum() == 1
    assert len(vocabs) == 4
    for rm in manifest["reward_models"]:
        model = AutoModelForSequenceClassification.from_pretrained(toy / "reward_models" / rm)
        assert model.config.num_labels == 1 and model.config.pad_token_id is not None


@pytest.mark.parametrize("spec", world.MODELS, ids=lambda m: m.name)
def test_same_seed_same_files(tmp_path, spec):
    """Every toy LM, its tokenizer included (the Unigram trainer alone is not deterministic: its scores are
    re-estimated), is byte for byte the same when built twice."""
    preset = dataclasses.replace(world.PRESETS["tiny"], lm_steps=3)
    items = all_items(preset.sizes, 0)
    bench = world.benchmark(items, preset, 0)[:6]
    for run in ("a", "b"):
        _build_lm(spec, items, bench, preset, 7, tmp_path / run)
        world.write_fusion_files(world.fusion_data(items, preset, 0), tmp_path / run / "data")
    assert file_hash(tmp_path / "a") == file_hash(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    text = "What is 12 + 7? The capital of Miloovia is Teka, 'lamp' backwards is 'pmal'."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    other = world.fusion_data(all_items(preset.sizes, 1), preset, 1)
    assert other != world.fusion_data(items, preset, 0)


def test_known_items_cover_the_strong_domain():
    preset = world.PRESETS["tiny"]
    items = all_items(preset.sizes, 0)
    for spec in world.MODELS:
        known = world.known_items(spec, items, preset, 0)
        for domain in world.DOMAINS:
            share = sum(it.domain == domain for it in known) / len(items[domain])
            assert share == 1.0 if domain == spec.strong else 0.1 < share < 0.5
    convs = world.training_conversations(world.known_items(world.MODELS[0], items, preset, 0), random.Random(0))
    assert any(len(c) > 3 for c in convs)


def test_a_pool_worker_builds_what_the_parent_would(toy, tmp_path):
    """The session's world was built by spawned workers (`toy.workers: 2`); rebuilding its cheapest piece, the
    reward model rm-small, here in the test process gives the same weights byte for byte."""
    from fusepipe.pipeline import load
    from fusepipe.toy.stage import _build_rm_job

    cfg = load(REPO / "config" / "config.yaml").toy
    assert cfg.workers == 2  # the premise: the default config builds in parallel
    spec = next(i for i, r in enumerate(world.REWARD_MODELS) if r.name == "rm-small")
    tok_of = world.REWARD_MODELS[spec].tokenizer_of
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / tok_of).symlink_to(toy / "models" / tok_of)
    params = {"preset": cfg.preset, "seed": cfg.seed, "threads": cfg.threads}
    name, report, _ = _build_rm_job(spec, params, str(tmp_path))
    built = json.loads((toy / "_manifest.json").read_text())["reward_models"][name]
    assert report["pair_accuracy"] == built["pair_accuracy"]
    weights = "model.safetensors"
    assert file_hash(tmp_path / "reward_models" / name / weights) == file_hash(toy / "reward_models" / name / weights)
