"""Every Parquet schema of the pipeline, in one place. Writers and readers use these; `fusepipe inspect`
prints them.

Conventions (DESIGN.md, "Data contracts"): rows keyed by `sample_id` (stable hash of the conversation), ids
int32, scalars float32, ragged per-token data as Arrow lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.errors import ArtifactError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

CONVERSATION = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ],
    metadata={"fusepipe.schema": "conversation"},
)

# generate: one row per (prompt, model, sample index); `seed` hashes (generate.seed, sample_id, model, index).
GENERATION = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("prompt_truncated", pa.bool_(), nullable=False),
    ],
    metadata={"fusepipe.schema": "generation"},
)

# reward: one row per (prompt, generator, sample index) and reward model; `score` is the raw scalar.
REWARD = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("rm", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ],
    metadata={"fusepipe.schema": "reward"},
)

CANDIDATE = pa.struct(
    [
        ("model", pa.string()),
        ("sample_index", pa.int32()),
        ("votes", pa.int32()),
        ("scores", pa.map_(pa.string(), pa.float32())),  # rm -> raw score
        ("aggregate", pa.float32()),  # zscore: mean z over RMs; majority: the strongest RM's score
        ("empty", pa.bool_()),  # the response is only whitespace: no candidate, no votes (-inf aggregate)
    ]
)

# vote: one row per (prompt, subset of generators). subset "all" = every generator (unified fusion); a pair
# "pivot~source" = FuseChat-style pairwise fusion. `votes` maps candidate ("model" or "model#i" when n > 1).
VOTE = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("subset", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("winner", pa.string(), nullable=False),
        pa.field("winner_index", pa.int32(), nullable=False),
        pa.field("votes", pa.map_(pa.string(), pa.int32()), nullable=False),
        pa.field("tie_broken", pa.bool_(), nullable=False),
        pa.field("candidates", pa.list_(CANDIDATE), nullable=False),
    ],
    metadata={"fusepipe.schema": "vote"},
)

# logits: one row per (sample, model, mode); per target token (all assistant turns) ragged lists, top-k as
# fixed-size lists. Log-probs are stored as uint16 fixed-point codes (fusepipe.logits.store, docs/logits.md):
# token_logprob = -code / scale; entropy = code / scale; topk_logprobs holds the first code then the gaps
# between ranks, logprob[j] = -(code[0] + ... + code[j]) / scale. Nulls mark redundancy with the target token:
# topk_ids is null at the rank holding the target (its id is token_ids), token_logprob is null when it equals
# topk_logprobs at that rank, entropy is null in `topk_tail` samples (a function of the stored top-k). k and the code are in the metadata.
LOGITS_CODE = "fixed16-gaps-targetnull-v2"  # v2: top-k + tail entropy is derived, stored as nulls
LOGITS_SCALE = 512  # codes per nat: step 2^-9, abs error <= 2^-10 above the floor -65535/512
LOGITS_K = 10


def _items(value_type: pa.DataType, width: int = 0, nullable: bool = False) -> pa.DataType:
    """list<value_type>, or list<fixed_size_list<value_type, width>>; only the innermost items may be null."""
    if width:
        value_type = pa.list_(pa.field("element", value_type, nullable=nullable), width)
        nullable = False
    return pa.list_(pa.field("element", value_type, nullable=nullable))


def logits_schema(k: int = LOGITS_K) -> pa.Schema:
    """The logits schema for top-k captures (k from config `logits.k`)."""
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),  # gt | inf
            pa.field("entropy_kind", pa.string(), nullable=False),  # exact | topk_tail
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("n_bytes", pa.int32(), nullable=False),
            pa.field("nll_sum", pa.float32(), nullable=False),
            pa.field("token_ids", _items(pa.int32()), nullable=False),
            pa.field("offsets", _items(pa.int32(), 2), nullable=False),  # [start, end) in the message text
            pa.field("message_index", _items(pa.int16()), nullable=False),
            pa.field("turn_end", _items(pa.bool_()), nullable=False),
            pa.field("topk_ids", _items(pa.int32(), k, nullable=True), nullable=False),  # null: the target
            pa.field("topk_logprobs", _items(pa.uint16(), k), nullable=False),  # first code, then gaps
            pa.field("token_logprob", _items(pa.uint16(), nullable=True), nullable=False),  # null: = top-k
            pa.field("entropy", _items(pa.uint16(), nullable=True), nullable=False),  # code; null: derived
        ],
        metadata={
            "fusepipe.schema": "logits",
            "fusepipe.logits.k": str(k),
            "fusepipe.logits.code": LOGITS_CODE,
            "fusepipe.logits.scale": str(LOGITS_SCALE),
        },
    )


LOGITS = logits_schema(LOGITS_K)


# The entropy of `entropy_kind: topk_tail` rows: the vLLM engine computes it, readers of a logits shard derive the
# rows stored as nulls with it. Part of the shard format, so it lives here (every stage's code version covers it).
def topk_tail_entropy(top_logprobs: np.ndarray) -> np.ndarray:
    """H over the top-k plus one bucket holding the rest of the mass, [T, k] -> [T] float32:
    H = -Σ_topk p log p - p_tail log p_tail, p_tail = max(0, 1 - Σ_topk p) (a lower bound of the full entropy)."""
    lp = np.asarray(top_logprobs, np.float64)
    p = np.exp(lp)
    tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    tail_term = np.where(tail > 0, tail * np.log(np.where(tail > 0, tail, 1.0)), 0.0)
    return (-(p * lp).sum(axis=1) - tail_term).astype(np.float32)


# aligned: one row per (pivot sample, mode) of a (pivot, source) pair: the source's top-k re-expressed at every
# pivot target token (the rows of the pivot's own logits in mode gt) over pivot vocabulary ids (fusepipe.align).
# Per position: `valid` (a source distribution reached it; else a one-hot of the pivot's own token), `kind`
# (0 unaligned, 1 one-to-one, 2 one-to-many, 3 many-to-one), and the source's entropy and token NLL averaged over
# the linked source tokens with the projection's weights (NaN where unaligned). Per sample: the source's own
# sequence totals on its tokens (CE and entropy for MinCE / UDF), null when the source has no such sample.
# Log-probs are fp32 (-inf pads with id -1).
def aligned_schema(k: int = LOGITS_K) -> pa.Schema:
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("pivot", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("token_ids", _items(pa.int32()), nullable=False),
            pa.field("message_index", _items(pa.int16()), nullable=False),
            pa.field("turn_end", _items(pa.bool_()), nullable=False),
            pa.field("topk_ids", _items(pa.int32(), k), nullable=False),
            pa.field("topk_logprobs", _items(pa.float32(), k), nullable=False),
            pa.field("valid", _items(pa.bool_()), nullable=False),
            pa.field("kind", _items(pa.int8()), nullable=False),
            pa.field("src_entropy", _items(pa.float32()), nullable=False),
            pa.field("src_nll", _items(pa.float32()), nullable=False),
            pa.field("src_n_tokens", pa.int32(), nullable=True),
            pa.field("src_n_bytes", pa.int32(), nullable=True),
            pa.field("src_nll_sum", pa.float64(), nullable=True),
            pa.field("src_entropy_sum", pa.float64(), nullable=True),
            pa.field("src_entropy_kind", pa.string(), nullable=True),
        ],
        metadata={"fusepipe.schema": "aligned", "fusepipe.aligned.k": str(k)},
    )


ALIGNED = aligned_schema(LOGITS_K)


# targets: what one (recipe, target) trains on, one row per (sample, mode, distribution): the conversation as
# trained (mode inf: prompt + voted response), the pivot's target token ids, the fused sparse distribution over
# pivot ids at each of them (fp32, -1 / -inf pads), `valid` per position, the model it came from ("udf" for a
# mixture), and a loss weight (several rows of one sample and mode are summed, e.g. the naive function).
def targets_schema(k: int = LOGITS_K) -> pa.Schema:
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("weight", pa.float32(), nullable=False),
            pa.field("messages", pa.list_(MESSAGE), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("token_ids", _items(pa.int32()), nullable=False),
            pa.field("topk_ids", _items(pa.int32(), k), nullable=False),
            pa.field("topk_logprobs", _items(pa.float32(), k), nullable=False),
            pa.field("valid", _items(pa.bool_()), nullable=False),
        ],
        metadata={"fusepipe.schema": "targets", "fusepipe.targets.k": str(k)},
    )


TARGETS = targets_schema(LOGITS_K)

SCHEMAS: dict[str, pa.Schema] = {
    "conversation": CONVERSATION,
    "generation": GENERATION,
    "reward": REWARD,
    "vote": VOTE,
    "logits": LOGITS,
    "aligned": ALIGNED,
    "targets": TARGETS,
}


def schema_name(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    raw = meta.get(b"fusepipe.schema")
    return raw.decode() if raw else None


def read_k_table(path: str | Path, name: str, schema_of, missing: str) -> pa.Table:
    """A Parquet artifact whose schema is parametrised by k (`aligned`, `targets`): checked against
    `schema_of(k)`, k read from its metadata; `missing` is the fix to name when the file does not exist."""
    if not Path(path).exists():
        raise ArtifactError(f"{path}: missing; {missing}")
    meta = pq.read_schema(path).metadata or {}
    if meta.get(b"fusepipe.schema") != name.encode():
        raise ArtifactError(f"{path}: not {'an' if name[0] in 'aeiou' else 'a'} {name} shard (schema "
                            f"{meta.get(b'fusepipe.schema')!r})")
    check_schema(path, schema_of(int(meta[f"fusepipe.{name}.k".encode()])))
    return pq.read_table(path)


def check_schema(path: str | Path, expected: pa.Schema) -> pa.Schema:
    """Fail early, naming the file and the column, when an artifact does not match `expected`."""
    try:
        found = pq.read_schema(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the stage that writes it first") from None
    except pa.ArrowInvalid as err:
        raise ArtifactError(f"{path}: not a readable Parquet file ({err}); delete it and rerun its stage") from None
    for field in expected:
        idx = found.get_field_index(field.name)
        if idx < 0:
            raise ArtifactError(f"{path}: column {field.name!r} missing; rerun the stage that writes it")
        if not found.field(idx).type.equals(field.type):
            raise ArtifactError(
                f"{path}: column {field.name!r} has type {found.field(idx).type}, expected {field.type}"
            )
    return found
