"""The streaming engine on toy Llama checkpoints: output loads in transformers and generates, equals
the methods applied in memory, is sharded with an index, copies the pivot's side files, records a
manifest, handles embedding row mismatches and tied embeddings, refuses bad inputs, writes atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusepipe.merge import MergeConfig, MergeError, merge
from fusepipe.merge import methods as M
from fusepipe.merge.engine import INDEX, MANIFEST
from fusepipe.merge.stage import run

from .conftest import CHAT_TEMPLATE, make_pivot, make_target

METHOD_CONFIGS = {
    "sce": {"sce": {"tau": 0.1}},
    "rsaf": {"rsaf": {"tau": 0.5}},
    "task_arithmetic": {},
    "ties": {},
    "dare": {"dare": {"seed": 1}},
    "linear": {},
    "slerp": {"slerp": {"t": 0.3}},
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(f)
    return out


@pytest.fixture(scope="module")
def merged(toy_ckpts, tmp_path_factory) -> dict[str, Path]:
    """Every method merged once over t1, t2 (the toy pivot is their pivot)."""
    root = tmp_path_factory.mktemp("merged")
    out = {}
    for method, extra in METHOD_CONFIGS.items():
        out[method] = root / method
        merge(
            toy_ckpts["pivot"],
            [toy_ckpts["t1"], toy_ckpts["t2"]],
            out[method],
            MergeConfig(method=method, **extra),
        )
    return out


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_merged_model_loads_and_generates(merged, toy_ckpts, method):
    model = AutoModelForCausalLM.from_pretrained(merged[method])
    tok = AutoTokenizer.from_pretrained(merged[method])
    assert tok.chat_template == CHAT_TEMPLATE
    text = tok.apply_chat_template([{"role": "user", "content": "w5 w6 w7"}], tokenize=False)
    enc = tok(text, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    assert torch.isfinite(model(**enc).logits).all()


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_engine_equals_methods_in_memory(merged, toy_ckpts, method):
    pivot, t1, t2 = tensors(toy_ckpts["pivot"]), tensors(toy_ckpts["t1"]), tensors(toy_ckpts["t2"])
    config = MergeConfig(method=method, **METHOD_CONFIGS[method])
    got = tensors(merged[method])
    assert got.keys() == pivot.keys()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # reductions are bitwise reproducible for a given thread count
    try:
        for name, base in pivot.items():
            deltas = torch.stack([t1[name] - base, t2[name] - base])
            want = M.METHODS[method].fn(base, deltas, config.method_params(), name=name).tensor
            assert torch.equal(got[name], want), name
    finally:
        torch.set_num_threads(threads)


def test_output_layout_and_manifest(merged, toy_ckpts):
    out = merged["sce"]
    index = json.loads((out / INDEX).read_text())
    assert set(index["weight_map"]) == set(tensors(toy_ckpts["pivot"]))
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
         "model-00001-of-00001.safetensors", INDEX, MANIFEST]
    )  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["method"] == "sce" and manifest["params"] == {"tau": 0.1, "semantics": "fusechat"}
    info = manifest["tensors"]["model.layers.0.mlp.up_proj.weight"]
    assert sum(info["coefficients"]) == pytest.approx(1) and info["selected"] == pytest.approx(0.1, abs=1e-3)
    rsaf = json.loads((merged["rsaf"] / MANIFEST).read_text())["tensors"]
    assert all(len(i["ratios"]) == 2 and 0 < min(i["ratios"]) <= 1 for i in rsaf.values())
    assert not list(out.parent.glob(".*tmp*"))


def test_sharding(toy_ckpts, merged, tmp_path):
    out = tmp_path / "sharded"
    merge(
        toy_ckpts["pivot"],
        [toy_ckpts["t1"], toy_ckpts["t2"]],
        out,
        MergeConfig(sce={"tau": 0.1}, max_shard_bytes=300_000),
    )
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 3 and files[0].name.endswith(f"-of-{len(files):05d}.safetensors")
    assert json.loads((out / INDEX).read_text())["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors(out).values()
    )
    got, want = tensors(out), tensors(merged["sce"])
    assert all(torch.equal(got[n], want[n]) for n in want)
    AutoModelForCausalLM.from_pretrained(out)


def test_output_dtype_is_one_cast(toy_ckpts, merged, tmp_path):
    out = tmp_path / "bf16"
    merge(
        toy_ckpts["pivot"],
        [toy_ckpts["t1"], toy_ckpts["t2"]],
        out,
        MergeConfig(sce={"tau": 0.1}, dtype="bfloat16"),
    )
    got, fp32 = tensors(out), tensors(merged["sce"])
    assert all(torch.equal(got[n], fp32[n].to(torch.bfloat16)) for n in fp32)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_bf16_checkpoints_merge_in_fp32(toy_ckpts, tmp_path):
    """bf16 inputs: deltas and math in fp32 (exact upcasts), one rounding to bf16 at the end."""
    for name in ("pivot", "t1", "t2"):
        AutoModelForCausalLM.from_pretrained(toy_ckpts[name], dtype=torch.bfloat16).save_pretrained(
            tmp_path / name
        )
    merge(
        tmp_path / "pivot", [tmp_path / "t1", tmp_path / "t2"], tmp_path / "out", MergeConfig(method="ties")
    )
    pivot, t1, t2, got = (tensors(tmp_path / n) for n in ("pivot", "t1", "t2", "out"))
    with torch.no_grad():
        for name, base in pivot.items():
            assert got[name].dtype == torch.bfloat16
            b = base.float()
            deltas = torch.stack([t1[name].float() - b, t2[name].float() - b])
            want = M.ties(b, deltas, M.TiesParams(), name=name).tensor.to(torch.bfloat16)
            assert torch.equal(got[name], want), name


def test_stage_run_returns_manifest_extras(toy_ckpts, tmp_path):
    extras = run(
        {"method": "rsaf"},
        {"pivot": str(toy_ckpts["pivot"]), "targets": [str(toy_ckpts["t1"])]},
        {"model": tmp_path / "m"},
    )
    assert extras["method"] == "rsaf" and extras["n_tensors"] == 21
    assert len(extras["mean_ratios"]) == 1 and len(extras["mean_coefficients"]) == 1
    with pytest.raises(MergeError, match=r"merge config: sce.tau: Input should be less than or equal to 1"):
        run({"sce": {"tau": 2}}, {"pivot": str(toy_ckpts["pivot"]), "targets": []}, {"model": tmp_path / "x"})


# ---------------------------------------------------------------------------------------------------
# Embeddings of different row counts, tied embeddings


def test_crop_policy_cuts_longer_targets(toy_ckpts, tmp_path):
    out = tmp_path / "crop"
    merge(toy_ckpts["pivot"], [toy_ckpts["t1"], toy_ckpts["t_big"]], out, MergeConfig(method="linear"))
    pivot, t1, big, got = (
        tensors(toy_ckpts["pivot"]),
        tensors(toy_ckpts["t1"]),
        tensors(toy_ckpts["t_big"]),
        tensors(out),
    )
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert big[name].shape[0] == 310 and got[name].shape == pivot[name].shape
        torch.testing.assert_close(got[name], (t1[name] + big[name][:300]) / 2)
    AutoModelForCausalLM.from_pretrained(out)


def test_shorter_target_needs_pivot_policy(tmp_path, toy_ckpts):
    pivot = make_pivot(tmp_path / "pivot", vocab_size=310)
    short = make_target(toy_ckpts["pivot"], tmp_path / "short", seed=5)  # 300 rows
    long = make_target(pivot, tmp_path / "long", seed=6)
    with pytest.raises(MergeError, match=r"tensor lm_head.weight has 300 rows in .*short, fewer than the pivot's "
                                         r"310; embedding_policy 'crop' cannot fill them, use 'pivot'"):  # fmt: skip
        merge(pivot, [long, short], tmp_path / "out", MergeConfig(method="linear"))
    merge(pivot, [long, short], tmp_path / "out", MergeConfig(method="linear", embedding_policy="pivot"))
    p, lo, sh, got = (tensors(x) for x in (pivot, long, short, tmp_path / "out"))
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(got[name][:300], (lo[name][:300] + sh[name]) / 2)
    assert torch.equal(got[name][300:], p[name][300:])
    rows = json.loads((tmp_path / "out" / MANIFEST).read_text())["tensors"][name]["rows"]
    assert rows == {"merged": 300, "pivot": 310}


def test_tied_embeddings_stay_tied(tied_ckpts, tmp_path):
    out = tmp_path / "tied"
    merge(tied_ckpts["pivot"], [tied_ckpts["t1"], tied_ckpts["t2"]], out, MergeConfig())
    assert "lm_head.weight" not in tensors(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------------------------------------------
# Refusals (one line, naming the tensor / models and the fix) and atomicity


def _rewrite(folder: Path, edit) -> None:
    f = next(folder.glob("*.safetensors"))
    state = load_file(f)
    edit(state)
    save_file(state, f, metadata={"format": "pt"})


@pytest.fixture
def target_copy(toy_ckpts, tmp_path):
    return lambda: make_target(toy_ckpts["pivot"], tmp_path / "copy", seed=9)


def test_refuses_architecture_mismatch(toy_ckpts, tmp_path):
    other = tmp_path / "other"
    make_target(toy_ckpts["pivot"], other, seed=4)
    config = json.loads((other / "config.json").read_text()) | {"model_type": "mistral"}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match=r"architecture mismatch: model_type is 'llama' in pivot .*pivot but "
                                         r"'mistral' in .*other; merge only models fine-tuned from the pivot"):  # fmt: skip
        merge(toy_ckpts["pivot"], [toy_ckpts["t1"], other], tmp_path / "out", MergeConfig())


def test_refuses_tie_mismatch(toy_ckpts, tied_ckpts, tmp_path):
    with pytest.raises(MergeError, match="architecture mismatch: tie_word_embeddings is False in pivot"):
        merge(toy_ckpts["pivot"], [tied_ckpts["t1"]], tmp_path / "out", MergeConfig())


def test_refuses_missing_tensor(toy_ckpts, target_copy, tmp_path):
    t = target_copy()
    _rewrite(t, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(MergeError, match=r"tensor model.layers.1.mlp.up_proj.weight of pivot .* is missing in "
                                         r".*copy \(1 missing\)"):  # fmt: skip
        merge(toy_ckpts["pivot"], [t], tmp_path / "out", MergeConfig())


def test_refuses_extra_tensor(toy_ckpts, target_copy, tmp_path):
    t = target_copy()
    _rewrite(t, lambda s: s.update({"model.extra.weight": torch.zeros(3)}))
    with pytest.raises(MergeError, match=r"tensor model.extra.weight of .*copy is not in pivot"):
        merge(toy_ckpts["pivot"], [t], tmp_path / "out", MergeConfig())


def test_refuses_shape_mismatch(toy_ckpts, target_copy, tmp_path):
    t = target_copy()
    _rewrite(t, lambda s: s.update({"model.norm.weight": torch.ones(64)}))
    with pytest.raises(MergeError, match=r"tensor model.norm.weight has shape \[64\] in .*copy but \[128\] in "
                                         r"pivot .*; merge only models fine-tuned from the pivot"):  # fmt: skip
        merge(toy_ckpts["pivot"], [t], tmp_path / "out", MergeConfig())


def test_refuses_non_finite_values(toy_ckpts, target_copy, tmp_path):
    t = target_copy()
    _rewrite(t, lambda s: s["model.layers.0.self_attn.q_proj.weight"].view(-1).__setitem__(5, float("nan")))
    with pytest.raises(MergeError, match=r"tensor model.layers.0.self_attn.q_proj.weight has non-finite values in "
                                         r".*copy or pivot"):  # fmt: skip
        merge(toy_ckpts["pivot"], [t], tmp_path / "out", MergeConfig())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))


def test_refuses_bad_folders_and_settings(toy_ckpts, tmp_path):
    with pytest.raises(MergeError, match=r"is not a model folder \(no config.json\)"):
        merge(toy_ckpts["pivot"], [tmp_path], tmp_path / "out", MergeConfig())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(MergeError, match=r"empty has no \*.safetensors weights"):
        merge(toy_ckpts["pivot"], [empty], tmp_path / "out", MergeConfig())
    with pytest.raises(MergeError, match="output .*t1 is also an input model"):
        merge(toy_ckpts["pivot"], [toy_ckpts["t1"]], toy_ckpts["t1"], MergeConfig())
    with pytest.raises(MergeError, match="no targets to merge"):
        merge(toy_ckpts["pivot"], [], tmp_path / "out", MergeConfig())
    with pytest.raises(MergeError, match=r"slerp merges 1 to 2 target\(s\), got 3"):
        merge(
            toy_ckpts["pivot"],
            [toy_ckpts["t1"], toy_ckpts["t2"], toy_ckpts["t3"]],
            tmp_path / "out",
            MergeConfig(method="slerp"),
        )


def test_crash_leaves_nothing_finished(toy_ckpts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous").write_text("kept")
    calls = []

    def boom(base, deltas, p, *, name, out=None):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return M.Merged(base.float() + deltas[0])

    monkeypatch.setitem(M.METHODS, "linear", M.Method("linear", M.LinearParams, boom))
    with pytest.raises(RuntimeError, match="killed"):
        merge(toy_ckpts["pivot"], [toy_ckpts["t1"]], out, MergeConfig(method="linear"))
    assert os.listdir(out) == ["previous"] and not list(tmp_path.glob(".out.tmp*"))
