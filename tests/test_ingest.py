import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusepipe.data.clean import clean, sample_id, split_blocks
from fusepipe.data.ingest import detect_format, iter_rows, to_messages
from fusepipe.data.stage import read_source
from fusepipe.errors import DataError

FILTERS = {"min_turns": 1, "max_turns": None, "min_response_chars": 1}
EXPECTED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."}]
RECORDS = {
    "messages": {"messages": EXPECTED},
    "sharegpt": {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi?"},
                                                           {"from": "gpt", "value": "Hello."}]},
    "alpaca": {"system": "Be brief.", "instruction": "Hi?", "input": "", "output": "Hello."},
    "orca": {"system_prompt": "Be brief.", "question": "Hi?", "response": "Hello."},
}


def source(path, **kw):
    return {"name": "s", "path": str(path), "loader": "auto", "format": "auto", "split": "train",
            "n_samples": None, "filters": FILTERS, **kw}


def write(path, records, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "json":
        path.write_text(json.dumps(records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_every_format_from_every_file_loader(tmp_path, fmt, kind):
    path = write(tmp_path / f"d.{kind}", [RECORDS[fmt]] * 2, kind)
    convs = read_source(source(path), "error", Counter())
    assert convs == [EXPECTED, EXPECTED]


def test_alpaca_input_is_appended_to_the_instruction():
    msgs = to_messages({"instruction": "Sum these.", "input": "1 2", "output": "3"}, "alpaca", "x")
    assert msgs == [{"role": "user", "content": "Sum these.\n\n1 2"}, {"role": "assistant", "content": "3"}]


def test_hf_datasets_loader_on_a_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", [RECORDS["sharegpt"]] * 3, "jsonl")
    convs = read_source(source(folder), "error", Counter())
    assert convs == [EXPECTED] * 3


def test_json_object_holding_one_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [RECORDS["orca"]]}))
    assert read_source(source(path), "error", Counter()) == [EXPECTED]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "line 2: turn 0 has unknown role 'wizard'"),
        (json.dumps({"messages": [{"role": "user"}]}), "line 2: missing field 'content' for format 'messages'"),
        (json.dumps({"messages": "hello"}), "line 2: fields have the wrong type for format 'messages'"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "line 2: turn 0 content is int, expected text"),
        (json.dumps([1, 2]), "line 2: expected an object, got list"),
    ],
)
def test_malformed_row_names_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS["messages"]) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_source(source(path), "error", Counter())
    assert f"{path}:{message}" in str(err.value)
    assert "set data.on_bad_row: skip" in str(err.value)
    counts = Counter()
    assert read_source(source(path), "skip", counts) == [EXPECTED]
    assert counts["bad_rows"] == 1 and counts["rows_read"] == 2


def test_unknown_format_and_files(tmp_path):
    with pytest.raises(DataError, match=r"cannot tell the conversation format from keys \['text'\]"):
        detect_format({"text": "hi"}, "f:line 1")
    with pytest.raises(DataError, match="file not found; fix `path:`"):
        list(iter_rows(str(tmp_path / "missing.jsonl"), "auto", "train"))
    odd = tmp_path / "d.csv"
    odd.write_text("a,b\n")
    with pytest.raises(DataError, match=r"cannot tell the file type from '.csv'; set `loader:`"):
        list(iter_rows(str(odd), "auto", "train"))
    bad = tmp_path / "d.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="d.json: not valid JSON"):
        list(iter_rows(str(bad), "auto", "train"))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="source 's' has no rows"):
        read_source(source(empty), "error", Counter())
    with pytest.raises(DataError, match="cannot load with datasets.load_dataset"):
        list(iter_rows(str(tmp_path / "no-such-folder"), "hf", "train"))


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


@pytest.mark.parametrize(
    "msgs, reason",
    [
        ([u("q"), a("  ")], "empty_turn"),
        ([u("q"), {"role": "system", "content": "s"}, a("x")], "misplaced_system"),
        ([a("x"), u("q")], "starts_with_assistant"),
        ([u("q"), u("q2"), a("x")], "non_alternating"),
        ([u("q")], "no_assistant_turn"),
        ([u("q"), a("")], "empty_turn"),
    ],
)
def test_cleaning_drops_with_reason(msgs, reason):
    counts = Counter()
    assert clean(msgs, FILTERS, counts) is None
    assert counts[reason] == 1


def test_cleaning_trims_trailing_user_and_applies_filters():
    counts = Counter()
    assert clean([u(" q "), a("x"), u("more?")], FILTERS, counts) == [u("q"), a("x")]
    assert counts["trailing_user_trimmed"] == 1
    assert clean([u("q"), a("x")], {**FILTERS, "min_turns": 2}, counts) is None and counts["too_few_turns"] == 1
    assert clean([u("q"), a("x"), u("q"), a("y")], {**FILTERS, "max_turns": 1}, counts) is None
    assert clean([u("q"), a("x")], {**FILTERS, "min_response_chars": 5}, counts) is None
    assert counts["too_many_turns"] == 1 and counts["short_response"] == 1


def test_split_blocks_keeps_whole_exchanges_and_the_system_prompt():
    sys_msg = {"role": "system", "content": "S"}
    conv = [sys_msg] + [m for i in range(5) for m in (u(f"q{i}"), a("x" * (10 if i != 3 else 100)))]

    def n_tokens(msgs):
        return sum(len(m["content"]) for m in msgs)

    counts = Counter()
    blocks = split_blocks(conv, n_tokens, 40, counts)
    assert all(b[0] == sys_msg and n_tokens(b) <= 40 for b in blocks)
    kept = [m["content"] for b in blocks for m in b[1:] if m["role"] == "user"]
    assert kept == ["q0", "q1", "q2", "q4"]  # exchange 3 alone is longer than 40
    assert counts["exchange_too_long"] == 1 and counts["split_dialogues"] == 1
    assert split_blocks(conv[:3], n_tokens, 40, Counter()) == [conv[:3]]


def test_sample_id_is_stable_and_content_based():
    assert sample_id(EXPECTED) == sample_id([dict(m) for m in EXPECTED])
    assert sample_id(EXPECTED) != sample_id(EXPECTED[1:])
    assert len(sample_id(EXPECTED)) == 16
