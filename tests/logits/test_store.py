"""Logits shards: exact round trip of ids/offsets/flags, the log-prob code's bound (and float16 failing it),
the target nulls, atomic and streaming writes, schema, size on the synthetic stand-in, empty shards."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusepipe.errors import ArtifactError
from fusepipe.logits.store import (
    FLOOR,
    MAX_ABS_ERROR,
    MAX_REL_ERROR,
    SampleLogits,
    ShardWriter,
    WriteOptions,
    bytes_per_token,
    check_shard,
    decode_entropy,
    decode_logprobs,
    decoded_row_groups,
    decoded_tables,
    encode_entropy,
    encode_logprobs,
    from_gaps,
    read_sample,
    read_shard,
    to_gaps,
    topk_tail_entropy,
    write_shard,
)
from fusepipe.logits.synthetic import SyntheticCaptures
from fusepipe.schemas import LOGITS, SCHEMAS, check_schema, logits_schema

SETTINGS = settings(max_examples=60, deadline=None)
EXACT = ("token_ids", "offsets", "message_index", "turn_end", "topk_ids")
# The goal is 30 B/token at k=10; measured on the stand-in: 31.5 at 100 samples, 31.1 at 600 and more
# (docs/logits.md says why 30 is out of reach of zstd there). The budget guards against regressions.
BYTES_PER_TOKEN_BUDGET = 32.0


@pytest.fixture(scope="module")
def samples() -> list[SampleLogits]:
    return list(SyntheticCaptures(seed=1).samples(24, min_tokens=20, max_tokens=120))


@pytest.fixture(scope="module")
def shard(tmp_path_factory, samples):
    path = tmp_path_factory.mktemp("logits") / "shard-00000.parquet"
    write_shard(path, samples, options=WriteOptions(samples_per_row_group=5))
    return path


def log_softmax_topk(logits: np.ndarray, k: int) -> np.ndarray:
    """fp32 log-softmax of each row, top-k in rank order (as the engines give them)."""
    x = logits.astype(np.float32)
    m = x.max(axis=1, keepdims=True)
    lp = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True, dtype=np.float32))
    return -np.sort(-lp, axis=1)[:, :k]


def record(topk_ids, topk_logprobs, token_ids, token_logprob, entropy=None, sample_id="x") -> SampleLogits:
    t = len(token_ids)
    return SampleLogits(
        sample_id=sample_id, model="m", mode="gt",
        token_ids=np.asarray(token_ids, np.int32),
        offsets=np.stack([np.arange(t), np.arange(t) + 1], axis=1).astype(np.int32),
        message_index=np.zeros(t, np.int32), turn_end=np.zeros(t, bool),
        topk_ids=np.asarray(topk_ids, np.int32), topk_logprobs=np.asarray(topk_logprobs, np.float32),
        token_logprob=np.asarray(token_logprob, np.float32),
        entropy=np.zeros(t, np.float32) if entropy is None else np.asarray(entropy, np.float32),
        entropy_kind="exact", nll_sum=float(-np.sum(token_logprob)), n_tokens=t, n_bytes=t,
    )  # fmt: skip


# --- the code ---------------------------------------------------------------------------------------------


@SETTINGS
@given(hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-200, 0, width=32)))
def test_code_error_is_at_most_2_to_the_minus_10_above_the_floor_and_clamps_below(lp):
    codes, clamped = encode_logprobs(lp)
    back = decode_logprobs(codes)
    above = lp >= FLOOR
    assert np.abs(back[above] - lp[above]).max(initial=0) <= MAX_ABS_ERROR
    assert clamped == int((~above).sum())
    assert (back[~above] == np.float32(FLOOR)).all()
    assert (np.exp(np.abs(back[above].astype(np.float64) - lp[above])) - 1 <= MAX_REL_ERROR).all()


def test_code_bound_is_below_the_requirement_and_exact_on_its_grid():
    assert MAX_ABS_ERROR == 2**-10 and MAX_REL_ERROR < 1e-3
    grid = -np.arange(0, 65536, dtype=np.float32) / 512
    codes, clamped = encode_logprobs(grid)
    assert clamped == 0 and (decode_logprobs(codes) == grid).all()
    again, _ = encode_logprobs(decode_logprobs(codes))
    assert (again == codes).all()  # decoding then encoding changes nothing


def test_float16_misses_the_bound_below_minus_4_where_the_code_meets_it():
    """fp16 keeps 11 significant bits: abs error up to 2^-10 in [-4, -2), 2^-9 in [-8, -4), ... ."""
    lp = np.linspace(-8, -4, 400_001, dtype=np.float32)
    fp16_error = np.abs(lp.astype(np.float16).astype(np.float32) - lp).max()
    code_error = np.abs(decode_logprobs(encode_logprobs(lp)[0]) - lp).max()
    assert fp16_error > 1.9e-3 and code_error <= MAX_ABS_ERROR


def test_logits_and_nan_are_refused():
    with pytest.raises(ValueError, match="logits"):
        encode_logprobs(np.array([0.5, -1.0], np.float32))
    with pytest.raises(ValueError, match="NaN"):
        encode_logprobs(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        encode_entropy(np.array([-0.1], np.float32))


@SETTINGS
@given(hnp.arrays(np.float32, st.integers(0, 50), elements=st.floats(0, 12, width=32)))
def test_entropy_code_error_is_at_most_2_to_the_minus_10(h):
    assert np.abs(decode_entropy(encode_entropy(h)) - h).max(initial=0) <= MAX_ABS_ERROR


@SETTINGS
@given(st.data())
def test_gaps_invert_exactly_and_refuse_a_rank_above_the_one_before(data):
    k = data.draw(st.integers(1, 12))
    codes = np.sort(data.draw(hnp.arrays(np.uint16, (data.draw(st.integers(0, 20)), k))), axis=1)
    assert (from_gaps(to_gaps(codes)) == codes).all()
    if k > 1 and len(codes) and codes[0, 0] != codes[0, -1]:
        with pytest.raises(ValueError, match="non-increasing"):
            to_gaps(codes[:, ::-1])


# --- the shard ----------------------------------------------------------------------------------------------


def test_round_trip_is_exact_for_ids_offsets_flags_and_labels(shard, samples):
    back = list(read_shard(shard))
    assert [s.sample_id for s in back] == [s.sample_id for s in samples]
    for a, b in zip(samples, back, strict=True):
        for name in EXACT:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
            assert getattr(b, name).dtype == (np.bool_ if name == "turn_end" else np.int32)
        assert (a.model, a.mode, a.entropy_kind, a.n_tokens, a.n_bytes) == (
            b.model, b.mode, b.entropy_kind, b.n_tokens, b.n_bytes)  # fmt: skip
        assert b.nll_sum == float(np.float32(a.nll_sum))


def test_round_trip_log_probs_are_the_code_exactly(shard, samples):
    """What comes back is bit-for-bit decode(encode(x)), so within 2^-10 of the fp32 values."""
    for a, b in zip(samples, read_shard(shard), strict=True):
        for name in ("topk_logprobs", "token_logprob"):
            assert getattr(b, name).dtype == np.float32
            assert np.array_equal(getattr(b, name), decode_logprobs(encode_logprobs(getattr(a, name))[0]))
        assert np.array_equal(b.entropy, decode_entropy(encode_entropy(a.entropy)))
        assert np.abs(b.topk_logprobs - a.topk_logprobs).max() <= MAX_ABS_ERROR


@SETTINGS
@given(st.data())
def test_any_distribution_round_trips_within_the_bound(tmp_path_factory, data):
    """Random logits (spreads up to 400 nats, so some top-k fall below the floor), random targets."""
    k = data.draw(st.integers(1, 12))
    vocab = data.draw(st.integers(k, 40))
    t = data.draw(st.integers(0, 12))
    spread = data.draw(st.sampled_from([1.0, 10.0, 400.0]))
    logits = data.draw(hnp.arrays(np.float32, (t, vocab), elements=st.floats(-1, 1, width=32))) * spread
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    topk = log_softmax_topk(logits, k)
    target = data.draw(hnp.arrays(np.int64, t, elements=st.integers(0, vocab - 1)))
    full = log_softmax_topk(logits, vocab)
    rank_of = np.argsort(np.argsort(-logits, axis=1, kind="stable"), axis=1)
    token_lp = full[np.arange(t), rank_of[np.arange(t), target]] if t else np.zeros(0, np.float32)
    sample = record(order, topk, target, token_lp)
    path = tmp_path_factory.mktemp("any") / "s.parquet"
    stats = write_shard(path, [sample], k=k)
    (back,) = read_shard(path)
    assert np.array_equal(back.topk_ids, order) and np.array_equal(back.token_ids, target)
    for got, want in ((back.topk_logprobs, topk), (back.token_logprob, token_lp)):
        above = want >= FLOOR
        assert np.abs(got[above] - want[above]).max(initial=0) <= MAX_ABS_ERROR
        assert (got[~above] == np.float32(FLOOR)).all()
    assert stats.n_clamped == int((topk < FLOOR).sum() + (token_lp < FLOOR).sum())


def test_target_nulls_are_filled_back_exactly(tmp_path):
    """The target at rank 0, at rank 2, outside the top-k, and in the top-k with a token_logprob whose code
    differs from the top-k's (stored then, not null)."""
    topk_ids = [[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 7]]
    topk_lp = [[-0.1, -2.0, -3.0]] * 4
    sample = record(topk_ids, topk_lp, [5, 7, 9, 6], [-0.1, -3.0, -4.5, -2.01])
    path = tmp_path / "s.parquet"
    write_shard(path, [sample], k=3)
    stored = pq.read_table(path).to_pylist()[0]
    assert stored["topk_ids"] == [[None, 6, 7], [5, 6, None], [5, 6, 7], [5, None, 7]]
    assert stored["token_logprob"][:2] == [None, None] and None not in stored["token_logprob"][2:]
    (back,) = read_shard(path)
    assert back.topk_ids.tolist() == topk_ids
    assert np.abs(back.token_logprob - sample.token_logprob).max() <= MAX_ABS_ERROR
    assert back.token_logprob[3] != back.topk_logprobs[3, 1]
    plain = tmp_path / "plain.parquet"
    write_shard(plain, [sample], k=3, options=WriteOptions(target_nulls=False))
    assert "None" not in str(pq.read_table(plain).to_pylist())
    (again,) = read_shard(plain)
    for name in ("topk_ids", "topk_logprobs", "token_logprob"):
        assert np.array_equal(getattr(again, name), getattr(back, name))


def test_an_exception_inside_the_writer_leaves_no_shard(tmp_path, samples):
    path = tmp_path / "shard-00000.parquet"
    with pytest.raises(RuntimeError), ShardWriter(path, options=WriteOptions(samples_per_row_group=2)) as w:
        w.write_all(samples[:5])  # two row groups are already in the temporary file
        raise RuntimeError("engine died")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_sample_names_itself_and_keeps_the_previous_shard(tmp_path, samples):
    path = tmp_path / "shard-00000.parquet"
    write_shard(path, samples[:2])
    before = path.read_bytes()
    bad = dataclasses.replace(samples[3], topk_logprobs=-samples[3].topk_logprobs)  # logits, not log-probs
    with pytest.raises(ValueError, match=f"sample {bad.sample_id}: .*logits"):
        write_shard(path, [samples[2], bad, samples[4]])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(ValueError, match=f"sample {bad.sample_id}: topk_ids has shape"):
        write_shard(path, [bad], k=5)


def test_writer_streams_one_row_group_per_n_samples_or_tokens(tmp_path, samples):
    path = tmp_path / "s.parquet"
    stats = write_shard(path, samples[:11], options=WriteOptions(samples_per_row_group=4))
    assert stats.n_row_groups == pq.ParquetFile(path).num_row_groups == 3
    assert stats.n_samples == 11 and stats.n_tokens == sum(s.n_tokens for s in samples[:11])
    stats = write_shard(path, samples[:6], options=WriteOptions(tokens_per_row_group=1))
    assert pq.ParquetFile(path).num_row_groups == 6


def test_schema_is_registered_and_checked(shard, tmp_path, samples):
    assert SCHEMAS["logits"] is LOGITS and LOGITS.equals(logits_schema(10))
    check_schema(shard, LOGITS)
    assert check_shard(shard).metadata[b"fusepipe.schema"] == b"logits"
    small = tmp_path / "k3.parquet"
    write_shard(small, [record([[1, 2, 3]], [[-0.5, -1, -2]], [1], [-0.5])], k=3)
    check_schema(small, logits_schema(3))
    with pytest.raises(ArtifactError, match="topk_ids"):
        check_schema(small, LOGITS)
    with pytest.raises(ArtifactError, match="missing"):
        check_shard(tmp_path / "nothing.parquet")
    other_code = tmp_path / "other-code.parquet"
    meta = {**LOGITS.metadata, b"fusepipe.logits.code": b"float16-v0"}
    pq.write_table(LOGITS.empty_table().replace_schema_metadata(meta), other_code)
    with pytest.raises(ArtifactError, match="float16-v0"):
        check_shard(other_code)


def test_read_sample_and_columns(shard, samples):
    want = samples[13]
    got = read_sample(shard, want.sample_id)
    assert np.array_equal(got.topk_ids, want.topk_ids) and got.n_tokens == want.n_tokens
    with pytest.raises(KeyError):
        read_sample(shard, "nope")
    (first, *_) = read_shard(shard, columns=["token_logprob"])
    assert first.offsets is None and first.entropy is None and first.token_logprob.dtype == np.float32
    flat = next(decoded_row_groups(shard))
    assert flat["ptr"].tolist() == [0, *np.cumsum([s.n_tokens for s in samples[:5]])]
    assert flat["topk_ids"].shape == (flat["ptr"][-1], 10) and flat["offsets"].shape == (flat["ptr"][-1], 2)
    table = next(decoded_tables(shard, columns=["topk_logprobs"]))
    assert str(table.schema.field("topk_logprobs").type) == "list<item: fixed_size_list<item: float>[10]>"


def test_empty_shard_is_valid_and_reads_as_nothing(tmp_path):
    path = tmp_path / "shard-00007.parquet"
    stats = write_shard(path, [])
    assert stats.n_samples == 0 and path.is_file()
    check_schema(path, LOGITS)
    assert list(read_shard(path)) == [] and bytes_per_token(path) is None


def test_bytes_per_token_on_the_synthetic_stand_in(tmp_path):
    """~30k target tokens at k=10 (smaller files pay more for zstd's tables and the footer)."""
    path = tmp_path / "s.parquet"
    write_shard(path, SyntheticCaptures(seed=0).samples(100))
    assert bytes_per_token(path) <= BYTES_PER_TOKEN_BUDGET


def test_vllm_style_shards_meet_30_bytes_per_token_and_derive_their_entropy(tmp_path):
    """entropy_kind topk_tail (vLLM) is a function of the stored top-k: stored as nulls and recomputed on read
    (within 1e-2 nat of the engine's fp32 value, the log-probs being within 2^-10); that brings the stand-in
    under the issue's 30 B/token at k=10."""
    path = tmp_path / "s.parquet"
    samples = list(SyntheticCaptures(seed=0).samples(100, entropy_kind="topk_tail"))
    write_shard(path, samples)
    assert bytes_per_token(path) <= 30.0
    entropy = pq.read_table(path, columns=["entropy"]).column("entropy").combine_chunks().flatten()
    assert entropy.null_count == len(entropy)
    for a, b in zip(samples, read_shard(path), strict=True):
        assert np.abs(a.entropy - b.entropy).max() < 1e-2
        assert np.array_equal(b.entropy, topk_tail_entropy(b.topk_logprobs))
    only = next(read_shard(path, columns=["entropy"]))  # reading entropy alone brings what it needs
    assert np.array_equal(only.entropy, next(read_shard(path)).entropy)
