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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.core.answers import LETTERS
from avcurate.core.schema import sample_row

PLACEHOLDER_RE = re.compile(r"<(image|video|audio)>\s*", re.IGNORECASE)
OPTION_RE = re.compile(r"^\s*\(?([A-Z])\s*[\.\):：]\s*(.*\S)?\s*$")


class UnsafePathError(ValueError):
    """A media path that points outside the media root."""


@dataclass(frozen=True)
class Reject:
    """A record a catalog could not turn into a sample, with the reason why."""

    source: str
    raw_id: str
    reason: str
    detail: str
    raw: Any

    def to_row(self) -> dict[str, Any]:
        raw = json.dumps(self.raw, ensure_ascii=False, default=str)
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
        candidate = (self.root / rel.strip()).resolve()
        if not candidate.is_relative_to(self.root):
            raise UnsafePathError(f"{rel!r} resolves outside the media root {self.root}")
        return str(candidate)


def stable_id(*parts: Any) -> str:
    """A short content hash, for records that carry no id of their own."""
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def load_records(path: str | os.PathLike) -> Iterator[Any]:
    """Records of a JSON array file, a JSON object of records, or a JSON-lines file.

    A JSON-lines line that does not parse is yielded as a `_BadLine` so the
    caller can reject it instead of losing it.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        head = f.read(1 << 16).lstrip()
    if path.suffix == ".jsonl" or not head.startswith(("[", "{")) or _looks_like_jsonl(head):
        yield from _jsonl(path)
        return
    data = json.loads(path.read_text(encoding="utf-8"))
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
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadLine(n, line[:2000], str(exc))


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
