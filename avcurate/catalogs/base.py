"""Shared pieces of the source catalogs: safe media paths, records, option parsing.

A catalog turns one annotation format into rows of the sample table. It yields
either a row (dict) or a `Reject` for a record it cannot make sense of, so the
ingest stage can account for every record it read.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from avcurate.catalogs.embedded import EmbeddedMedia, batch_rows, is_media_struct, summarised
from avcurate.core.answers import LETTERS, letterable, normalise_answer
from avcurate.core.schema import sample_row
from avcurate.core.urls import file_uri_path

PLACEHOLDER_RE = re.compile(r"<(image|video|audio)>\s*", re.IGNORECASE)
OPTION_RE = re.compile(r"^\s*\(?([A-Z])\s*[\.\):：]\s*(.*\S)?\s*$")
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # http://, https://, s3://, gs://


class UnsafePathError(ValueError):
    """A media path that points outside the media root."""


NOT_UTF8 = ("holds bytes that are not UTF-8 (a file saved as Latin-1 or Windows-1252? "
            "`iconv -f cp1252 -t utf-8` converts it)")


class Malformed(ValueError):
    """A record field that is missing, of the wrong type, or holds bytes that cannot be
    stored (NUL, not UTF-8): the record becomes one `malformed_annotation` reject."""


def text(value: Any, field: str, *, required: bool = True, numbers: bool = False) -> str | None:
    """A string field, checked: no silent `str()` of dicts, lists or nulls. A NaN (what
    pandas writes for an empty cell, and `json.dumps` passes on) is a null, not "nan"."""
    if value is None or _nan(value):
        if required:
            raise Malformed(f"{field} is missing ({'NaN' if value is not None else 'null'})")
        return None
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Malformed(f"{field} must be text, not {type(value).__name__} {_short(value)}")
    if "\x00" in value:
        raise Malformed(f"{field} contains a NUL byte")
    if not value.isascii() and _SURROGATE.search(value):  # ASCII holds no surrogates
        raise Malformed(f"{field} {NOT_UTF8}")
    return value


def texts(value: Any, field: str) -> list[str]:
    """A list of strings (numbers allowed, as option texts may be numbers). Nulls at its
    end are no option, as a fixed number of option slots leaves them for a question with
    fewer options; a null between two options, or only nulls, is a record error."""
    if not isinstance(value, list):
        raise Malformed(f"{field} must be a list, not {type(value).__name__}")
    end = len(value)
    while end and (value[end - 1] is None or _nan(value[end - 1])):
        end -= 1
    end = end or len(value)  # nothing but nulls: named as the record error it is
    return [text(v, f"{field}[{i}]", numbers=True) for i, v in enumerate(value[:end])]


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def answer_value(value: Any, field: str) -> str | int:
    """An answer as annotated: text or an option index, or a list of one of them (as
    datasets with several reference answers store one). A null answer is malformed, and so
    is a list of several: a question here has one answer."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise Malformed(f"{field} is a list of {len(value)} answers; a question here has "
                            "exactly one")
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return text(value, field)


def need(rec: dict, *fields: str) -> None:
    """Refuse a record that lacks any of `fields` (one reject naming them all)."""
    missing = [f for f in fields if f not in rec]
    if missing:
        raise Malformed(f"missing field(s) {', '.join(repr(f) for f in missing)}")


FIELD_RE = re.compile(r"\{([^{}]*)\}")


def fill(template: str, rec: dict, what: str) -> str:
    """A media path from a template such as `merged/{category}/{video_name}`.

    Only plain `{field}` names are replaced (no attribute or index access, unlike
    `str.format`, so a template cannot reach into Python objects).
    """
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in rec:
            raise Malformed(f"{what} path {template!r} needs the field {name!r}")
        return text(rec[name], name, numbers=True)

    return FIELD_RE.sub(sub, template)


def check_template(template: Any, what: str) -> None:
    """A user's path template, checked once before any record is read."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"{what} must be a path template such as \"{{id}}.mp4\"")
    bad = [n for n in FIELD_RE.findall(template) if not re.fullmatch(r"[\w\- ]+", n)]
    if bad or template.count("{") != template.count("}"):
        raise ValueError(f"{what} {template!r}: write fields as {{name}} (plain names only)")


def ident(value: Any, field: str) -> str:
    """A record's own id (text or number), NFC-normalised so one spelling is one id."""
    return unicodedata.normalize("NFC", text(value, field, numbers=True))


def _short(value: Any) -> str:
    return repr(value)[:60]


_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Reject:
    """A record a catalog could not turn into a sample, with the reason why."""

    source: str
    raw_id: str
    reason: str
    detail: str
    raw: Any

    def to_row(self) -> dict[str, Any]:
        record = {k: summarised(v) for k, v in self.raw.items()} \
            if isinstance(self.raw, dict) else self.raw  # a clip's bytes: their size
        raw = json.dumps(record, ensure_ascii=True, default=str)  # safe for any bytes
        row = sample_row(id=self.raw_id, source=self.source, video=None, question=None,
                         meta={"raw": raw[:20000]})
        row |= {"reject_stage": "ingest", "reject_reason": self.reason,
                "reject_detail": self.detail}
        return row


class MediaRoot:
    """Resolves annotation media paths under one root, refusing any that escape it.

    `..`, absolute paths elsewhere and symlinks pointing outside the root are
    all caught because the *resolved* path must stay under the resolved root: a dataset
    archive's link to ~/.ssh would otherwise be sent to a model, or copied into an export.

    Two kinds of links leave it with leave: a Hugging Face cache snapshot's files, which
    link to the repo's `blobs/` beside `snapshots/` (found by that layout), and, with
    `follow_links` (the user's word that the links under the root are theirs), any link.
    The path written to the rows is then the link's own (`clip.mp4`, not `blobs/<hash>`),
    so its name and extension stay; the path itself may not leave the root (`..`).
    """

    def __init__(self, root: str | os.PathLike, strip_prefix: str | None = None,
                 follow_links: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.follow_links = follow_links
        self._blobs = _hub_blobs(self.root)
        # the folder the file's authors wrote before each path (`/mnt/data/videos/`), so
        # their paths resolve under this root; compared as written, separators aside
        self.strip_prefix = (strip_prefix.replace("\\", "/").rstrip("/") + "/"
                             if strip_prefix else None)
        self._inside = str(self.root).rstrip(os.sep) + os.sep
        # datasets ask many questions per clip: each distinct path is resolved once, and
        # each distinct folder once (a million clips in a few folders cost one lstat
        # each, not a walk of every component); bounded so neither grows without end
        self._resolve = functools.lru_cache(maxsize=1 << 17)(self._resolve_uncached)
        self._folder = functools.lru_cache(maxsize=1 << 14)(self._folder_uncached)

    def resolve(self, rel: str) -> str:
        if not isinstance(rel, str) or not rel.strip():
            raise UnsafePathError("empty media path")
        return self._resolve(rel)

    def _resolve_uncached(self, rel: str) -> str:
        rel = file_uri_path(text(rel, "media path").strip())
        if URL_RE.match(rel):  # was read as a folder "https:" under the root: missing_media
            raise UnsafePathError(f"{rel!r} is a URL; avcurate reads local files only: "
                                  "download the media and give its folder as the media root")
        if self.strip_prefix and rel.replace("\\", "/").startswith(self.strip_prefix):
            rel = rel[len(self.strip_prefix):]
        rel = self._spelling(self._separators(rel))
        head, name = os.path.split(rel)
        if name in ("", ".", ".."):
            candidate = os.path.realpath(os.path.join(self.root, rel))
        else:  # what Path.resolve gives, with the folder's symlinks resolved once per folder
            candidate = os.path.join(self._folder(head), name)
            if os.path.islink(candidate):
                candidate = os.path.realpath(candidate)
        if candidate == str(self.root) or candidate.startswith(self._inside):
            return candidate
        written = os.path.normpath(os.path.join(self.root, rel))  # the path, links unfollowed
        if written.startswith(self._inside):  # a link under the root leads out
            if self.follow_links or (self._blobs and candidate.startswith(self._blobs)):
                return written
            raise UnsafePathError(
                f"{rel!r} is a link to {candidate}, outside the media root {self.root}; if "
                "the links under it are yours, set the source's follow_links = true "
                "(--follow-links)")
        hint = ("; set the source's strip_prefix (--strip-prefix) to the folder its "
                "authors wrote before each path" if os.path.isabs(rel) else "")
        raise UnsafePathError(f"{rel!r} resolves outside the media root {self.root}{hint}")

    def _separators(self, rel: str) -> str:
        """`rel` with Windows separators as `/` when only that names a file: annotations
        written on Windows say `videos\\clip.mp4`, which here is one odd file name."""
        if "\\" not in rel or (self.root / rel).exists():
            return rel
        posix = rel.replace("\\", "/")
        return posix if (self.root / posix).exists() else rel

    def _spelling(self, rel: str) -> str:
        """The Unicode spelling of `rel` that names a file: NFC, unless only another form
        exists. Files unpacked from an archive made on a Mac are often named in NFD
        ("e" + combining accent; Hangul in jamo) while annotations written by Python are
        NFC: the as-written name was missing_media. Either spelling of one file resolves
        to the same path. ASCII paths (most) take no lookup."""
        if rel.isascii():
            return rel
        nfc, nfd = unicodedata.normalize("NFC", rel), unicodedata.normalize("NFD", rel)
        forms = list(dict.fromkeys([nfc, rel, nfd]))  # NFC first, then as written
        if len(forms) == 1:
            return rel
        return next((f for f in forms if (self.root / f).exists()), nfc)

    def _folder_uncached(self, head: str) -> str:
        return os.path.realpath(os.path.join(self.root, head))


    def first(self, candidates: list[str]) -> str:
        """The first candidate path that exists (datasets ship more than one layout);
        the first one when none does, so validate reports it as missing."""
        resolved = [self.resolve(c) for c in candidates]
        return next((p for p in resolved if Path(p).is_file()), resolved[0])


CSV_SUFFIXES = (".csv", ".tsv", ".tab")
ANNOTATION_SUFFIXES = (".json", ".jsonl", ".parquet", *CSV_SUFFIXES)


def file_tag(path: str | os.PathLike) -> str:
    """The part of a sample id naming its annotation file: the file name without its
    extension (`0_30_s_academic_mc_v0_1_qa_processed`, `train_qa`, `test-00000-of-00001`)."""
    name = Path(path).name
    for suffix in ANNOTATION_SUFFIXES:
        name = name.removesuffix(suffix)
    return unicodedata.normalize("NFC", name)


@dataclass(frozen=True)
class SourceFile:
    """One annotation file being read: its source name, path, media root and id tag.

    Sample ids are `<source>:<tag>/<key>[#<turn>]`: the key is the record's own id
    when the dataset gives one per question, else its position in the file (plus the
    clip id, for people reading ids); `#<turn>` numbers the questions of a multi-turn
    record. So two records of one clip, or the mc and oe files of one bucket, never
    collide, the same file always yields the same ids, and a true duplicate (same
    clip, question and options under two ids) is left for `dedup` to catch.
    """

    source: str
    path: str
    media: MediaRoot
    tag: str
    embedded: EmbeddedMedia | None = None  # where media held in the file are written out
    # False for a benchmark read to decontaminate against: test splits often withhold their
    # answers (EgoSchema, LongVideoBench, MLVU), and its clips and questions are what count
    need_answers: bool = True

    def media_file(self, value: Any, field: str, *, required: bool = True) -> str | None:
        """A media field as the path of a file: a path resolved under the media root, or a
        `datasets` media struct (`embedded.py`): its path when it has no bytes, else its
        bytes written out, when this read has somewhere to write them."""
        if is_media_struct(value):
            data, value = value.get("bytes"), value.get("path")
            if data is not None:
                if self.embedded is None:
                    raise Malformed(f"{field} holds the file's bytes (a datasets Video or Audio "
                                    "column), which are written out only by ingest")
                return self.embedded.write(bytes(data), value)
        path = text(value, field, required=required)
        return self.media.resolve(path) if path else None

    def answer_fields(self, *fields: str) -> tuple[str, ...]:
        """The answer fields a record must have (for `need`): none when answers may be
        withheld."""
        return fields if self.need_answers else ()

    def answer(self, value: Any, field: str, options: list[str] | None,
               read: Callable[[str | int], str | int] = lambda a: a) -> str | None:
        """A record's answer as `normalise_answer` gives it (`read`: how the file's
        `answers` setting reads the value first); None for a withheld one where that may
        be."""
        if not self.need_answers and (value is None or _nan(value) or value == ""):
            return None
        return normalise_answer(read(answer_value(value, field)), options or [])

    def sid(self, key: Any, turn: int | None = None) -> str:
        return f"{self.source}:{self.tag}/{key}" + ("" if turn is None else f"#{turn}")

    def reject(self, key: Any, reason: str, detail: str, rec: Any) -> Reject:
        return Reject(self.source, self.sid(key), reason, detail, rec)


def own_key(rec: dict, field: str, n: int) -> str:
    """The record's own per-question id in `field`, else its position in the file."""
    return ident(rec[field], field) if field in rec else positional(n)


_LETTERED = re.compile(r"^\s*\(?([A-Za-z])\s*(?:[.):：]|\)?\s+-)\s*(.*\S)?\s*$")


def choices(value: Any, field: str) -> list[str]:
    """Option texts, their letters removed ('A. red', '(b) blue', 'c) green', 'D - grey')
    when every option starts with its own letter in order: one option that only begins like
    one ('A.B.C. News', 'I. Robot' among plain texts) keeps its text whole."""
    options = texts(value, field)
    found = [_LETTERED.match(o) for o in options]
    if letterable(options) and all(m is not None and m[1].upper() == LETTERS[i]
                                   for i, m in enumerate(found)):
        return [(m[2] or "").strip() for m in found if m is not None]
    return [o.strip() for o in options]


def positional(n: int, clip: Any = None) -> str:
    """The key of a record with no per-question id: its position, then its clip id."""
    return f"{n}" if clip in (None, "") else f"{n}-{clip}"


BOM = b"\xef\xbb\xbf"
PARQUET = b"PAR1"
COMPRESSED = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "bzip2": b"BZh",
              "xz": b"\xfd7zXZ\x00", "zip": b"PK\x03\x04"}


def load_records(path: str | os.PathLike) -> list[Any] | Iterator[Any]:
    """Records of a JSON array file, a JSON object of records, or a JSON-lines file.

    A whole JSON file is parsed here and comes back as a list (which ingest can split
    across processes, see `RecordRows`); a JSON-lines file is read lazily, line by line.
    A JSON-lines line that does not parse is yielded as a `BadLine` so the caller can
    reject it instead of losing it. Bytes that are not UTF-8 are kept as surrogates
    (`surrogateescape`), so only the record holding them is rejected, by `text()`.
    """
    path = Path(path)
    check_text(path)
    if path.suffix.lower() in CSV_SUFFIXES:
        raise ValueError(f"{path} is a CSV file, which this format does not read: use "
                         "--source csv (a [[sources]] name = \"csv\"), with --column to map "
                         "its columns")
    # utf-8-sig: a byte-order mark (as Windows tools write one) is dropped, not a record error
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape") as f:
        head = f.read(1 << 16).lstrip()
    if path.suffix == ".jsonl" or not head.startswith(("[", "{")) or _looks_like_jsonl(head):
        return _jsonl(path)
    data = _parse(path)
    if isinstance(data, dict):
        data = _wrapped(data) or _keyed(data)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records")
    return data


def check_text(path: Path) -> None:
    """Raise ValueError naming what the file is when it is not UTF-8 text: compressed,
    UTF-16 (as some Windows tools save), Parquet without its suffix, or other binary
    data (a video given as the annotation file); otherwise every line would be rejected
    as malformed JSON, which says nothing of the cause."""
    with path.open("rb") as f:
        start = f.read(4096)
    for kind, prefix in COMPRESSED.items():
        if start.startswith(prefix):
            raise ValueError(f"{path} is {kind}-compressed; decompress it first (annotation "
                             "files are read as plain JSON, JSON lines, CSV or Parquet)")
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path} is UTF-16 text; save it as UTF-8")
    if start.startswith(PARQUET):
        raise ValueError(f"{path} is a Parquet file: this format is read from JSON (your own "
                         "Parquet: --source parquet, with --column where names differ)")
    if b"\x00" in start and not _utf8(start):  # NULs in UTF-8 text: a damaged line, rejected
        raise ValueError(f"{path} is a binary file, not JSON, JSON lines, CSV or Parquet (a media "
                         "file given as the annotations?)")


def _utf8(data: bytes) -> bool:
    """`data` is UTF-8, but for a character cut off at its end."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3
    return True


def _parse(path: Path) -> Any:
    """A whole JSON file. orjson parses it (1.2 s against 1.6 s for `json` on 1M LLaVA
    records, with the garbage collector paused as ingest runs it); a file orjson refuses
    (bytes that are not UTF-8, NaN, integers over 64 bits, lone surrogate escapes) goes
    through `json` as before, which keeps bad bytes as surrogates for `text()` to reject
    and names the line of a syntax error."""
    raw = path.read_bytes()
    try:
        return orjson.loads(memoryview(raw)[len(BOM):] if raw.startswith(BOM) else raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw.decode("utf-8-sig", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(_json_error(path, exc)) from None


def _json_error(path: Path, exc: json.JSONDecodeError) -> str:
    """Where the JSON breaks; for a file that stops before its JSON does, that it is cut
    short: annotation files of hundreds of MB often are (an interrupted download or copy),
    and "line 61: Expecting value" does not say so. `json` names an unterminated string
    only when the text ends inside it."""
    if not exc.doc[exc.pos:].strip() or exc.msg.startswith("Unterminated string"):
        return (f"{path} is not valid JSON: it ends at line {exc.lineno} before its JSON "
                "does (cut short by an interrupted download or copy?)")
    return f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"


def _wrapped(data: dict) -> list | None:
    """The records of a file that wraps them in an object: its `data` list, else its one
    list of objects beside other fields (`{"version": "1.0", "annotations": [...]}`,
    `{"info": {...}, "questions": [...]}`); None when it is not so wrapped."""
    if isinstance(data.get("data"), list):
        return data["data"]
    lists = [v for v in data.values() if isinstance(v, list) and v
             and all(isinstance(r, dict) for r in v)]
    return lists[0] if len(lists) == 1 else None


def _keyed(data: dict) -> list:
    """Records of a JSON object keyed by id (WorldSense's `{video_id: {...}}`): each record
    gets its key as `_key`, so catalogs and path templates (`{_key}.mp4`) can use it."""
    return [v | {"_key": k} if isinstance(v, dict) and "_key" not in v else v
            for k, v in data.items()]


@dataclass(frozen=True)
class BadLine:
    line_no: int
    text: str
    error: str


def _looks_like_jsonl(head: str) -> bool:
    first = head.split("\n", 1)[0].strip()
    if not first.startswith("{"):
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return "\n" in head.strip()


def _jsonl(path: Path) -> Iterator[Any]:
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if _SURROGATE.search(line):
                yield BadLine(n, line[:2000].encode("utf-8", "replace").decode(), NOT_UTF8)
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadLine(n, line[:2000], f"is not JSON: {exc}")


def _hub_blobs(root: Path) -> str | None:
    """The `blobs/` folder of the Hugging Face cache repo whose snapshot holds `root`
    (`.../datasets--org--name/snapshots/<rev>/...`), where the snapshot's files link to."""
    for folder in (root, *root.parents):
        if folder.name == "snapshots" and (folder.parent / "blobs").is_dir():
            return str(folder.parent / "blobs") + os.sep
    return None


def strip_placeholders(text: str) -> str:
    return PLACEHOLDER_RE.sub("", text).strip()


def split_question_options(text: str) -> tuple[str, list[str], str]:
    """Split a prompt into (question, option texts, trailing instruction).

    Options are lines 'A. …', 'B. …' (also '(A) …', 'A) …') with consecutive
    letters starting at A; at least two are needed to count as a multiple-choice
    question. Anything after the options (e.g. "Answer with the option's
    letter") is the instruction.
    """
    lines = text.splitlines()
    found = list(map(OPTION_RE.match, lines))  # each line matched once
    for start, m in enumerate(found):
        if m is None or m[1] != "A":
            continue
        options: list[str] = []
        for m in found[start:]:
            if m is None or len(options) == len(LETTERS) or m[1] != LETTERS[len(options)]:
                break
            options.append(m[2] or "")  # the pattern leaves no space around the text
        if len(options) >= 2:
            end = start + len(options)
            question_lines = [ln for ln in lines[:start] if ln.strip().rstrip(":").lower()
                              not in ("options", "choices")]
            return "\n".join(question_lines).strip(), options, "\n".join(lines[end:]).strip()
    return text.strip(), [], ""


Build = Callable[[int, dict], "dict | Reject | list[dict | Reject]"]
RecordKey = Callable[[int, dict], str]


def per_record(src: SourceFile, records: Iterable[Any], build: Build,
               key: RecordKey | None = None) -> RecordRows:
    """Rows of every record; a line that is not JSON, a record that is not an object, or a
    `Malformed` field becomes one reject naming the line, record or field. `key(n, record)`
    is the catalog's id key of a record (its own id), which a rejected record's id uses
    too; without it, or when the record has none, a reject is keyed by its position."""
    return RecordRows(src, records, build, key)


class RecordRows:
    """A catalog's output: `build(n, record)` for every record, in order, as an iterator
    of rows and `Reject`s.

    When the records are a list (a whole JSON file, parsed once), `items(start, stop)`
    gives the rows of any range of them with the same record numbers, so ingest can
    hand ranges to forked worker processes that share the parsed list
    (`pipeline.ingest_pieces`) and still write exactly the shards one process writes.
    """

    def __init__(self, src: SourceFile, records: Iterable[Any], build: Build,
                 key: RecordKey | None = None) -> None:
        self.src, self.records, self.build, self.key = src, records, build, key
        self._iter: Iterator[dict | Reject] | None = None

    def __iter__(self) -> RecordRows:
        return self

    def __next__(self) -> dict | Reject:
        if self._iter is None:
            self._iter = self._rows(enumerate(self.records))
        return next(self._iter)

    def splittable(self) -> list[Any] | None:
        """The records as a list when they can be taken in ranges, else None."""
        return self.records if isinstance(self.records, list) and self._iter is None else None

    def items(self, start: int, stop: int) -> Iterator[dict | Reject]:
        """The rows and rejects of records `start` to `stop` (a list's positions)."""
        return self._rows(zip(range(start, stop), self.records[start:stop], strict=True))

    def _rows(self, numbered: Iterable[tuple[int, Any]]) -> Iterator[dict | Reject]:
        src, build = self.src, self.build
        for n, rec in numbered:
            if isinstance(rec, BadLine):
                yield src.reject(f"line-{rec.line_no}", "malformed_annotation",
                                 f"line {rec.line_no} {rec.error}", rec.text)
                continue
            if not isinstance(rec, dict):
                yield src.reject(n, "malformed_annotation", f"record {n} is not a JSON object",
                                 rec)
                continue
            try:
                out = build(n, rec)
            except Malformed as exc:
                yield src.reject(self._key(n, rec), "malformed_annotation", f"record {n}: {exc}",
                                 rec)
                continue
            except UnsafePathError as exc:
                yield src.reject(self._key(n, rec), "unsafe_path", f"record {n}: {exc}", rec)
                continue
            yield from (out if isinstance(out, list) else [out])

    def _key(self, n: int, rec: dict) -> str:
        """A rejected record's id key: the one a good record gets from its own id field, so
        the reject names the record the file's own way and never takes the id of another
        record whose own id is this one's position ("3" rejected as "2", beside a kept "2");
        `record-N` when its id field cannot be read (a position could be another record's
        own id), as a line that is not JSON is `line-N`; its position in a format whose
        records have no own id."""
        if self.key is None:
            return positional(n)
        try:
            return self.key(n, rec)
        except Malformed:
            return f"record-{n}"


def records_of(path: str | os.PathLike) -> list[Any] | Iterator[Any]:
    """Records of a Parquet file (read in batches) or of a JSON / JSON-lines file."""
    if Path(path).suffix == ".parquet" or _starts_with(path, PARQUET):
        return _parquet_records(path)
    return load_records(path)


def _starts_with(path: str | os.PathLike, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _parquet_records(path: str | os.PathLike) -> Iterator[Any]:
    """Records in batches (`embedded.batch_rows`: fewer rows when rows hold clips)."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    for batch in file.iter_batches(batch_size=batch_rows(file.metadata)):
        yield from batch.to_pylist()
