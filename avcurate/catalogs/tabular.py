"""Any JSON-lines, JSON, Parquet or CSV/TSV file, with a column mapping.

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
a list, or spread over several columns: `options = ["a0", "a1", "a2"]` (or
`"a0,a1,a2"`; empty cells are skipped).

An integer answer is read as a 0-based option index, a text answer as a letter or an
option's text. `answers` says it for the whole file instead: "index" (0-based, also
for digits in text), "index1" (1-based) or "text" (an integer is an option's text).

A CSV file's cells are all text (see `csv_files`), so "2" could be either; a CSV whose
answers are all whole numbers must say which with `answers`, checked before any row is
written, rather than have its labels guessed. Every column the mapping names must be
in the CSV's header.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from avcurate.catalogs.base import (
    FIELD_RE,
    Malformed,
    Reject,
    SourceFile,
    check_template,
    choices,
    fill,
    ident,
    per_record,
    positional,
    records_of,
    split_question_options,
    text,
    texts,
)
from avcurate.catalogs.csv_files import csv_header, csv_records
from avcurate.catalogs.embedded import summarised
from avcurate.core.answers import LETTERS
from avcurate.core.schema import arrow_type, sample_row

MAPPABLE = ("id", "video", "audio", "question", "options", "answer", "duration_s")
REQUIRED = ("video", "question", "answer")
ANSWERS = ("index", "index1", "text")


def check_answers(answers: Any) -> None:
    if answers is not None and answers not in ANSWERS:
        raise ValueError(f"answers must be {', '.join(ANSWERS)} (\"index\": the option's "
                         f"position from 0, \"index1\": from 1), not {answers!r}")


Mapping = dict[str, "str | list[str]"]  # `options` alone may name several columns


def check_columns(columns: Any) -> Mapping:
    """The mapping, checked before any record is read."""
    columns = dict(columns) if isinstance(columns, dict) else columns
    if isinstance(columns, dict) and isinstance(options := columns.get("options"), str) \
            and "," in options:
        columns["options"] = options.split(",")  # --column options=a0,a1,a2
    if isinstance(columns, dict) and isinstance(options := columns.get("options"), list):
        if not options or not all(isinstance(o, str) and o.strip() for o in options):
            raise ValueError("options must name one column, or a list of the columns "
                             "holding one option each, e.g. options = [\"a0\", \"a1\", \"a2\"]")
        columns["options"] = [o.strip() for o in options]
    if not isinstance(columns, dict) or not all(
            isinstance(v, str) or k == "options" for k, v in columns.items()):
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


def _names(mapping: Mapping) -> list[str]:
    """The plain field names a mapping reads (templates' fields are not counted)."""
    return [n for v in mapping.values() for n in (v if isinstance(v, list) else [v])
            if not FIELD_RE.search(n)]


def read_csv(src: SourceFile, columns: dict[str, Any] | None = None,
             extra_columns: dict[str, str] | None = None, explode: str | None = None,
             answers: str | None = None) -> Iterator[dict | Reject]:
    """A CSV (or, by its suffix, TSV) file, once `check_csv` has passed it."""
    check_csv(src.path, columns=columns, extra_columns=extra_columns, answers=answers,
              need_answers=src.need_answers)
    return read_tabular(src, columns, extra_columns, explode, answers,
                        records=csv_records(src.path))


def check_csv(path: str, columns: dict[str, Any] | None = None,
              extra_columns: dict[str, str] | None = None, answers: str | None = None,
              need_answers: bool = True, **_: Any) -> None:
    """Refuse, before the run folder is made, a mapping naming a column the header lacks
    (a misspelt column would reject every row) and whole-number answers with no
    `answers` to say what they count."""
    mapping = check_columns(dict(columns or {}))
    check_answers(answers)
    header = csv_header(path)
    given = {k: v for k, v in mapping.items()
             if k in (columns or {}) or k in _required(need_answers)}
    wanted = _names(given) + [n for k in ("video", "audio") if isinstance(given.get(k), str)
                              for n in FIELD_RE.findall(given[k])] + list(extra_columns or {})
    if missing := [n for n in dict.fromkeys(wanted) if n not in header]:
        raise ValueError(f"no column {', '.join(map(repr, missing))} in the header of "
                         f"{path} (it has {', '.join(header)}); map them with --column "
                         "SAMPLE_COLUMN=FILE_COLUMN or a source's columns = {...}")
    if twice := [n for n in dict.fromkeys(wanted) if header.count(n) > 1]:
        # a record keeps one cell per name, so one of the two columns would be dropped
        raise ValueError(f"the header of {path} names {', '.join(map(repr, twice))} more "
                         "than once: rename one of them, so that the mapping says which "
                         "column it means")
    has_options = isinstance(mapping["options"], list) or mapping["options"] in header
    if answers is None and has_options and _all_numbers(path, mapping["answer"]):
        raise ValueError(f"every answer in {path}'s {mapping['answer']!r} column is a "
                         "whole number: say whether it is the option's position from 0 "
                         "(--answers index, or answers = \"index\" in the recipe's source), "
                         "from 1 (index1), or the option's text (text)")


def _all_numbers(path: str, column: str) -> bool:
    """Whether every answer in the CSV is a whole number (one pass, stopping at the first
    that is not; a file of text answers costs a line or two)."""
    found = False
    for rec in csv_records(path):
        value = rec.get(column) if isinstance(rec, dict) else None
        if value is None:
            continue
        if not value.strip().isdigit():
            return False
        found = True
    return found


def read_tabular(src: SourceFile, columns: dict[str, Any] | None = None,
                 extra_columns: dict[str, str] | None = None, explode: str | None = None,
                 answers: str | None = None, records: Iterator[Any] | None = None
                 ) -> Iterator[dict | Reject]:
    mapping = check_columns(dict(columns or {}))
    check_answers(answers)
    extras = {name: arrow_type(kind) for name, kind in (extra_columns or {}).items()}
    used = set(_names(mapping)) | set(extras)
    cells = records is not None  # a CSV's: every value is text

    def build(n: int, rec: dict) -> list[dict | Reject]:
        out: list[dict | Reject] = []
        for item, sub in _explode(rec, explode):
            key = _key(rec if item is None else sub, n, mapping, item)
            try:
                row = _row(src, sub, key, mapping, used, cells, answers)
                row |= {k: _extra(sub.get(k), kind, k) for k, kind in extras.items()}
            except Malformed as exc:
                if item is None:
                    raise
                out.append(src.reject(key, "malformed_annotation", f"{item}: {exc}", sub))
                continue
            out.append(row)
        return out

    return per_record(src, records_of(src.path) if records is None else records, build,
                      lambda n, rec: _key(rec, n, mapping, None))


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


def _required(need_answers: bool) -> tuple[str, ...]:
    """The sample columns every record must have: a benchmark's answers may be withheld."""
    return REQUIRED if need_answers else tuple(c for c in REQUIRED if c != "answer")


def _field(rec: dict, mapping: Mapping, column: str, required: tuple[str, ...] = REQUIRED
           ) -> Any:
    name = mapping[column]
    if isinstance(name, list):  # options spread over columns, one each; empty ones skipped
        if not any(n in rec for n in name):
            raise Malformed(f"none of the option fields {', '.join(name)}")
        return [rec[n] for n in name if rec.get(n) not in (None, "")]
    if column in ("video", "audio") and FIELD_RE.search(name):
        return fill(name, rec, column)
    if name not in rec:
        if column in required:
            raise Malformed(f"no {name!r} field (mapped to {column})")
        return None
    return rec[name]


def _row(src: SourceFile, rec: dict, key: str, mapping: Mapping,
         used: set[str], cells: bool = False, answers: str | None = None) -> dict:
    required = _required(src.need_answers)
    get = {k: _field(rec, mapping, k, required) for k in MAPPABLE}
    options = get["options"]
    if isinstance(options, str):
        options = _options_text(options, str(mapping["options"]))
    if isinstance(options, dict):
        options = _lettered_options(options, str(mapping["options"]))
    options = choices(options, str(mapping["options"])) if options is not None else None
    duration = _number(get["duration_s"]) if cells else get["duration_s"]
    return sample_row(
        id=src.sid(key), source=src.source,
        video=src.media_file(get["video"], mapping["video"]),
        audio=src.media_file(get["audio"], mapping["audio"], required=False),
        question=text(get["question"], mapping["question"]), options=options or None,
        answer=src.answer(get["answer"], str(mapping["answer"]), options,
                          lambda a: _answer(a, answers)),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        meta={"source_id": key, **{k: summarised(v) for k, v in rec.items() if k not in used}},
    )


def _lettered_options(value: dict, field: str) -> list[Any]:
    """Options keyed by their letters (`{"A": "red", "B": "blue"}`), in letter order; the
    keys must be A, B, ... with none missing (any other object is not a list of options).
    An empty one is no option: a Parquet struct column has every row's letters, null
    where a row has fewer options."""
    given = {str(k).strip().strip("()").strip(".").upper(): v for k, v in value.items()
             if v not in (None, "")}
    if sorted(given) != list(LETTERS[:len(given)]):
        raise Malformed(f"{field} is an object whose keys are not the letters A, B, ...: "
                        f"{list(value)[:6]}")
    return [given[k] for k in LETTERS[:len(given)]]


def _options_text(value: str, field: str) -> list[Any]:
    """Options held in one text cell: a JSON list (`["red", "blue"]`), a Python list as
    pandas' `to_csv` writes one (`['red', 'blue']`), one lettered line per option
    (`A. red` / `B. blue`), one option per line, or options between bars (`red | blue`),
    as spreadsheets are filled by hand."""
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(value)
    if value.lstrip().startswith("["):
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            found = ast.literal_eval(value)  # literals only: never runs code
            if isinstance(found, list | tuple):
                return list(found)
    question, options, rest = split_question_options(value)
    if options and not question and not rest:
        return options
    for separator in ("\n", "|"):  # a line or a bar between options, never inside one
        parts = [p.strip() for p in value.strip().split(separator)]
        if len(parts) >= 2 and all(parts):
            return parts
    raise Malformed(f"{field} is not a list: a JSON list, a Python list (['a', 'b']), one "
                    "lettered line per option (A. a / B. b), one option per line, or "
                    "options between bars (a | b)")


def _answer(answer: str | int, answers: str | None) -> str | int:
    """The answer as the file's `answers` setting reads it (None: by its type)."""
    if answers is None:
        return answer
    if answers == "text":
        return str(answer)
    if isinstance(answer, str):
        if not answer.strip().isdigit():
            raise Malformed(f"answer {answer!r} is not an option's position (answers = "
                            f"{answers!r})")
        answer = int(answer)
    return answer - (answers == "index1")


def _number(value: Any) -> float | None:
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return None


BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _extra(value: Any, kind: pa.DataType, name: str) -> Any:
    """An `extra_columns` value as its declared type, from a JSON value or a CSV cell's
    text. One that is not of it rejects its record (Malformed), where the shard's write
    would have stopped the whole ingest."""
    if value is None:
        return None
    try:
        if pa.types.is_string(kind):
            return text(value, name, numbers=True)
        if pa.types.is_list(kind):
            return texts(json.loads(value) if isinstance(value, str) else value, name)
        if isinstance(value, bool):
            if pa.types.is_boolean(kind):
                return value
        elif pa.types.is_boolean(kind):
            return BOOLS[str(value).strip().lower()]
        elif pa.types.is_floating(kind):
            return float(value)
        elif isinstance(value, float) and value.is_integer() or isinstance(value, int | str):
            return int(value)
    except (ValueError, TypeError, KeyError):
        pass
    raise Malformed(f"{name} must be {kind}, not {type(value).__name__} {str(value)[:40]!r}")
