"""WorldSense: `worldsense_qa.json`, one object per video with its questions nested.

    {"<video>": {"duration", "domain", "sub_category", "audio_class", "video_caption",
                 "task0": {"question", "candidates": ["A. ...", ...], "answer": "B",
                           "task_domain", "task_type"},
                 "task1": {...}, ...}, ...}

Each `taskN` becomes one row with id key `<video>/taskN`. Videos are
`videos/<video>.mp4` (or `<video>.mp4`); an extracted `audios/<video>.wav` becomes
the audio column when present.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from avcurate.catalogs.base import (
    Malformed,
    Reject,
    SourceFile,
    choices,
    ident,
    load_records,
    need,
    per_record,
    text,
)
from avcurate.core.schema import sample_row

TASK = re.compile(r"task\d+")
VIDEO_META = ("duration", "domain", "sub_category", "audio_class")
TASK_META = ("task_domain", "task_type")


def read_worldsense(src: SourceFile) -> Iterator[dict | Reject]:
    def build(n: int, rec: dict) -> list[dict | Reject]:
        vid = ident(rec.get("_key", rec.get("video")), "video id (the record's key)")
        tasks = sorted((k for k in rec if TASK.fullmatch(k)), key=lambda k: int(k[4:]))
        if not tasks:
            raise Malformed(f"video {vid} has no task0, task1, ... questions")
        video = src.media.first([f"videos/{vid}.mp4", f"{vid}.mp4"])
        audio = src.media.resolve(f"audios/{vid}.wav")
        shared = {"video_id": vid, **{k: rec[k] for k in VIDEO_META if k in rec}}
        rows: list[dict | Reject] = []
        for name in tasks:
            try:
                rows.append(_task(src, f"{vid}/{name}", rec[name], video,
                                  audio if Path(audio).is_file() else None, shared))
            except Malformed as exc:
                rows.append(src.reject(f"{vid}/{name}", "malformed_annotation",
                                       f"{name}: {exc}", rec[name]))
        return rows

    return per_record(src, load_records(src.path), build)


def _task(src: SourceFile, key: str, task: object, video: str, audio: str | None,
          shared: dict) -> dict:
    if not isinstance(task, dict):
        raise Malformed("is not an object")
    need(task, "question", "candidates", *src.answer_fields("answer"))
    options = choices(task["candidates"], "candidates")
    return sample_row(
        id=src.sid(key), source=src.source, video=video, audio=audio,
        question=text(task["question"], "question"), options=options,
        answer=src.answer(task.get("answer"), "answer", options),
        meta={"source_id": key, "kind": "multiple_choice", **shared,
              **{k: task[k] for k in TASK_META if k in task}},
    )
