"""MUSIC-AVQA: `avqa-train.json` / `avqa-val.json` / `avqa-test.json`.

Records are {"video_id": "00000272", "question_id": 17, "type": "[\"Audio\", \"Counting\"]",
"question_content": "Is the <Object> in the video always playing?", "templ_values":
"[\"cello\"]", "question_deleted": 0, "anser": "yes"} (the answer field really is
spelled `anser`). Placeholders (`<Object>`, `<LR>`, `<FL>`, ...) are filled in order
from `templ_values`, a list written as a JSON or Python literal string. Answers
come from a small vocabulary (yes/no, counts as words, left/right, instrument
names) and are kept as open-ended answers. Videos are `<video_id>.mp4`, in the
media root or its `MUSIC-AVQA-videos-Real` / `MUSIC-AVQA-videos-Synthetic` folders.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from typing import Any

from avcurate.catalogs.base import (
    Malformed,
    Reject,
    SourceFile,
    ident,
    load_records,
    need,
    own_key,
    per_record,
    text,
    texts,
)
from avcurate.core.schema import sample_row

PLACEHOLDER = re.compile(r"<[A-Za-z_]+>")
FOLDERS = ("", "MUSIC-AVQA-videos-Real/", "MUSIC-AVQA-videos-Synthetic/")


def read_music_avqa(src: SourceFile) -> Iterator[dict | Reject]:
    def build(n: int, rec: dict) -> dict | Reject:
        need(rec, "video_id", "question_content", "anser")
        key = own_key(rec, "question_id", n)
        if rec.get("question_deleted") in (1, "1", True):
            return src.reject(key, "excluded_by_source",
                              "marked question_deleted = 1 in the annotation file", rec)
        vid = ident(rec["video_id"], "video_id")
        template = text(rec["question_content"], "question_content")
        return sample_row(
            id=src.sid(key), source=src.source,
            video=src.media.first([f"{folder}{vid}.mp4" for folder in FOLDERS]),
            question=fill_placeholders(template, rec.get("templ_values")),
            options=None, answer=text(rec["anser"], "anser", numbers=True).strip(),
            meta={"source_id": key, "video_id": vid, "kind": "open_ended",
                  "question_template": template, "type": _list(rec.get("type"), "type")},
        )

    return per_record(src, load_records(src.path), build,
                      lambda n, rec: own_key(rec, "question_id", n))


def fill_placeholders(template: str, values: Any) -> str:
    """'Is the <Object> on the <LR> louder?' + ['cello', 'left'] -> the question."""
    holes = PLACEHOLDER.findall(template)
    filled = _list(values, "templ_values") if holes else []
    if len(filled) < len(holes):
        raise Malformed(f"question_content has {len(holes)} placeholder(s) but templ_values "
                        f"gives {len(filled)}")
    out = template
    for value in filled[:len(holes)]:
        out = PLACEHOLDER.sub(value.replace("\\", r"\\"), out, count=1)
    return out


def _list(value: Any, field: str) -> list[str]:
    """A list of strings, also when written as a JSON or Python literal string."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)  # literals only: never evaluates code
            except (ValueError, SyntaxError):
                raise Malformed(f"{field} is not a list: {value[:60]!r}") from None
    return texts(value, field)
