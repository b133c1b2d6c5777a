"""Any JSON-lines, JSON or Parquet file, with a column mapping.

`columns` maps sample-table columns to the file's own column names, e.g.
`{question = "q", options = "choices", answer = "label", video = "path"}`. A `video`
or `audio` value with `{...}` in it is a path template filled from the record:
`video = "{videoID}.mp4"`, `video = "merged/{category}/{video_name}"`.

`explode` reaches questions nested in a record: a field holding a list or an
object of question records (`explode = "questions"`), or a key pattern
(`explode = "task*"` for `task0`, `task1`, ...). Each nested record's fields sit
over its parent's, so a template can use both; `_item` is its index or key.
A JSON object keyed by id gives each record its key as `_key`.

Columns the mapping does not use are kept in `meta`, except those named in
`extra_columns = {name = "type"}`, which become flat columns of their own (for
data scored or categorised elsewhere). Options may be a list or a JSON string of
a list; an integer answer is read as a 0-based option index.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from typing import Any

from avcurate.catalogs.base import (
    FIELD_RE,
    Malformed,
    Reject,
    SourceFile,
    answer_value,
    check_template,
    choices,
    fill,
    ident,
    per_record,
    positional,
    records_of,
    text,
)
from avcurate.core.answers import normalise_answer
from avcurate.core.schema import sample_row

MAPPABLE = ("id", "video", "audio", "question", "options", "answer", "duration_s")
REQUIRED = ("video", "question", "answer")


def check_columns(columns: Any) -> dict[str, str]:
    """The mapping, checked before any record is read."""
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise ValueError("columns must map sample columns to field names, e.g. "
                         "columns = {question = \"q\", video = \"{videoID}.mp4\"}")
    unknown = set(columns) - set(MAPPABLE)
    if unknown:
        raise ValueError(f"cannot map {', '.join(sorted(unknown))}; mappable: "
                         f"{', '.join(MAPPABLE)}")
    for media in ("video", "audio"):
        if media in columns and "{" in columns[media]:
            check_template(columns[media], f"columns.{media}")
    return {k: k for k in MAPPABLE} | columns


def read_tabular(src: SourceFile, columns: dict[str, str] | None = None,
                 extra_columns: dict[str, str] | None = None, explode: str | None = None
                 ) -> Iterator[dict | Reject]:
    mapping = check_columns(dict(columns or {}))
    extras = list(extra_columns or {})
    used = {v for v in mapping.values() if not FIELD_RE.search(v)} | set(extras)

    def build(n: int, rec: dict) -> list[dict | Reject]:
        out: list[dict | Reject] = []
        for item, sub in _explode(rec, explode):
            key = _key(rec if item is None else sub, n, mapping, item)
            try:
                row = _row(src, sub, key, mapping, used)
            except Malformed as exc:
                if item is None:
                    raise
                out.append(src.reject(key, "malformed_annotation", f"{item}: {exc}", sub))
                continue
            out.append(row | {k: sub.get(k) for k in extras})
        return out

    return per_record(src, records_of(src.path), build)


def _explode(rec: dict, explode: str | None) -> list[tuple[str | None, dict]]:
    """(item name, record) pairs: the record itself, or each nested question over it."""
    if not explode:
        return [(None, rec)]
    if any(c in explode for c in "*?["):
        items = [(k, rec[k]) for k in rec if fnmatch.fnmatchcase(k, explode)]
    elif explode not in rec:
        raise Malformed(f"no {explode!r} field to explode")
    else:
        nested = rec[explode]
        if isinstance(nested, dict):
            items = list(nested.items())
        elif isinstance(nested, list):
            items = [(str(i), v) for i, v in enumerate(nested)]
        else:
            raise Malformed(f"{explode} must be a list or an object of questions")
    if not items:
        raise Malformed(f"no nested questions match {explode!r}")
    base = {k: v for k, v in rec.items() if k != explode and not
            fnmatch.fnmatchcase(k, explode)}
    out = []
    for name, value in items:
        if not isinstance(value, dict):
            raise Malformed(f"{name} is not an object")
        out.append((str(name), base | value | {"_item": name}))
    return out


def _key(rec: dict, n: int, mapping: dict[str, str], item: str | None) -> str:
    own = rec.get(mapping["id"])
    key = ident(own, mapping["id"]) if own is not None else positional(n, rec.get("_key"))
    return key if item is None or own is not None else f"{key}/{item}"


def _field(rec: dict, mapping: dict[str, str], column: str) -> Any:
    name = mapping[column]
    if column in ("video", "audio") and FIELD_RE.search(name):
        return fill(name, rec, column)
    if name not in rec:
        if column in REQUIRED:
            raise Malformed(f"no {name!r} field (mapped to {column})")
        return None
    return rec[name]


def _row(src: SourceFile, rec: dict, key: str, mapping: dict[str, str],
         used: set[str]) -> dict:
    get = {k: _field(rec, mapping, k) for k in MAPPABLE}
    options = get["options"]
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise Malformed(f"{mapping['options']} is not a JSON list") from None
    options = choices(options, mapping["options"]) if options is not None else None
    audio = text(get["audio"], mapping["audio"], required=False)
    duration = get["duration_s"]
    return sample_row(
        id=src.sid(key), source=src.source,
        video=src.media.resolve(text(get["video"], mapping["video"])),
        audio=src.media.resolve(audio) if audio else None,
        question=text(get["question"], mapping["question"]), options=options or None,
        answer=normalise_answer(answer_value(get["answer"], mapping["answer"]), options or []),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        meta={"source_id": key, **{k: v for k, v in rec.items() if k not in used}},
    )
