"""Shared pieces of the source catalogs: safe media paths, records, option parsing.

A catalog turns one annotation format into rows of the sample table. It yields
either a row (dict) or a `Reject` for a record it cannot make sense of, so the
ingest stage can account for every record it read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.core.answers import LETTERS
from avcurate.core.schema import sample_row

PLACEHOLDER_RE = re.compile(r"<(image|video|audio)>\s*", re.IGNORECASE)
OPTION_RE = re.compile(r"^\s*\(?([A-Z])\s*[\.\):：]\s*(.*\S)?\s*$")


class UnsafePathError(ValueError):
    """A media path that points outside the media root."""


class Malformed(ValueError):
    """A record field that is missing, of the wrong type, or holds bytes that cannot be
    stored (NUL, not UTF-8): the record becomes one `malformed_annotation` reject."""


def text(value: Any, field: str, *, required: bool = True, numbers: bool = False) -> str | None:
    """A string field, checked: no silent `str()` of dicts, lists or nulls."""
    if value is None:
        if required:
            raise Malformed(f"{field} is missing (null)")
        return None
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Malformed(f"{field} must be text, not {type(value).__name__} {_short(value)}")
    if "\x00" in value:
        raise Malformed(f"{field} contains a NUL byte")
    if _SURROGATE.search(value):
        raise Malformed(f"{field} holds bytes that are not UTF-8")
    return value


def texts(value: Any, field: str) -> list[str]:
    """A list of strings (numbers allowed, as option texts may be numbers)."""
    if not isinstance(value, list):
        raise Malformed(f"{field} must be a list, not {type(value).__name__}")
    return [text(v, f"{field}[{i}]", numbers=True) for i, v in enumerate(value)]


def answer_value(value: Any, field: str) -> str | int | None:
    """An answer as annotated: text, an option index, or missing (validate rejects that)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return text(value, field, required=False)


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
        raw = json.dumps(self.raw, ensure_ascii=True, default=str)  # safe for any bytes
        row = sample_row(id=self.raw_id, source=self.source, video=None, question=None,
                         meta={"raw": raw[:20000]})
        row |= {"reject_stage": "ingest", "reject_reason": self.reason,
                "reject_detail": self.detail}
        return row


class MediaRoot:
    """Resolves annotation media paths under one root, refusing any that escape it.

    `..`, absolute paths elsewhere and symlinks pointing outside the root are
    all caught because the *resolved* path must stay under the resolved root.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()

    def resolve(self, rel: str) -> str:
        if not isinstance(rel, str) or not rel.strip():
            raise UnsafePathError("empty media path")
        rel = text(rel, "media path").strip()
        nfc = unicodedata.normalize("NFC", rel)
        if nfc != rel and ((self.root / nfc).exists() or not (self.root / rel).exists()):
            rel = nfc  # one spelling per file; the as-written one only when only it exists
        candidate = (self.root / rel).resolve()
        if not candidate.is_relative_to(self.root):
            raise UnsafePathError(f"{rel!r} resolves outside the media root {self.root}")
        return str(candidate)


def stable_id(*parts: Any) -> str:
    """A short content hash, for records that carry no id of their own."""
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def load_records(path: str | os.PathLike) -> Iterator[Any]:
    """Records of a JSON array file, a JSON object of records, or a JSON-lines file.

    A JSON-lines line that does not parse is yielded as a `BadLine` so the caller can
    reject it instead of losing it. Bytes that are not UTF-8 are kept as surrogates
    (`surrogateescape`), so only the record holding them is rejected, by `text()`.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8", errors="surrogateescape") as f:
        head = f.read(1 << 16).lstrip()
    if path.suffix == ".jsonl" or not head.startswith(("[", "{")) or _looks_like_jsonl(head):
        yield from _jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict):
        data = data.get("data", list(data.values()))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records")
    yield from data


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
    with path.open("r", encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if _SURROGATE.search(line):
                yield BadLine(n, line[:2000].encode("utf-8", "replace").decode(),
                              "holds bytes that are not UTF-8")
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadLine(n, line[:2000], f"is not JSON: {exc}")


def strip_placeholders(text: str) -> str:
    return PLACEHOLDER_RE.sub("", text).strip()


def strip_letter(option: str) -> str:
    """'A. red' / '(A) red' / 'A) red' -> 'red'."""
    m = OPTION_RE.match(option)
    return (m.group(2) or "").strip() if m else option.strip()


def split_question_options(text: str) -> tuple[str, list[str], str]:
    """Split a prompt into (question, option texts, trailing instruction).

    Options are lines 'A. …', 'B. …' (also '(A) …', 'A) …') with consecutive
    letters starting at A; at least two are needed to count as a multiple-choice
    question. Anything after the options (e.g. "Answer with the option's
    letter") is the instruction.
    """
    lines = text.splitlines()
    for start, line in enumerate(lines):
        m = OPTION_RE.match(line)
        if not m or m.group(1) != "A":
            continue
        options, end = [], start
        while end < len(lines):
            m = OPTION_RE.match(lines[end])
            if not m or m.group(1) != LETTERS[len(options)]:
                break
            options.append((m.group(2) or "").strip())
            end += 1
        if len(options) >= 2:
            question_lines = [ln for ln in lines[:start] if ln.strip().rstrip(":").lower()
                              not in ("options", "choices")]
            return "\n".join(question_lines).strip(), options, "\n".join(lines[end:]).strip()
    return text.strip(), [], ""


def per_record(source: str, records: Iterator[Any],
               build: Callable[[int, dict], dict | Reject | list[dict | Reject]]
               ) -> Iterator[dict | Reject]:
    """Rows of every record; a line that is not JSON, a record that is not an object, or a
    `Malformed` field becomes one reject naming the line, record or field."""
    for n, rec in enumerate(records):
        if isinstance(rec, BadLine):
            yield Reject(source, f"{source}:line-{rec.line_no}", "malformed_annotation",
                         f"line {rec.line_no} {rec.error}", rec.text)
            continue
        if not isinstance(rec, dict):
            yield Reject(source, f"{source}:record-{n}", "malformed_annotation",
                         f"record {n} is not a JSON object", rec)
            continue
        try:
            out = build(n, rec)
        except Malformed as exc:
            yield Reject(source, f"{source}:record-{n}", "malformed_annotation",
                         f"record {n}: {exc}", rec)
            continue
        yield from (out if isinstance(out, list) else [out])
