"""AVQA and Daily-Omni: multiple-choice audio-visual QA with their own field names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from avcurate.catalogs.base import (
    MediaRoot,
    Reject,
    SourceFile,
    choices,
    ident,
    load_records,
    need,
    own_key,
    per_record,
    positional,
    text,
)
from avcurate.core.schema import sample_row

AVQA_META = ("question_relation", "question_type", "video_name", "video_id", "dataset_name")
DAILY_OMNI_META = ("Type", "video_category", "video_duration", "video_id")


def read_avqa(src: SourceFile, audio_root: str | None = None) -> Iterator[dict | Reject]:
    """AVQA `train_qa.json` / `val_qa.json`: {id, video_name, question_text, multi_choice,
    answer (0-based index), question_relation, question_type}.

    Videos are `<media_root>/<video_name>` (`.mp4` appended when it has no suffix). The
    one-object-per-line variant audio-QA RL projects use (R1-AQA) adds `audio_path`,
    which becomes the row's audio track: relative to `audio_root` (default: the media
    root), or an absolute path inside it.
    """
    audios = MediaRoot(audio_root, src.media.strip_prefix, src.media.follow_links) \
        if audio_root else src.media

    def build(n: int, rec: dict) -> dict:
        need(rec, "video_name", "question_text", "multi_choice", *src.answer_fields("answer"))
        key = own_key(rec, "id", n)
        name = text(rec["video_name"], "video_name", numbers=True)
        options = choices(rec["multi_choice"], "multi_choice")
        audio = rec.get("audio_path")
        return sample_row(
            id=src.sid(key), source=src.source,
            video=src.media.resolve(name if Path(name).suffix else f"{name}.mp4"),
            audio=audios.resolve(text(audio, "audio_path")) if audio is not None else None,
            question=text(rec["question_text"], "question_text"), options=options,
            answer=src.answer(rec.get("answer"), "answer", options),
            meta={"source_id": key, **{k: rec[k] for k in AVQA_META if k in rec}},
        )

    return per_record(src, load_records(src.path), build, lambda n, rec: own_key(rec, "id", n))


def read_daily_omni(src: SourceFile) -> Iterator[dict | Reject]:
    """Daily-Omni `qa.json`: {Question, Choice (["A. ..", ..] or a mapping), Answer (letter),
    video_id, Type, video_category, video_duration}.

    Videos live at `<media_root>/<video_id>/<video_id>_video.mp4`; a sibling
    `<video_id>_audio.wav` (when present) becomes the `audio` column. Records carry no
    question id, so the key is the record's position and its video id.
    """
    def build(n: int, rec: dict) -> dict:
        need(rec, "Question", "Choice", *src.answer_fields("Answer"), "video_id")
        vid = ident(rec["video_id"], "video_id")
        choice = rec["Choice"]
        values = list(choice.values()) if isinstance(choice, dict) else choice
        options = choices(values, "Choice")
        audio = src.media.resolve(f"{vid}/{vid}_audio.wav")
        key = positional(n, vid)
        return sample_row(
            id=src.sid(key), source=src.source, video=src.media.resolve(f"{vid}/{vid}_video.mp4"),
            audio=audio if Path(audio).is_file() else None,
            question=text(rec["Question"], "Question"), options=options,
            answer=src.answer(rec.get("Answer"), "Answer", options),
            meta={"source_id": key, **{k: rec[k] for k in DAILY_OMNI_META if k in rec}},
        )

    return per_record(src, load_records(src.path), build)
