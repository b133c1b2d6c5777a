"""Any JSON-lines or Parquet file, with a column mapping.

`columns` maps sample-table columns to the file's own column names, e.g.
`{"question": "q", "options": "choices", "answer": "label", "video": "path"}`.
Columns the mapping does not use are kept in `meta`, except those named in
`extra_columns = {name = "type"}`, which become flat columns of their own
(for data scored or categorised elsewhere). Options may be a list or
a JSON string of a list; an integer answer is read as a 0-based option index.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from avcurate.catalogs.base import (
    MediaRoot,
    Reject,
    UnsafePathError,
    answer_value,
    ident,
    load_records,
    per_record,
    stable_id,
    strip_letter,
    text,
    texts,
)
from avcurate.core.answers import normalise_answer
from avcurate.core.schema import sample_row

MAPPABLE = ("id", "video", "audio", "question", "options", "answer", "duration_s")


def _parquet_records(path: str) -> Iterator[dict]:
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def read_tabular(
    path: str, media: MediaRoot, *, source: str = "tabular", columns: dict[str, str] | None = None,
    extra_columns: dict[str, str] | None = None, **_: Any,
) -> Iterator[dict | Reject]:
    mapping = {k: k for k in MAPPABLE} | dict(columns or {})
    unknown = set(mapping) - set(MAPPABLE)
    if unknown:
        raise ValueError(f"cannot map {', '.join(sorted(unknown))}; mappable: {', '.join(MAPPABLE)}")
    records = _parquet_records(path) if Path(path).suffix == ".parquet" else load_records(path)
    extras = list(extra_columns or {})
    used = set(mapping.values()) | set(extras)

    def build(n: int, rec: dict) -> dict | Reject:
        row = _row(rec, n, media, source, mapping, used)
        if isinstance(row, dict):
            row |= {k: rec.get(k) for k in extras}
        return row

    return per_record(source, records, build)


def _row(rec: dict, n: int, media: MediaRoot, source: str, mapping: dict[str, str],
         used: set[str]) -> dict | Reject:
    get = {k: rec.get(v) for k, v in mapping.items()}
    raw_id = ident(get["id"], mapping["id"]) if get["id"] is not None else stable_id(n, rec)
    sid = f"{source}:{raw_id}"
    if not get["video"]:
        return Reject(source, sid, "malformed_annotation", f"no {mapping['video']!r} column", rec)
    options = get["options"]
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            return Reject(source, sid, "malformed_annotation", "options is not a JSON list", rec)
    options = [strip_letter(o) for o in texts(options, mapping["options"])] if options \
        is not None else None
    question = text(get["question"], mapping["question"], required=False)
    try:
        video = media.resolve(text(get["video"], mapping["video"]))
        audio = media.resolve(text(get["audio"], mapping["audio"])) if get["audio"] else None
    except UnsafePathError as exc:
        return Reject(source, sid, "unsafe_path", str(exc), rec)
    duration = get["duration_s"]
    answer = normalise_answer(answer_value(get["answer"], mapping["answer"]), options or [])
    return sample_row(
        id=sid, source=source, video=video, audio=audio,
        question=question, options=options or None, answer=answer,
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        meta={"source_id": raw_id, **{k: v for k, v in rec.items() if k not in used}},
    )
