"""The sample table: the one Arrow schema every part of avcurate agrees on.

Columns are flat and snake_case so they can be queried from SQL. Stages add
their own columns (declared in `Stage.adds`); rejected rows carry
`reject_stage`, `reject_reason` (a stable code, grouped in reports) and
`reject_detail` (free text for humans).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pyarrow as pa

from avcurate.core.arrow_values import scalar, strings

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("video", pa.string()),
        pa.field("audio", pa.string()),
        pa.field("question", pa.string()),
        pa.field("options", pa.list_(pa.string())),
        pa.field("answer", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("meta", pa.string()),
    ]
)
BASE_COLUMNS: tuple[str, ...] = tuple(SAMPLE_SCHEMA.names)

REJECT_FIELDS = [
    pa.field("reject_stage", pa.string()),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.string()),
]

TYPE_NAMES = {
    "string": pa.string(), "str": pa.string(), "double": pa.float64(), "float": pa.float64(),
    "float64": pa.float64(), "int": pa.int64(), "int64": pa.int64(), "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
}


def arrow_type(name: str) -> pa.DataType:
    """Arrow type for a type name used in recipes (`extra_columns = {category = "string"}`)."""
    try:
        return TYPE_NAMES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown column type {name!r}; use one of {', '.join(TYPE_NAMES)}") from None


def sample_row(
    *,
    id: str,
    source: str,
    video: str | None,
    question: str | None,
    options: list[str] | None = None,
    answer: str | None = None,
    audio: str | None = None,
    duration_s: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the sample table as a dict, with `meta` serialised to JSON."""
    return {
        "id": unicodedata.normalize("NFC", id),  # one spelling of an id is one id
        "source": source,
        "video": video,
        "audio": audio,
        "question": question,
        "options": list(options) if options is not None else None,
        "answer": answer,
        "duration_s": duration_s if duration_s is None or math.isfinite(duration_s) else None,
        "meta": _json(dict(meta or {})),
    }


def _json(value: Any) -> str:
    """JSON text Arrow can store, keys sorted: plain UTF-8 when possible, escaped when a
    value holds bytes that are not UTF-8 (surrogates from a badly encoded annotation file).

    orjson writes it (0.3 us against 2 us for `json.dumps` per ingested row's meta);
    what orjson refuses (surrogates, integers over 64 bits, non-text keys) goes through
    the standard library with the same compact separators."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str,
                      separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, sort_keys=True, default=str,
                          separators=(",", ":"))
    return text


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    """Build a table with exactly `schema`, so shards of one stage always agree."""
    rows = rows if isinstance(rows, list) else list(rows)
    return pa.Table.from_pylist(rows, schema=schema)


def with_columns(table: pa.Table, columns: Mapping[str, pa.Array | list]) -> pa.Table:
    """Append or replace columns by name."""
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, arr) if idx >= 0 else table.append_column(name, arr)
    return table


def add_reject_columns(table: pa.Table, stage: str, reasons: list[str] | pa.Array,
                       details: list[str] | pa.Array) -> pa.Table:
    """Mark rows of `table` as rejected by `stage` (reasons and details: lists or arrays)."""
    return with_columns(
        table,
        {
            "reject_stage": pa.repeat(scalar(stage), table.num_rows),
            "reject_reason": strings(reasons),
            "reject_detail": strings(details),
        },
    )
