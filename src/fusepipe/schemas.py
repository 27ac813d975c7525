"""Every Parquet schema of the pipeline, in one place. Writers and readers use these; `fusepipe inspect`
prints them.

Conventions (DESIGN.md, "Data contracts"): rows keyed by `sample_id` (stable hash of the conversation), ids
int32, scalars float32, ragged per-token data as Arrow lists.
"""

from __future__ import annotations

from pathlib import Path

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

SCHEMAS: dict[str, pa.Schema] = {"conversation": CONVERSATION}


def schema_name(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    raw = meta.get(b"fusepipe.schema")
    return raw.decode() if raw else None


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
