"""AVQA and Daily-Omni: multiple-choice audio-visual QA with their own field names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from avcurate.catalogs.base import (
    MediaRoot,
    Reject,
    UnsafePathError,
    answer_value,
    ident,
    load_records,
    per_record,
    stable_id,
    strip_letter,
    text,
    texts,
)
from avcurate.core.answers import normalise_answer
from avcurate.core.schema import sample_row

AVQA_META = ("question_relation", "question_type", "video_name")
DAILY_OMNI_META = ("Type", "video_category", "video_duration", "video_id")


def read_avqa(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    """AVQA: {id, video_name, question_text, multi_choice, answer (int index), ...}.

    Videos are `<media_root>/<video_name>` (`.mp4` appended when it has no suffix).
    """
    source = "avqa"

    def build(n: int, rec: dict) -> dict | Reject:
        raw_id = ident(rec.get("id", stable_id(n, rec)), "id")
        missing = [k for k in ("video_name", "question_text", "multi_choice", "answer")
                   if k not in rec]
        if missing:
            return Reject(source, f"{source}:{raw_id}", "malformed_annotation",
                          f"missing field(s) {', '.join(missing)}", rec)
        name = text(rec["video_name"], "video_name", numbers=True)
        options = [strip_letter(o) for o in texts(rec["multi_choice"], "multi_choice")]
        question = text(rec["question_text"], "question_text")
        try:
            video = media.resolve(name if Path(name).suffix else f"{name}.mp4")
        except UnsafePathError as exc:
            return Reject(source, f"{source}:{raw_id}", "unsafe_path", str(exc), rec)
        return sample_row(
            id=f"{source}:{raw_id}", source=source, video=video, question=question,
            options=options, answer=normalise_answer(answer_value(rec["answer"], "answer"), options),
            meta={"source_id": raw_id, **{k: rec[k] for k in AVQA_META if k in rec}},
        )

    return per_record(source, load_records(path), build)


def read_daily_omni(path: str, media: MediaRoot, **_: Any) -> Iterator[dict | Reject]:
    """Daily-Omni: {Question, Choice, Answer (letter), video_id, Type, ...}.

    Videos live at `<media_root>/<video_id>/<video_id>_video.mp4`; a sibling
    `<video_id>_audio.wav` (when present) becomes the `audio` column.
    """
    source = "daily-omni"

    def build(n: int, rec: dict) -> dict | Reject:
        missing = [k for k in ("Question", "Choice", "Answer", "video_id") if k not in rec]
        vid = ident(rec.get("video_id", ""), "video_id")
        raw_id = f"{vid}-{stable_id(rec.get('Question'), rec.get('Choice'))}"
        choice = rec.get("Choice")
        if missing or not isinstance(choice, list | dict):
            why = f"missing field(s) {', '.join(missing)}" if missing \
                else "'Choice' is not a list or mapping"
            return Reject(source, f"{source}:{raw_id}", "malformed_annotation", why, rec)
        values = list(choice.values()) if isinstance(choice, dict) else choice
        options = [strip_letter(o) for o in texts(values, "Choice")]
        question = text(rec["Question"], "Question")
        try:
            video = media.resolve(f"{vid}/{vid}_video.mp4")
            audio_path = media.resolve(f"{vid}/{vid}_audio.wav")
        except UnsafePathError as exc:
            return Reject(source, f"{source}:{raw_id}", "unsafe_path", str(exc), rec)
        return sample_row(
            id=f"{source}:{raw_id}", source=source, video=video,
            audio=audio_path if Path(audio_path).is_file() else None,
            question=question, options=options,
            answer=normalise_answer(answer_value(rec["Answer"], "Answer"), options),
            meta={"source_id": raw_id, **{k: rec[k] for k in DAILY_OMNI_META if k in rec}},
        )

    return per_record(source, load_records(path), build)
