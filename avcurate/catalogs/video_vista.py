"""Video-Vista: the training conversations and the benchmark file, in one catalog.

The benchmark file `VideoVista.json` is a JSON array of
    {"question_id", "Question", "Answer_Choices": [..], "Answer": 0-based index,
     "video_name": "<name>.<group>.mp4", "category", "Type", "time"}
with videos unpacked from `merged.zip` at `merged/<category>/<group>/<video_name>`
(the group is the second dot-separated part of the name). A record in the
training format (`conversations`) is read like LLaVA-Video; the format is told
apart per record, so one catalog serves both files.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

from avcurate.catalogs.base import (
    Reject,
    SourceFile,
    choices,
    load_records,
    need,
    own_key,
    per_record,
    positional,
    text,
)
from avcurate.catalogs.conversations import conversation_rows
from avcurate.core.schema import sample_row

BENCH_META = ("question_id", "Type", "category", "time")


def read_video_vista(src: SourceFile) -> Iterator[dict | Reject]:
    def build(n: int, rec: dict) -> dict | list[dict | Reject]:
        if "conversations" in rec:
            return conversation_rows(src, n, rec, ("Type",))
        return _benchmark_row(src, n, rec)

    def key(n: int, rec: dict) -> str:  # a benchmark record's own id; training ones have none
        return positional(n) if "conversations" in rec else own_key(rec, "question_id", n)

    return per_record(src, load_records(src.path), build, key)


def _benchmark_row(src: SourceFile, n: int, rec: dict) -> dict:
    need(rec, "Question", "Answer_Choices", *src.answer_fields("Answer"), "video_name")
    key = own_key(rec, "question_id", n)
    name = text(rec["video_name"], "video_name")
    options = choices(rec["Answer_Choices"], "Answer_Choices")
    category = text(rec.get("category"), "category", required=False)
    return sample_row(
        id=src.sid(key), source=src.source, video=_video(src, name, category),
        question=text(rec["Question"], "Question"), options=options,
        answer=src.answer(rec.get("Answer"), "Answer", options),
        duration_s=float(rec["time"]) if isinstance(rec.get("time"), int | float) else None,
        meta={"source_id": key, "kind": "multiple_choice",
              **{k: rec[k] for k in BENCH_META if k in rec}},
    )


def _video(src: SourceFile, name: str, category: str | None) -> str:
    """`merged/<category>/<group>/<name>`, else the same group under another category
    (as the benchmark's own loader does), else `merged/<name>` or `<name>`."""
    parts = name.split(".")
    group = parts[1] if len(parts) > 2 else ""
    tail = f"{group}/{name}" if group else name
    folders = ([category] if category else []) + [c for c in _categories(src.media.root)
                                                  if c != category]
    return src.media.first([f"merged/{c}/{tail}" for c in folders]
                           + [f"merged/{name}", name])


@cache
def _categories(root: Path) -> tuple[str, ...]:
    merged = root / "merged"
    return tuple(sorted(p.name for p in merged.iterdir() if p.is_dir())) if merged.is_dir() \
        else ()
