"""A person's labels, as `avcurate spotcheck`'s page saves them (CSV or JSON).

    id,video_dependency,audio_dependency,question_logic,answer_accuracy,decision,note
    llava-00017,8,3,10,10,keep,
    llava-00042,,,,,reject,the answer key is wrong

Scores are integers 0-10 (the judge's scale) or empty; decision is keep, reject or empty.
A row with neither a score nor a decision was not labelled and is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from avcurate.catalogs.csv_files import header_delimiter
from avcurate.curation.score import DIMENSIONS

from .sample import AuditError

FIELDS = ("id", *DIMENSIONS, "decision", "note")
DECISIONS = {"keep": True, "reject": False, "": None}


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each label record with where it is in the file ("item 3", or "line 7": where its
    first line is, which a note holding line breaks moves down)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AuditError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read labels file {path}: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AuditError(f"{path.name} is not valid JSON: {exc}") from None
        data = data.get("labels") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise AuditError(f"{path.name}: expected a list of label objects (or "
                             '{"labels": [...]})')
        return [(f"item {n}", record) for n, record in enumerate(data, start=1)]
    # a spreadsheet saves with its locale's separator (";" in much of Europe, or tabs); a
    # quoted note may hold line breaks, which only the csv module's own reading keeps whole
    reader = csv.DictReader(io.StringIO(text, newline=""),
                            delimiter=header_delimiter(text.split("\n", 1)[0]))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise AuditError(f"{path.name}: the first line must name the columns, with 'id' "
                         f"(expected {','.join(FIELDS)})")
    records, before = [], reader.line_num  # the header's last line
    for record in reader:
        records.append((f"line {before + 1}", record))
        before = reader.line_num
    return records


def _score(value: Any, where: str, column: str) -> float | None:
    """A 0-10 integer as stored (0-1), None when empty; anything else is a one-line error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if (isinstance(value, bool) or not math.isfinite(number) or number != int(number)
            or not 0 <= number <= 10):
        raise AuditError(f"{where}: {column} = {value!r} is not an integer from 0 to 10")
    return number / 10


def read_labels(path: Path, known: set[str]) -> dict[str, list]:
    """The labelled rows: id, each dimension in [0, 1] (or None), keep (True/False/None)."""
    out: dict[str, list] = {k: [] for k in ("id", *DIMENSIONS, "keep")}
    seen: set[str] = set()
    unknown = []
    for at, record in _records(path):
        where = f"{path.name} {at}"
        sid = str(record.get("id") or "").strip()
        if not sid:
            raise AuditError(f"{where}: no id")
        scores = {d: _score(record.get(d), where, d) for d in DIMENSIONS}
        raw = str(record.get("decision") or "").strip().lower()
        if raw not in DECISIONS:
            raise AuditError(f"{where}: decision = {raw!r}; write keep, reject or leave it empty")
        if all(v is None for v in scores.values()) and DECISIONS[raw] is None:
            continue  # not labelled
        if sid in seen:
            raise AuditError(f"{where}: id {sid!r} is labelled twice")
        if sid not in known:
            unknown.append(sid)
        seen.add(sid)
        out["id"].append(sid)
        for d, v in scores.items():
            out[d].append(v)
        out["keep"].append(DECISIONS[raw])
    if unknown:
        raise AuditError(f"{path.name}: {len(unknown)} id(s) are not rows this run scored "
                         f"(e.g. {', '.join(unknown[:3])}); is it the labels of another run?")
    if not out["id"]:
        raise AuditError(f"{path.name} has no labelled rows (no scores and no decisions)")
    return out


def person_scores(labels: dict[str, list], weights: list[float]) -> dict[str, list]:
    """The person's scores per dimension, plus a composite (the run's weights) where every
    dimension was scored."""
    scores = {d: labels[d] for d in DIMENSIONS}
    total = sum(weights)
    scores["composite_score"] = [
        None if any(scores[d][i] is None for d in DIMENSIONS)
        else round(sum(w / total * scores[d][i] for w, d in zip(weights, DIMENSIONS, strict=True)),
                   12)
        for i in range(len(labels["id"]))]
    return scores
