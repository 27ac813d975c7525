"""The `data` stage on bad input, end to end through `fusepipe data`: one line naming the file, the row and the
fix, never a traceback, nothing silently kept; the counts of every run in its manifest and `fusepipe inspect`.
A property test feeds generated malformed rows: the stage writes complete outputs or raises a one-line
DataError, never another exception."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fusepipe import pipeline as fppipeline
from fusepipe.cli import cli
from fusepipe.data import stage
from fusepipe.data.ingest import CONTROL_CHAR
from fusepipe.errors import DataError

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
GOOD = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}


@pytest.fixture(scope="module")
def pivot(tmp_path_factory) -> Path:
    """A word-level tokenizer with a chat template: all the data stage needs of the pivot."""
    path = tmp_path_factory.mktemp("pivot")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)
    return path


def params(pivot: Path, sources: list[dict], on_bad_row: str = "error", **data) -> dict:
    """The data stage's config slice, validated and defaults filled as the CLI would (with a prompts_only source,
    a ProFuser recipe that can use it)."""
    raw = {"data": {"sources": sources, "on_bad_row": on_bad_row, "eval_fraction": 0.0, **data},
           "models": [{"name": "p", "path": str(pivot), "role": "pivot"}, {"name": "s", "path": "s", "role": "source"}],
           "logits": {"modes": ["gt"]}}  # fmt: skip
    if any(s.get("prompts_only") for s in sources):
        raw |= {"logits": {"modes": ["gt", "inf"]}, "reward_models": [{"name": "rm", "path": "rm", "strength": 1}],
                "recipes": [{"name": "pf", "kind": "profuser"}]}
    return fppipeline.stage_slice(fppipeline.load_dict(raw), "data")


def run_cli(slice_: dict, out: Path):
    """`fusepipe data` as Snakemake runs it; (exit code, output)."""
    result = CliRunner().invoke(cli, ["data", "--config-json", json.dumps(slice_), "--out", str(out)])
    return result.exit_code, result.output


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def error_line(code: int, output: str) -> str:
    """The CLI's one error line (the last line, after any log lines): exit code 2, `error: ...`, no traceback."""
    assert code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and output.strip().endswith(errors[0]) and errors[0].startswith("error: "), output
    return errors[0]


# ------------------------------------------------------------------------------------------ (a) encodings

LATIN1 = json.dumps({"messages": [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui."}]},
                    ensure_ascii=False).encode("latin-1")  # fmt: skip


def test_non_utf8_line_names_file_line_offset_and_both_fixes(pivot, tmp_path):
    path = tmp_path / "d.jsonl"
    first = json.dumps(GOOD).encode() + b"\n"
    path.write_bytes(first + LATIN1 + b"\n")
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out"))
    offset = len(first) + LATIN1.index(b"\xe9")
    assert line == (f"error: source 'a': {path}:line 2: not valid utf-8 text (byte e9 at byte offset {offset} of the "
                    "file); set `encoding:` for this source (e.g. encoding: latin-1, cp1252, utf-16) (set "
                    "data.on_bad_row: skip to skip and count such rows)")  # fmt: skip
    # skip: dropped and counted under bad_encoding, with its row
    code, output = run_cli(params(pivot, [{"name": "a", "path": str(path)}], "skip"), tmp_path / "out")
    assert code == 0, output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["sources"]["a"] == {"bad_encoding": 1, "kept": 1, "rows_read": 2}
    assert manifest["first_rows"]["a"] == {"bad_encoding": f"{path}:line 2"}


def test_encoding_key_reads_the_file(pivot, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(LATIN1 + b"\n")
    assert run_cli(params(pivot, [{"name": "a", "path": str(path), "encoding": "latin-1"}]), tmp_path / "o")[0] == 0
    table = pq.read_table(tmp_path / "o" / "train.parquet")
    assert table.column("messages").to_pylist()[0][0]["content"] == "Café?"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_encodings_with_a_bom_or_wide_newlines(pivot, tmp_path, encoding):
    text = json.dumps(GOOD) + "\n" + json.dumps(GOOD | {"id": 2}) + "\n"
    for name, data in (("d.jsonl", text), ("d.json", json.dumps([GOOD]))):
        path = tmp_path / name
        path.write_bytes(data.encode(encoding))
        slice_ = params(pivot, [{"name": "a", "path": str(path), "encoding": encoding}])
        assert run_cli(slice_, tmp_path / name.replace(".", "_"))[0] == 0
    # a UTF-8 BOM is read with the default encoding too
    path = tmp_path / "bom.jsonl"
    path.write_bytes(text.encode("utf-8-sig"))
    assert run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "bom")[0] == 0


def test_non_utf8_json_document_names_line_and_offset(pivot, tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b"[\n" + LATIN1 + b"\n]")
    offset = 2 + LATIN1.index(b"\xe9")
    for mode in ("error", "skip"):
        line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}], mode), tmp_path / "out"))
        assert line == (f"error: {path}:line 2: not valid utf-8 text (byte e9 at byte offset {offset} of the file); set `encoding:` for this source (e.g. encoding: "
                        "latin-1, cp1252, utf-16); the file is decoded whole, so data.on_bad_row: skip cannot skip "
                        "one row")  # fmt: skip


def test_unknown_encoding_is_a_config_error(pivot):
    from fusepipe.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        params(pivot, [{"name": "a", "path": "x.jsonl", "encoding": "klingon"}])
    assert ("data source 'a': unknown encoding 'klingon'; use a Python codec name such as utf-8, latin-1, cp1252 "
            "or utf-16") in str(err.value)  # fmt: skip


def test_dataset_folder_not_in_utf8_names_the_fix_and_reads_with_encoding(pivot, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(LATIN1 + b"\n")
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(folder)}]), tmp_path / "out"))
    assert line.startswith(f"error: {folder}: datasets failed reading row 0: 'utf-8' codec can't decode byte 0xe9")
    assert line.endswith("; fix the file (or set `encoding:` for this source)")
    assert run_cli(params(pivot, [{"name": "a", "path": str(folder), "encoding": "latin-1"}]), tmp_path / "o")[0] == 0


def test_unreadable_parquet_is_one_line(pivot, tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out"))
    assert line.startswith(f"error: {path}: cannot read Parquet at row 0 (") and line.endswith(
        "); fix or re-export the file")


# ------------------------------------------------------------------------- (b) every row dropped by cleaning

def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


def test_a_source_that_keeps_nothing_says_what_was_read_dropped_and_where(pivot, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [
        {"messages": [u("q"), a("  ")]},                      # line 1: empty_turn
        {"messages": [u("q")]},                               # line 2: no_assistant_turn
        {"messages": [u("q"), u("q2"), a("x")]},              # line 3: non_alternating
        {"messages": [u("q"), a("  ")]},                      # line 4: empty_turn again
        {"messages": [{"role": "wizard", "content": "x"}]},   # line 5: bad row (skip)
        {"messages": [u("q"), a("x " * 50)]},                 # line 6: exchange longer than max_len
    ])  # fmt: skip
    good = jsonl(tmp_path / "good.jsonl", [GOOD])
    sources = [{"name": "good", "path": str(good)}, {"name": "bad", "path": str(path)}]
    line = error_line(*run_cli(params(pivot, sources, "skip", max_len=16), tmp_path / "out"))
    assert line == (
        f"error: no conversation survived cleaning in 1 source(s): source 'bad': read 6 rows, kept 0 conversations; "
        f"dropped: bad_rows 1 (first: {path}:line 5), empty_turn 2 (first: {path}:line 1), exchange_too_long 1 "
        f"(first: {path}:line 6), no_assistant_turn 1 (first: {path}:line 2), non_alternating 1 (first: "
        f"{path}:line 3); fix those rows, or the source's `format:` or `filters:`, or remove the source"
    )
    assert not (tmp_path / "out" / "train.parquet").exists()


@pytest.mark.parametrize(("rows", "reason"), [
    ([{"messages": [a("x"), u("q")]}], "starts_with_assistant"),
    ([{"messages": [u("q"), {"role": "system", "content": "s"}, a("x")]}], "misplaced_system"),
    ([{"messages": [u("q"), a("x")]}], "short_response"),
])  # fmt: skip
def test_every_cleaning_reason_reaches_the_error(pivot, tmp_path, rows, reason):
    path = jsonl(tmp_path / "d.jsonl", rows)
    src = {"name": "a", "path": str(path), "filters": {"min_response_chars": 5}}
    line = error_line(*run_cli(params(pivot, [src]), tmp_path / "out"))
    assert f"source 'a': read 1 rows, kept 0 conversations; dropped: {reason} 1 (first: {path}:line 1);" in line


def test_successful_run_records_counts_and_first_rows_and_inspect_shows_them(pivot, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [
        GOOD, GOOD,                                             # line 2: duplicate
        {"messages": [u("q"), a("  ")]},                        # line 3: empty_turn
        {"messages": [u("q"), a("fine"), u("dangling")]},       # line 4: kept, trailing user trimmed
        "{not json",                                            # line 5: bad row
        {"messages": [u("nul\u0000here"), a("x")]},             # line 6: control_char
    ])  # fmt: skip
    out = tmp_path / "out"
    assert run_cli(params(pivot, [{"name": "a", "path": str(path)}], "skip"), out)[0] == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["sources"]["a"] == {"bad_rows": 1, "control_char": 1, "duplicates": 1, "empty_turn": 1,
                                        "kept": 2, "rows_read": 6, "trailing_user_trimmed": 1}  # fmt: skip
    assert manifest["first_rows"]["a"] == {
        "bad_rows": f"{path}:line 5", "control_char": f"{path}:line 6", "duplicates": f"{path}:line 2",
        "empty_turn": f"{path}:line 3", "trailing_user_trimmed": f"{path}:line 4"}  # fmt: skip
    result = CliRunner().invoke(cli, ["inspect", str(out / "_manifest.json")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "data: per source, rows read, kept and dropped by reason" in text
    for cell in ("rows_read", "control_char", f"{path}:line 6", "duplicates", f"{path}:line 2"):
        assert cell in text


# ------------------------------------------------------------------------------------- (c) control characters

@pytest.mark.parametrize("char", ["\u0000", "\u0007", "\u000b", "\u000c", "\u001b", "\u001f"])
def test_control_characters_are_a_bad_row_never_kept(pivot, tmp_path, char):
    path = jsonl(tmp_path / "d.jsonl", [GOOD, {"messages": [u("Hi?"), a(f"Hel{char}lo.")]}])
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out"))
    assert line == (f"error: source 'a': {path}:line 2: turn 1 (assistant) holds control character "
                    f"U+{ord(char):04X} at character 3; remove it from the data (set data.on_bad_row: skip to skip "
                    "and count such rows)")  # fmt: skip
    out = tmp_path / "skip"
    assert run_cli(params(pivot, [{"name": "a", "path": str(path)}], "skip"), out)[0] == 0
    assert json.loads((out / "_manifest.json").read_text())["sources"]["a"]["control_char"] == 1
    assert pq.read_table(out / "train.parquet").num_rows == 1


def test_tab_newline_and_carriage_return_are_kept(pivot, tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [{"messages": [u("a\tb\r\nc"), a("x\ny")]}])
    assert run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out")[0] == 0
    messages = pq.read_table(tmp_path / "out" / "train.parquet").column("messages").to_pylist()[0]
    assert [m["content"] for m in messages] == ["a\tb\r\nc", "x\ny"]


def test_control_characters_in_parquet_and_unpaired_surrogates(pivot, tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q\x00", "response": "r"}]), path)
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out"))
    assert f"{path}:row 0: turn 0 (user) holds control character U+0000 at character 1" in line
    path = tmp_path / "s.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]}\n')
    line = error_line(*run_cli(params(pivot, [{"name": "a", "path": str(path)}]), tmp_path / "out"))
    assert (f"{path}:line 1: turn 0 (user) holds an unpaired surrogate U+D800 at character 1 (a lone \\ud800 escape "
            "is not Unicode); fix the data") in line  # fmt: skip


# --------------------------------------------------------------------------------- (d) property: malformed rows

ROLE = st.sampled_from(["user", "assistant", "system", "human", "gpt", "wizard", "", None, 3])
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["", "  ", "x\x00y", "\x1b"])
VALUE = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT | st.lists(TEXT, max_size=2)
TURN = st.fixed_dictionaries({"role": ROLE, "content": TEXT | VALUE}) | st.dictionaries(TEXT, VALUE, max_size=2)
RECORD = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(TURN, max_size=4)}),
    st.fixed_dictionaries({"messages": VALUE}),
    st.fixed_dictionaries({"conversations": st.lists(
        st.fixed_dictionaries({"from": ROLE, "value": TEXT | VALUE}), max_size=4)}),
    st.fixed_dictionaries({"instruction": TEXT | VALUE, "output": TEXT | VALUE},
                          optional={"input": TEXT | VALUE, "system": TEXT | VALUE}),
    st.fixed_dictionaries({"question": TEXT | VALUE, "response": TEXT | VALUE}),
    st.fixed_dictionaries({"instruction": TEXT, "cluster": VALUE | st.fixed_dictionaries(
        {"samples": st.lists(st.dictionaries(st.sampled_from(["input", "output"]), TEXT | VALUE), max_size=2)})}),
    st.dictionaries(TEXT, VALUE, max_size=3),
    VALUE,
    st.just(GOOD),
)  # fmt: skip
WORDS = st.text(alphabet="ab ?.\t\n", min_size=1, max_size=30)
DIALOGUE = st.integers(1, 4).flatmap(lambda n: st.tuples(*[st.tuples(WORDS, WORDS)] * n)).map(
    lambda pairs: {"messages": [m for q, r in pairs for m in (u(q), a(r))]})  # well formed, some too long or blank
BAD_LINE = st.one_of(
    RECORD.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=24).map(lambda b: b.replace(b"\n", b" ")),  # random bytes: invalid JSON, invalid UTF-8
    st.sampled_from([b"{not json", b"", b"   ", b"\xff\xfe", b'{"messages": [', b"[" * 5000, b'"\\ud800"']),
)  # fmt: skip
LINE = st.integers(0, 2).flatmap(lambda i: DIALOGUE.map(lambda r: json.dumps(r).encode()) if i else BAD_LINE)


@given(lines=st.lists(LINE, max_size=8), on_bad_row=st.sampled_from(["error", "skip"]),
       max_len=st.sampled_from([16, 64]))  # fmt: skip
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
def test_malformed_rows_give_complete_outputs_or_one_line_data_error(pivot, tmp_path, lines, on_bad_row, max_len):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    for f in out.glob("*"):
        f.unlink()
    try:
        manifest = stage.run(params(pivot, [{"name": "a", "path": str(path)}], on_bad_row, max_len=max_len), out)
    except DataError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        assert not (out / "_manifest.json").exists()
        event(f"DataError ({on_bad_row})")
        return
    event(f"outputs ({on_bad_row})")
    assert {f.name for f in out.iterdir()} >= {"train.parquet", "eval.parquet", "_manifest.json"}
    counts = manifest["sources"]["a"]
    assert counts["rows_read"] == sum(1 for line in lines if line.strip())
    table = pq.read_table(out / "train.parquet")
    assert table.num_rows + pq.read_table(out / "eval.parquet").num_rows == counts["kept"] > 0
    for conv in table.column("messages").to_pylist():
        assert all(not CONTROL_CHAR.search(m["content"]) and m["content"].strip() for m in conv)
        turns = conv[1:] if conv[0]["role"] == "system" else conv
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2) and turns


# ------------------------------------------------------------------------------------------ (e) prompt sets


def test_a_prompts_only_source_keeps_prompts_for_the_inference_mode_only(pivot, tmp_path):
    """A prompt set (no references): each row up to its last user turn, in the training split, counted in the
    manifest; generate and the vote read it, the ground-truth readers (gt logits, fuse, transfer) do not."""
    from fusepipe.generate.stage import read_conversations, read_prompts

    refs = jsonl(tmp_path / "refs.jsonl", [GOOD])
    prompts = jsonl(tmp_path / "prompts.jsonl", [
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]},
        {"messages": [{"role": "system", "content": "Only a system prompt."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
    ])  # fmt: skip
    sources = [{"name": "refs", "path": str(refs)}, {"name": "p", "path": str(prompts), "prompts_only": True}]
    slice_ = params(pivot, sources, "skip", eval_fraction=0.5)
    code, output = run_cli(slice_, tmp_path / "out")
    assert code == 0, output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["sources"]["p"] == {"answer_dropped": 1, "kept": 3, "no_user_turn": 1, "rows_read": 4}
    assert manifest["rows"]["prompts_only"] == 3
    train = tmp_path / "out" / "train.parquet"
    rows = pq.read_table(train).to_pylist()
    got = {r["messages"][-1]["content"]: r for r in rows if r["source"] == "p"}
    assert set(got) == {"What is 2 + 2?", "Name a colour.", "Hi?"}
    assert all(r["split"] == "train" and r["messages"][-1]["role"] == "user" for r in got.values())
    assert got["Hi?"]["messages"][0] == {"role": "system", "content": "Be brief."}
    with_refs = {sid for sid, _ in read_conversations(train, 0, 1)}
    everything = dict(read_prompts(train, 0, 1))
    assert {r["sample_id"] for r in got.values()} <= set(everything) and not with_refs & {r["sample_id"] for r in
                                                                                            got.values()}
    assert with_refs <= set(everything)


def test_a_prompt_longer_than_max_len_is_dropped_not_split(pivot, tmp_path):
    long = " ".join(["word"] * 40) + "?"
    prompts = jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": long}]},
                                           {"messages": [{"role": "user", "content": "Short?"}]}])
    refs = jsonl(tmp_path / "refs.jsonl", [GOOD])
    sources = [{"name": "refs", "path": str(refs)}, {"name": "p", "path": str(prompts), "prompts_only": True}]
    code, output = run_cli(params(pivot, sources, max_len=16), tmp_path / "out")
    assert code == 0, output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["sources"]["p"]["prompt_too_long"] == 1 and manifest["sources"]["p"]["kept"] == 1
    assert manifest["first_rows"]["p"]["prompt_too_long"] == f"{prompts}:line 1"


def test_a_prompt_set_without_an_inference_mode_recipe_is_a_config_error(pivot):
    """Prompts without references only reach training through the inference mode; with only ground-truth recipes
    they would be read and silently never used."""
    from fusepipe.errors import ConfigError

    raw = {"data": {"sources": [{"name": "refs", "path": "r.jsonl"},
                                {"name": "ultra", "path": "u.jsonl", "prompts_only": True}]},
           "models": [{"name": "p", "path": str(pivot), "role": "pivot"}, {"name": "s", "path": "s", "role": "source"}],
           "logits": {"modes": ["gt"]}, "recipes": [{"name": "fc", "kind": "fusechat"}]}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == (
        "data.sources: ultra hold(s) prompts without references (prompts_only), which only the inference mode "
        "trains on, but no recipe's schedule uses mode 'inf'; add a profuser recipe (or a schedule with inf) or "
        "remove prompts_only")
