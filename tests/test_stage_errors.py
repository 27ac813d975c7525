"""Failure paths of the inference and logits stages that need no model: one line naming the row and the fix."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from fusepipe.artifacts import write_parquet
from fusepipe.cli import cli
from fusepipe.errors import ArtifactError, DataError
from fusepipe.generate.stage import prompt_of
from fusepipe.logits.stage import voted
from fusepipe.reward.stage import read_generations
from fusepipe.schemas import CONVERSATION, GENERATION, VOTE

REPO = Path(__file__).resolve().parents[1]
CONV = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "1 + 1 = 2."}]


def _data(path: Path, sample_ids: list[str]) -> Path:
    rows = [{"sample_id": s, "messages": CONV, "source": "t", "split": "train"} for s in sample_ids]
    write_parquet(pa.Table.from_pylist(rows, schema=CONVERSATION), path, CONVERSATION)
    return path


def _gen(path: Path, model: str, sample_ids: list[str]) -> Path:
    rows = [{"sample_id": s, "model": model, "sample_index": 0, "response": "2.", "n_tokens": 2,
             "finish_reason": "stop", "seed": 1, "prompt_tokens": 5, "prompt_truncated": False} for s in sample_ids]
    write_parquet(pa.Table.from_pylist(rows, schema=GENERATION), path, GENERATION)
    return path


def test_a_prompt_needs_a_user_message():
    with pytest.raises(DataError) as err:
        prompt_of([{"role": "system", "content": "hi"}], "abc")
    assert str(err.value) == "sample abc: no user message to answer"


def test_reward_names_a_generation_shard_with_missing_prompts(tmp_path):
    gen = _gen(tmp_path / "shard-00000.parquet", "m", ["aa01"])
    with pytest.raises(ArtifactError) as err:
        read_generations([gen], {"aa01", "bb02"})
    assert str(err.value) == (f"{gen}: no response for 1 prompt(s) of its shard (e.g. bb02); rerun its generate job")


def test_logits_inf_names_a_winner_without_its_response(tmp_path):
    data = _data(tmp_path / "train.parquet", ["aa01", "bb02"])
    gen = _gen(tmp_path / "gen.parquet", "m", ["aa01"])
    rows = [{"sample_id": s, "subset": "all", "method": "majority", "winner": "m", "winner_index": 0,
             "votes": [("m", 1)], "tie_broken": False, "candidates": []} for s in ("aa01", "bb02")]
    vote = tmp_path / "choices.parquet"
    write_parquet(pa.Table.from_pylist(rows, schema=VOTE), vote, VOTE)
    with pytest.raises(ArtifactError) as err:
        voted(data, vote, [gen], "m", 0, 1)
    assert str(err.value) == (f"{vote}: 'm' response 0 of sample bb02 won a vote but is not in gen/m; "
                              "rerun generate for 'm'")


@pytest.mark.parametrize(("args", "message"), [
    (["generate", "--target", "qwen-arith", "--shard", "7"], "shard 7 out of range: the config has 1 shard(s)"),
    (["logits", "--mode", "gt", "--target", "qwen-arith", "--shard", "9"],
     "shard 9 out of range: logits.shards is 1"),
    (["generate", "--config-json", "{}"], "--workdir is required together with --config-json"),
    (["toy_world", "--cpus", "0"], "Invalid value for '--cpus': 0 is not in the range x>=1"),
])
def test_cli_rejects_bad_stage_arguments(args, message):
    result = CliRunner().invoke(cli, [args[0], "--config", str(REPO / "config" / "config.yaml"), *args[1:]]
                                if "--config-json" not in args else args)
    assert result.exit_code == 2 and message in " ".join(result.output.split())
