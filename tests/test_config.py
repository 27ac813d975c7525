import json
from pathlib import Path

import pytest
import yaml

from fusepipe import pipeline as fppipeline
from fusepipe.cli import schema_yaml
from fusepipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"


def raw_default() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def test_default_config_is_valid_and_expands_workdir():
    cfg = fppipeline.load(DEFAULT)
    assert cfg.toy.enabled and cfg.pivot.name == "llama-pivot"
    assert [m.name for m in cfg.sources] == ["qwen-arith", "mistral-facts", "gpt2-strings"]
    assert cfg.pivot.path == "results/toy/models/llama-pivot"
    assert cfg.data.sources[0].path == "results/toy/data/arith.jsonl"


def test_schema_yaml_is_in_sync_with_the_typed_models():
    assert (REPO / "config" / "schema.yaml").read_text() == schema_yaml(), "run: fusepipe schema > config/schema.yaml"


def test_snakemake_validate_fills_defaults():
    from snakemake.utils import validate

    raw = raw_default()
    del raw["data"]["on_bad_row"]
    validate(raw, str(REPO / "config" / "schema.yaml"))
    assert raw["data"]["on_bad_row"] == "error"
    assert raw["models"][0]["tensor_parallel_size"] == 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["data"].update(on_bad_row="ignore"),
         "config: data.on_bad_row: Input should be 'error' or 'skip' (got \"ignore\")"),
        (lambda c: c["models"][1].update(role="pivot"), "exactly one model must have role: pivot (found 2"),
        (lambda c: c["models"][1].update(name="llama-pivot"), "models: names must be unique (duplicated: llama-pivot)"),
        (lambda c: c["toy"].update(presset="tiny"), "config: toy.presset: Extra inputs are not permitted"),
        (lambda c: c["data"].update(eval_fraction=1.5), "config: data.eval_fraction: Input should be less than 1"),
        (lambda c: c["reward_models"][2].update(strength=5), "strengths must be 1..3 without gaps (found [1, 2, 5])"),
        (lambda c: c["data"]["sources"][0].update(name="bad name"), "config: data.sources.0.name: String should match"),
        (lambda c: c.pop("data"), "config: data: Field required"),
        (lambda c: c["toy"].update(workers=0), "config: toy.workers: Input should be greater than or equal to 1"),
    ],
)
def test_bad_config_names_key_value_and_allowed(edit, message):
    raw = raw_default()
    edit(raw)
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        fppipeline.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        fppipeline.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="the config must be a mapping of keys, got list"):
        fppipeline.load(bad)


def test_stage_slices_hold_only_their_keys():
    cfg = fppipeline.load(DEFAULT)
    assert set(fppipeline.stage_slice(cfg, "data")) == {"data", "pivot"}
    assert set(fppipeline.stage_slice(cfg, "toy_world")) == {"toy"}
    before = fppipeline.slice_json(cfg, "toy_world")
    raw = raw_default()
    raw["data"]["max_len"] = 64
    edited = fppipeline.load_dict(raw)
    assert fppipeline.slice_json(edited, "toy_world") == before
    raw["toy"]["workers"] = 7  # how the build spreads over CPUs: no rerun
    assert fppipeline.slice_json(fppipeline.load_dict(raw), "toy_world") == before
    assert json.loads(fppipeline.slice_json(edited, "data"))["data"]["max_len"] == 64
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        fppipeline.stage_slice(cfg, "nope")


def test_per_model_slices_hold_only_that_model():
    cfg = fppipeline.load(DEFAULT)
    gen = fppipeline.stage_slice(cfg, "generate", "qwen-arith")
    assert set(gen) == {"generate", "model"} and gen["model"]["name"] == "qwen-arith"
    assert fppipeline.stage_slice(cfg, "reward", "rm-small")["reward_model"]["strength"] == 3
    raw = raw_default()
    raw["models"][1]["max_model_len"] = 256  # qwen-arith only
    edited = fppipeline.load_dict(raw)
    assert fppipeline.slice_json(edited, "generate", "gpt2-strings") == fppipeline.slice_json(cfg, "generate", "gpt2-strings")
    assert fppipeline.slice_json(edited, "generate", "qwen-arith") != fppipeline.slice_json(cfg, "generate", "qwen-arith")
    assert fppipeline.slice_json(edited, "vote") == fppipeline.slice_json(cfg, "vote")
    raw["models"][0]["engine"] = "hf"  # the pivot's engine is not the data stage's business
    assert fppipeline.slice_json(fppipeline.load_dict(raw), "data") == fppipeline.slice_json(cfg, "data")
    with pytest.raises(ConfigError, match=r"stage 'generate' needs --target, one of llama-pivot, qwen-arith, "
                                          r"mistral-facts, gpt2-strings \(got 'nope'\)"):
        fppipeline.stage_slice(cfg, "generate", "nope")


def test_generate_models_must_exist():
    raw = raw_default()
    raw["generate"]["models"] = ["qwen-arith", "gpt5"]
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == ("config: (top level): generate.models: unknown model(s) gpt5; models are "
                              "llama-pivot, qwen-arith, mistral-facts, gpt2-strings")


def test_inference_logits_need_reward_models():
    raw = raw_default()
    raw["reward_models"] = []
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == ("config: (top level): logits.modes: 'inf' needs reward_models (the vote picks the "
                              "responses); add reward models or set logits.modes: [gt]")
    raw["logits"]["modes"] = ["gt"]
    with pytest.raises(ConfigError) as err:  # the rm suite is judged by the reward models
        fppipeline.load_dict(raw)
    assert str(err.value) == "evaluate.run: suite 'rm' is judged by reward models but reward_models is empty"
    raw["evaluate"]["run"] = ["toy"]
    with pytest.raises(ConfigError) as err:  # and the profuser recipe trains on voted responses
        fppipeline.load_dict(raw)
    assert str(err.value) == ("recipe 'profuser': its schedule trains on mode(s) inf but logits.modes is ['gt']; "
                              "add them there or pick another schedule")
    raw["recipes"] = [r for r in raw["recipes"] if r["kind"] != "profuser"]
    with pytest.raises(ConfigError) as err:  # the prompt set (no references) would then train nothing
        fppipeline.load_dict(raw)
    assert str(err.value).startswith("data.sources: prompts hold(s) prompts without references (prompts_only)")
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if not s.get("prompts_only")]
    with pytest.raises(ConfigError) as err:  # so does the schedule ablation grid's profuser value
        fppipeline.load_dict(raw)
    assert str(err.value) == ("ablations.schedule: value 'profuser' trains on mode 'inf' but logits.modes is "
                              "['gt']; add it there or drop the value")
    raw["ablations"]["grids"].remove("schedule")
    assert fppipeline.load_dict(raw).logits.modes == ["gt"]


def test_evaluation_suites_are_checked():
    raw = raw_default()
    raw["evaluate"]["run"] = ["toy", "mmlu-ish"]
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == ("evaluate.run: unknown suite 'mmlu-ish'; presets: open_llm, infifusion, fusechat, toy, rm, "
                              "transfer, or define it under evaluate.suites")
    no_gt = {**raw, "evaluate": {**raw["evaluate"], "run": ["toy", "transfer"]}, "logits": {**raw["logits"], "modes": ["inf"]},
             "recipes": [r for r in raw["recipes"] if r["name"] == "sft"]}
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(no_gt)
    assert str(err.value) == ("evaluate.run: suite 'transfer' measures models against the sources' aligned "
                              "ground-truth distributions; it needs source models and 'gt' in logits.modes")
    raw["evaluate"]["suites"] = {"mine": {"kind": "lm_eval"}}
    raw["evaluate"]["run"] = ["mine"]
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == "evaluate.suites.mine: an lm_eval suite needs tasks"
    raw["evaluate"]["suites"]["mine"]["tasks"] = ["gsm8k:5"]
    cfg = fppipeline.load_dict(raw)
    suite = fppipeline.stage_slice(cfg, "evaluate", "llama-pivot/mine")["suite"]
    assert suite["tasks"] == ["gsm8k:5"] and suite["kind"] == "lm_eval"


def test_recipe_and_merge_names_are_checked():
    raw = raw_default()
    raw["recipes"].append(dict(raw["recipes"][0]))
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == "recipes: names must be unique (duplicated: fusechat)"
    raw["recipes"].pop()
    raw["merge"]["recipes"] = ["nope"]
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == "merge.recipes: no recipe named nope (recipes: fusechat, sft, profuser, udf)"
