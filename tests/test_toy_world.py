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


def test_the_papers_premise_each_source_predicts_its_domains_fusion_ground_truth_better(manifest):
    """FuseChat/ProFuser/InfiFusion's premise: in its own domain a source is a clearly better predictor of the
    fusion data's responses than the pivot (NLL per byte at least 30 % lower), which is what distillation moves."""
    table = manifest["source_advantage"]
    assert set(table) == {"arith", "facts", "strings"}
    for domain, row in table.items():
        nll = row["nll_per_byte"]
        assert row["pivot"] == "llama-pivot" and manifest["models"][row["expert"]]["strong_domain"] == domain
        assert set(nll) == set(manifest["models"]) and all(v > 0 for v in nll.values())
        assert row["expert_nll_reduction"] == pytest.approx(1 - nll[row["expert"]] / nll["llama-pivot"], abs=1e-4)
        assert row["expert_nll_reduction"] >= 0.3, (domain, row)
        assert row["accuracy"][row["expert"]] > row["accuracy"]["llama-pivot"], (domain, row)


def test_the_fingerprint_is_the_hash_of_what_was_saved(toy, manifest):
    from fusepipe.toy.stage import fingerprint

    assert manifest["fingerprint"] == fingerprint(toy)
    assert {"candidates:" + m for m in manifest["models"]} <= set(manifest["hashes"])


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


def test_reward_models_judge_real_answers_and_are_of_clearly_different_strength(manifest, toy):
    """Measured on held-out items' pairs of the toy models' own sampled answers (one right, one wrong)."""
    rms = manifest["reward_models"]
    real = {k: v["real_pair_accuracy"] for k, v in rms.items()}
    # measured (2 seeds, 2026-12-06, rm-large on the Llama tokenizer): large .85 / .88, medium .60 / .58, small
    # .53 / .47; the same seed built on another machine once moved rm-large by up to .1 (benchmarks/RESULTS.md),
    # hence the margins
    assert real["rm-large"] > real["rm-medium"] + 0.1, real
    assert real["rm-large"] > real["rm-small"] + 0.1, real
    assert real["rm-large"] >= 0.75, real
    # what the reward model's own language model knows: ordering the pairs by likelihood (.92 / .88 for rm-large)
    assert rms["rm-large"]["base_lm_judge_accuracy"] >= 0.75, rms["rm-large"]
    assert all(v["heldout_real_pairs"] >= 50 for v in rms.values()), rms
    assert {v["strength"] for v in rms.values()} == {1, 2, 3}
    rows = [json.loads(line) for line in (toy / "candidates" / "qwen-arith.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"qwen-arith"} and {r["correct"] for r in rows} == {True, False}


def test_the_likelihood_judge_is_antisymmetric(toy):
    """Σ log p(chosen) > Σ log p(rejected) under a causal LM: swapping every pair gives 1 − the accuracy (no ties
    between distinct answers), and a response against itself is never preferred."""
    from fusepipe.toy.evaluate import likelihood_pair_accuracy

    folder = toy / "models" / "qwen-arith"
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    items = all_items(world.PRESETS["tiny"].sizes, 0)["arith"][:12]
    user = [[{"role": "user", "content": it.prompt}] for it in items]
    pairs = [(u + [{"role": "assistant", "content": it.short}],
              u + [{"role": "assistant", "content": it.short.replace(it.answer, str(int(it.answer) + 1))}])
             for u, it in zip(user, items)]
    acc = likelihood_pair_accuracy(model, tok, pairs, "qwen-arith")
    assert acc + likelihood_pair_accuracy(model, tok, [(r, c) for c, r in pairs], "qwen-arith") == 1.0
    assert likelihood_pair_accuracy(model, tok, [(c, c) for c, _ in pairs], "qwen-arith") == 0.0


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
    fusion = {d: convs[:4] for d, convs in world.fusion_data(items, preset, 0).items()}
    for run in ("a", "b"):
        report = _build_lm(spec, items, bench, fusion, preset, 7, tmp_path / run)
        fusion_all = world.fusion_data(items, preset, 0)
        world.write_fusion_files(fusion_all, world.prompt_set(items, fusion_all), tmp_path / run / "data")
        assert set(report["gt_nll_per_byte"]) == set(fusion)
    assert file_hash(tmp_path / "a") == file_hash(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    text = "What is 12 + 7? The capital of Miloovia is Teka, 'lamp' backwards is 'pmal'."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    other = world.fusion_data(all_items(preset.sizes, 1), preset, 1)
    assert other != world.fusion_data(items, preset, 0)


def test_the_prompt_set_asks_every_item_the_references_do_not(toy, manifest):
    """prompts.jsonl: one user turn per item whose prompt no ground-truth conversation asks; together with the
    references they cover every item, and the benchmark has items of both kinds in every domain."""
    cfg = manifest["config"]["toy"]
    preset, seed = world.PRESETS[cfg["preset"]], int(cfg["seed"])
    items = all_items(preset.sizes, seed)
    fusion = world.fusion_data(items, preset, seed)
    rows = [json.loads(line)["messages"] for line in (toy / "data" / "prompts.jsonl").read_text().splitlines()]
    assert rows == world.prompt_set(items, fusion)
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in rows)
    asked = {m["content"] for convs in fusion.values() for c in convs for m in c if m["role"] == "user"}
    prompts = {m[0]["content"] for m in rows}
    assert not prompts & asked and prompts | asked >= {it.prompt for d in items.values() for it in d}
    assert manifest["fusion_conversations"]["prompts"] == len(rows)
    bench = [json.loads(line) for line in (toy / "data" / "benchmark.jsonl").read_text().splitlines()]
    for domain in world.DOMAINS:
        in_set = sum(b["prompt"] in prompts for b in bench if b["domain"] == domain)
        assert 0.1 < in_set / sum(b["domain"] == domain for b in bench) < 0.5


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
    (tmp_path / "candidates").symlink_to(toy / "candidates")  # every model's sampled answers
    params = {"preset": cfg.preset, "seed": cfg.seed, "threads": cfg.threads}
    name, report, _ = _build_rm_job(spec, params, str(tmp_path))
    built = json.loads((toy / "_manifest.json").read_text())["reward_models"][name]
    assert (report["pair_accuracy"], report["real_pair_accuracy"]) == (built["pair_accuracy"],
                                                                       built["real_pair_accuracy"])
    weights = "model.safetensors"
    assert file_hash(tmp_path / "reward_models" / name / weights) == file_hash(toy / "reward_models" / name / weights)


def test_the_twin_is_the_arith_expert_with_the_pivots_tokenizer(tmp_path):
    """llama-arith-twin (its own rule, `toy_world --twin`; not one of the world's models, so the world's files are
    the same with or without it): a Llama that knows what qwen-arith knows, with a tokenizer identical to the
    pivot's, so the align stage sees the same tokenizer fingerprint and links it to the pivot one to one."""
    assert world.models() == world.MODELS and world.TWIN not in world.MODELS and world.TWIN_INDEX == 4
    twin, pivot, expert = world.TWIN, world.MODELS[0], world.MODELS[1]
    assert (twin.arch, twin.tokenizer, twin.strong) == ("llama", pivot.tokenizer, expert.strong)
    preset = world.PRESETS["tiny"]
    items = all_items(preset.sizes, 0)
    assert world.known_items(twin, items, preset, 0) != world.known_items(pivot, items, preset, 0)
    assert {it.key for it in world.known_items(twin, items, preset, 0) if it.domain == "arith"} == {
        it.key for it in items["arith"]}
    assert world.twin_path(tmp_path) == tmp_path / "models" / "llama-arith-twin"
    assert world.twin_path(tmp_path) not in world.output_paths(tmp_path).values()
    small = dataclasses.replace(preset, lm_steps=2)
    bench = world.benchmark(items, small, 0)[:4]
    fusion = {d: convs[:2] for d, convs in world.fusion_data(items, small, 0).items()}
    for spec in (pivot, twin):
        _build_lm(spec, items, bench, fusion, small, 7, tmp_path / spec.name)
    same = (tmp_path / pivot.name / "tokenizer.json").read_bytes() == (tmp_path / twin.name / "tokenizer.json").read_bytes()
    assert same
