"""AVRT's single-modality teachers and the filter that keeps samples both got right.

The visual teacher sees N evenly spaced frames (default 8), the audio teacher
hears the first seconds of the soundtrack (default 10 s, mono 16 kHz); each
answers the multiple-choice question with a description, a reasoning and a
letter. Each is any model backend, with its own model and settings. Frames and
clips come from the run's media cache, shared with the judge.

A teacher never rejects a row for being wrong (that is the filter's job); it
rejects rows it could not answer at all (no parsable letter after its
attempts, failed calls, unreadable media).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from avcurate.curation.model_stage import ModelStage, load_prompt, render
from avcurate.media.cache import DecodedMedia
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import AudioPart, ImagePart, Message, ModelRequest, TextPart
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.schema import letter_index, lettered
from avcurate.pipeline.stage import BaseStage, Outcome, register
from avcurate.teachers.answer import extract_answer, section


def teacher_columns(prefix: str) -> dict[str, pa.DataType]:
    return {f"{prefix}_description": pa.string(), f"{prefix}_reasoning": pa.string(),
            f"{prefix}_answer": pa.string(), f"{prefix}_correct": pa.bool_(),
            f"{prefix}_parse": pa.string(), f"{prefix}_model": pa.string(),
            f"{prefix}_raw": pa.string()}


@dataclass
class Teacher(ModelStage):
    modality = ""  # "visual" or "audio"
    label = ""     # the description heading the prompt asks for
    requires = ("id", "video", "question", "options", "answer")
    prompt: str = ""
    temperature: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._state["template"] = load_prompt(self.prompt, f"{self.modality}_teacher.md")

    def media_parts(self, media: DecodedMedia) -> list:
        raise NotImplementedError

    def prompt_values(self) -> dict[str, str]:
        return {}

    def build(self, row: dict[str, Any], media: DecodedMedia | None) -> ModelRequest:
        text = render(self._state["template"], question=row["question"] or "",
                      options=lettered(row["options"]), **self.prompt_values())
        parts = [*self.media_parts(media), TextPart(text)]
        return ModelRequest((Message("user", tuple(parts)),), temperature=self.temperature,
                            max_tokens=self.max_tokens)

    def validate(self, response: ModelResponse) -> dict[str, Any]:
        options = self._state["current_options"]
        letter, how = extract_answer(response.text, options)
        if letter is None:
            raise InvalidAnswer(f"{self.modality}_no_answer",
                                f"{how} answer in {response.text[-160:]!r}")
        stops = ("Reasoning", "Answer")
        p = self.modality
        return {f"{p}_description": section(response.text, self.label, stops),
                f"{p}_reasoning": section(response.text, "Reasoning", ("Answer",)) or response.text,
                f"{p}_answer": letter, f"{p}_parse": how, f"{p}_model": f"{self.backend}:{self.model}",
                f"{p}_raw": response.text}

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        # validation needs each row's options: answer one options-shape at a time
        outcome = _by_options(self, table, ctx)
        p = self.modality
        answers = outcome.kept.column(f"{p}_answer").to_pylist()
        truth = outcome.kept.column("answer").to_pylist()
        correct = pa.array([a == t for a, t in zip(answers, truth, strict=True)], pa.bool_())
        kept = outcome.kept.set_column(outcome.kept.schema.get_field_index(f"{p}_correct"),
                                       f"{p}_correct", correct)
        return Outcome(kept=kept, rejected=outcome.rejected)


def _by_options(stage: Teacher, table: pa.Table, ctx: StageContext) -> Outcome:
    """Run ModelStage.process on groups of rows that share the same options list."""
    groups: dict[tuple, list[int]] = {}
    for i, opts in enumerate(table.column("options").to_pylist()):
        groups.setdefault(tuple(opts or ()), []).append(i)
    kept, rejected = [], []
    for opts, idx in groups.items():
        stage._state["current_options"] = list(opts)
        part = ModelStage.process(stage, table.take(pa.array(idx, pa.int64())), ctx)
        kept.append(part.kept)
        rejected.append(part.rejected)
    order = {rid: k for k, rid in enumerate(table.column("id").to_pylist())}

    def ordered(parts: list[pa.Table]) -> pa.Table:
        t = pa.concat_tables(parts)
        ids = t.column("id").to_pylist()
        return t.take(pa.array(sorted(range(t.num_rows), key=lambda k: order[ids[k]]), pa.int64()))

    return Outcome(kept=ordered(kept), rejected=ordered(rejected))


@register
@dataclass
class VisualTeacher(Teacher):
    """AVRT's vision teacher: N evenly spaced frames + the question -> description, reasoning, letter."""

    name = "visual_teacher"
    modality, label = "visual", "Visual Description"
    adds = teacher_columns("visual")
    version = "1"
    frames: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        self.decode_frames, self.decode_seconds = self.frames, 0

    def prompt_values(self) -> dict[str, str]:
        return {"n_frames": str(self.frames)}

    def media_parts(self, media: DecodedMedia) -> list:
        return [ImagePart(f, float(t)) for f, t in zip(media.frames, media.times, strict=True)]


@register
@dataclass
class AudioTeacher(Teacher):
    """AVRT's audio teacher: the first seconds of audio + the question -> description, reasoning, letter."""

    name = "audio_teacher"
    modality, label = "audio", "Audio Description"
    adds = teacher_columns("audio")
    version = "1"
    audio_seconds: float = 10.0
    audio_offset: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.decode_seconds, self.decode_offset = self.audio_seconds, self.audio_offset

    def media_path(self, row: dict[str, Any]) -> str | None:
        return row.get("audio") or row["video"]

    def prompt_values(self) -> dict[str, str]:
        return {"seconds": f"{self.audio_seconds:g}"}

    def media_parts(self, media: DecodedMedia) -> list:
        return [AudioPart(media.audio, media.sample_rate)] if media.audio.size else []


REQUIRE = ("both", "either", "any")


@register
@dataclass
class TeacherFilter(BaseStage):
    """Keep samples the teachers got right: both (AVRT), either, or any (keep all)."""

    name = "teacher_filter"
    requires = ("answer", "visual_answer", "audio_answer")
    adds = {}
    version = "1"
    require: str = "both"

    def __post_init__(self) -> None:
        if self.require not in REQUIRE:
            raise ValueError(f"require must be one of {', '.join(REQUIRE)}")

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        rows = table.select(["answer", "options", "visual_answer", "audio_answer"]).to_pylist()
        reasons = []
        for r in rows:
            v_ok, a_ok = r["visual_answer"] == r["answer"], r["audio_answer"] == r["answer"]
            wrong = "both_wrong" if not (v_ok or a_ok) else \
                "visual_wrong" if not v_ok else "audio_wrong" if not a_ok else None
            if letter_index(r["answer"], len(r["options"] or [])) is None:
                wrong = "not_multiple_choice"
            keep = {"both": v_ok and a_ok, "either": v_ok or a_ok, "any": True}[self.require]
            reasons.append(None if keep and wrong != "not_multiple_choice" else wrong)
        return Outcome.split(table, self.name, reasons)
