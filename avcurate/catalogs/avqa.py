"""AVQA and Daily-Omni: multiple-choice audio-visual QA with their own field names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avcurate.catalogs.base import (
    BadLine,
    MediaRoot,
    Reject,
    UnsafePathError,
    load_records,
    stable_id,
    strip_letter,
)
from avcurate.core.answers import normalise_answer
from avcurate.core.schema import sample_row

AVQA_META = ("question_relation", "question_type", "video_name")
DAILY_OMNI_META = ("Type", "video_category", "video_duration", "video_id")


def _bad(source: str, n: int, rec: Any) -> Reject | None:
    if isinstance(rec, BadLine):
        return Reject(source, f"{source}:line-{rec.line_no}", "malformed_annotation",
                      f"line {rec.line_no} is not JSON: {rec.error}", rec.text)
    if not isinstance(rec, dict):
        return Reject(source, f"{source}:record-{n}", "malformed_annotation",
                      "record is not a JSON object", rec)
    return None


def read_avqa(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    """AVQA: {id, video_name, question_text, multi_choice, answer (int index), ...}.

    Videos are `<media_root>/<video_name>` (`.mp4` appended when it has no suffix).
    """
    source = "avqa"
    for n, rec in enumerate(load_records(path)):
        if (bad := _bad(source, n, rec)) is not None:
            yield bad
            continue
        raw_id = str(rec.get("id", stable_id(n, rec)))
        missing = [k for k in ("video_name", "question_text", "multi_choice", "answer")
                   if k not in rec]
        if missing or not isinstance(rec.get("multi_choice"), list):
            why = f"missing field(s) {', '.join(missing)}" if missing \
                else "'multi_choice' is not a list"
            yield Reject(source, f"{source}:{raw_id}", "malformed_annotation", why, rec)
            continue
        name = str(rec["video_name"])
        try:
            video = media.resolve(name if Path(name).suffix else f"{name}.mp4")
        except UnsafePathError as exc:
            yield Reject(source, f"{source}:{raw_id}", "unsafe_path", str(exc), rec)
            continue
        options = [strip_letter(str(o)) for o in rec["multi_choice"]]
        yield sample_row(
            id=f"{source}:{raw_id}", source=source, video=video,
            question=str(rec["question_text"]), options=options,
            answer=normalise_answer(rec["answer"], options),
            meta={"source_id": raw_id, **{k: rec[k] for k in AVQA_META if k in rec}},
        )


def read_daily_omni(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    """Daily-Omni: {Question, Choice, Answer (letter), video_id, Type, ...}.

    Videos live at `<media_root>/<video_id>/<video_id>_video.mp4`; a sibling
    `<video_id>_audio.wav` (when present) becomes the `audio` column.
    """
    source = "daily-omni"
    for n, rec in enumerate(load_records(path)):
        if (bad := _bad(source, n, rec)) is not None:
            yield bad
            continue
        missing = [k for k in ("Question", "Choice", "Answer", "video_id") if k not in rec]
        vid = str(rec.get("video_id", ""))
        raw_id = f"{vid}-{stable_id(rec.get('Question'), rec.get('Choice'))}"
        choice = rec.get("Choice")
        if missing or not isinstance(choice, list | dict):
            why = f"missing field(s) {', '.join(missing)}" if missing \
                else "'Choice' is not a list or mapping"
            yield Reject(source, f"{source}:{raw_id}", "malformed_annotation", why, rec)
            continue
        try:
            video = media.resolve(f"{vid}/{vid}_video.mp4")
            audio_path = media.resolve(f"{vid}/{vid}_audio.wav")
        except UnsafePathError as exc:
            yield Reject(source, f"{source}:{raw_id}", "unsafe_path", str(exc), rec)
            continue
        values = list(choice.values()) if isinstance(choice, dict) else choice
        options = [strip_letter(str(o)) for o in values]
        yield sample_row(
            id=f"{source}:{raw_id}", source=source, video=video,
            audio=audio_path if Path(audio_path).is_file() else None,
            question=str(rec["Question"]), options=options,
            answer=normalise_answer(rec["Answer"], options),
            meta={"source_id": raw_id, **{k: rec[k] for k in DAILY_OMNI_META if k in rec}},
        )
