import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusepipe.data.clean import Drops, clean, sample_id, split_blocks
from fusepipe.data.ingest import detect_format, iter_rows, to_messages
from fusepipe.data.stage import read_source as read_pairs
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


def read_source(src, on_bad_row, counts):
    """The conversations of `read_source` (it returns (row, conversation) pairs)."""
    return [conv for _, conv in read_pairs(src, on_bad_row, counts)]


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
    convs = read_source(source(path), "error", Drops())
    assert convs == [EXPECTED, EXPECTED]


def test_alpaca_input_is_appended_to_the_instruction():
    msgs = to_messages({"instruction": "Sum these.", "input": "1 2", "output": "3"}, "alpaca", "x")
    assert msgs == [{"role": "user", "content": "Sum these.\n\n1 2"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(DataError, match="^x: fields have the wrong type for format 'alpaca'$"):  # not "[1, 2]" text
        to_messages({"instruction": "Sum these.", "input": [1, 2], "output": "3"}, "alpaca", "x")


def test_hf_datasets_loader_on_a_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", [RECORDS["sharegpt"]] * 3, "jsonl")
    convs = read_source(source(folder), "error", Drops())
    assert convs == [EXPECTED] * 3


def test_json_object_holding_one_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [RECORDS["orca"]]}))
    assert read_source(source(path), "error", Drops()) == [EXPECTED]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "line 2: turn 0 has unknown role 'wizard'"),
        (json.dumps({"messages": [{"role": "user"}]}), "line 2: missing field 'content' for format 'messages'"),
        (json.dumps({"messages": "hello"}), "line 2: fields have the wrong type for format 'messages'"),
        (json.dumps({"messages": [{"role": "user", "content": 3}]}), "line 2: turn 0 content is int, expected text"),
        (json.dumps([1, 2]), "line 2: expected an object, got list"),
        ("[" * 5000, "line 2: not valid JSON (nested too deeply)"),
    ],
)
def test_malformed_row_names_file_line_and_problem(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS["messages"]) + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_source(source(path), "error", Drops())
    assert f"{path}:{message}" in str(err.value)
    assert "set data.on_bad_row: skip" in str(err.value)
    counts = Drops()
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
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000)
    with pytest.raises(DataError, match="deep.json: not valid JSON \\(nested too deeply\\); fix the file"):
        list(iter_rows(str(deep), "auto", "train"))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="source 's' has no rows"):
        read_source(source(empty), "error", Drops())
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
    counts = Drops()
    assert clean(msgs, FILTERS, counts) is None
    assert counts[reason] == 1


def test_cleaning_trims_trailing_user_and_applies_filters():
    counts = Drops()
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

    counts = Drops()
    blocks = split_blocks(conv, n_tokens, 40, counts)
    assert all(b[0] == sys_msg and n_tokens(b) <= 40 for b in blocks)
    kept = [m["content"] for b in blocks for m in b[1:] if m["role"] == "user"]
    assert kept == ["q0", "q1", "q2", "q4"]  # exchange 3 alone is longer than 40
    assert counts["exchange_too_long"] == 1 and counts["split_dialogues"] == 1
    assert split_blocks(conv[:3], n_tokens, 40, Drops()) == [conv[:3]]


def test_sample_id_is_stable_and_content_based():
    assert sample_id(EXPECTED) == sample_id([dict(m) for m in EXPECTED])
    assert sample_id(EXPECTED) != sample_id(EXPECTED[1:])
    assert len(sample_id(EXPECTED)) == 16


# ---------------------------------------------------------------------------------------------- format: columns

QA = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
METAMATH = {"query": "What is 2+2?", "response": "4", "type": "GSM_Rephrased"}


def columns_source(path, columns, **kw):
    return source(path, format="columns", columns=columns, **kw)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_columns_map_single_turn_tables(tmp_path, kind):
    path = write(tmp_path / f"d.{kind}", [METAMATH] * 2, kind)
    convs = read_source(columns_source(path, {"prompt": "query", "response": "response", "system": None}),
                        "error", Drops())
    assert convs == [QA, QA]


def test_columns_system_and_input():
    row = {"instruction": "Sum these.", "extra": "1 2", "output": "3", "sys": "Be brief."}
    cols = {"prompt": "instruction", "input": "extra", "response": "output", "system": "sys"}
    assert to_messages(row, "columns", "x", cols) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum these.\n\n1 2"},
        {"role": "assistant", "content": "3"}]
    # optional columns may be absent or empty in a row
    assert to_messages({"instruction": "Hi?", "output": "Hello."}, "columns", "x", cols)[0]["role"] == "user"


@pytest.mark.parametrize(
    "text",
    [
        ("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
         "<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>"),  # oasst_top1_2023-08-25
        "### Human: Hi?### Assistant: Hello.### Human: And?### Assistant: Bye.",  # openassistant-guanaco
    ],
)
def test_columns_text_dialogue_layouts(text):
    assert to_messages({"text": text}, "columns", "x", {"text": "text"}) == [
        u("Hi?"), a("Hello."), u("And?"), a("Bye.")]


def test_orca_best_cluster_rows_are_detected_and_read():
    row = {"instruction": "Be brief.", "cluster": {"samples": [{"input": "Hi?", "output": "Hello."},
                                                               {"input": "Hey?", "output": "Hi."}]}, "num_samples": 2}
    assert detect_format(row, "x") == "orca"
    assert to_messages(row, "orca", "x") == EXPECTED
    older = {"instruction": "Be brief.", "conversation": {"samples": [{"input": "Hi?", "output": "Hello."}]}}
    assert to_messages(older, detect_format(older, "x"), "x") == EXPECTED


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "What is 2+2?", "response": "4"},
         "line 2: missing column 'query' (columns.prompt); the row has columns ['question', 'response']"),
        ({"query": "What is 2+2?"}, "line 2: missing column 'response' (columns.response)"),
        ({"query": ["a", "b"], "response": "4"}, "line 2: column 'query' (columns.prompt) is list, expected text"),
        ({"query": None, "response": "4"}, "line 2: column 'query' (columns.prompt) is null"),
    ],
)
def test_columns_bad_row_names_source_column_and_honours_on_bad_row(tmp_path, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(METAMATH) + "\n" + json.dumps(row) + "\n")
    src = columns_source(path, {"prompt": "query", "response": "response", "system": None}, name="metamath")
    with pytest.raises(DataError) as err:
        read_source(src, "error", Drops())
    assert f"source 'metamath': {path}:{message}" in str(err.value)
    assert "set data.on_bad_row: skip" in str(err.value)
    counts = Drops()
    assert read_source(src, "skip", counts) == [QA]
    assert counts["bad_rows"] == 1 and counts["rows_read"] == 2


def test_columns_text_without_turns_is_a_bad_row():
    with pytest.raises(DataError, match=r"x: text column has no turns in a known layout"):
        to_messages({"text": "just prose"}, "columns", "x", {"text": "text"})


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"format": "columns"}, "data source 'm': format: columns needs a `columns:` mapping"),
        ({"format": "alpaca", "columns": {"prompt": "q", "response": "r"}},
         "data source 'm': `columns:` is only read with format: columns (format is 'alpaca')"),
        ({"format": "columns", "columns": {"prompt": "q"}}, "columns: response missing; give prompt + response"),
        ({"format": "columns", "columns": {"text": "t", "prompt": "q"}},
         "columns: give either text or prompt + response, not both"),
        ({"format": "columns", "columns": {"prompt": "q", "answer": "r"}},
         "data source 'm': columns: unknown key(s) answer; keys: prompt, response, system, input, text"),
    ],
)
def test_columns_config_is_validated(entry, message):
    from fusepipe.errors import ConfigError
    from fusepipe.pipeline import load_dict

    raw = {"data": {"sources": [{"name": "m", "path": "meta-math/MetaMathQA", **entry}]},
           "models": [{"name": "p", "path": "p", "role": "pivot"}, {"name": "s", "path": "s", "role": "source"}],
           "logits": {"modes": ["gt"]}}
    with pytest.raises(ConfigError) as err:
        load_dict(raw)
    assert message in str(err.value)


def test_data_files_picks_files_of_a_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "gpt4.jsonl", [RECORDS["sharegpt"]] * 2, "jsonl")
    write(folder / "zh.jsonl", [RECORDS["orca"]] * 5, "jsonl")
    convs = read_source(source(folder, data_files="gpt4.jsonl"), "error", Drops())
    assert convs == [EXPECTED] * 2
