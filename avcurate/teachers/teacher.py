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

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from avcurate.core.answers import after_thinking, extract_letter, letter_index, lettered
from avcurate.core.options import option
from avcurate.media.cache import DecodedMedia, MediaNeeds
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.stages.base import BaseStage, ShardResult
from avcurate.stages.context import StageContext
from avcurate.stages.media_parts import audio_parts, frame_parts, max_pixels_option
from avcurate.stages.model_stage import History, ModelStage
from avcurate.stages.prompts import load_prompt, render

# a part's label, at the start of a line: "Reasoning:", "**Reasoning:**", "**Reasoning**:",
# "1. Reasoning:", or a Markdown heading "### Reasoning" with the part on the lines below
# (`#{{1,6}}`: braces doubled, SECTION is a str.format template)
LABEL = (r"[ \t]*(?:#{{1,6}}[ \t]*|\d+[.)][ \t]*)?\**[ \t]*(?:{names})[ \t]*\**"
         r"(?:[ \t]*[:：][ \t]*\**|[ \t]*\n)")
SECTION = (r"(?:^|\n)" + LABEL.replace("{names}", "{name}") + r"\s*(.*?)(?=\n"
           + LABEL.replace("{names}", "{stops}") + r"|\Z)")


def section(text: str, name: str, stops: tuple[str, ...]) -> str:
    """The text after `Name:` up to the next of `stops:` (e.g. Visual Description / Reasoning)."""
    pattern = SECTION.format(name=re.escape(name), stops="|".join(map(re.escape, stops)))
    m = re.search(pattern, text, re.IGNORECASE | re.DOTALL)
    return m.group(1).strip() if m else ""


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
    prompt: str = option("", path=True, help="Teacher prompt file (default: the packaged one).")

    _template: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._template = load_prompt(self.prompt, "avcurate.teachers",
                                     f"{self.modality}_teacher.md", self.name)

    def media_parts(self, media: DecodedMedia) -> list:
        raise NotImplementedError

    def prompt_values(self) -> dict[str, str]:
        return {}

    def build_all(self, row: dict[str, Any], media: DecodedMedia | None, history: History
                  ) -> list[ModelRequest]:
        # open-ended rows are not asked (a teacher answers with a letter): they pass with
        # nulls, and teacher_filter rejects them as not_multiple_choice
        return [self.build(row, media, history)] if row.get("options") else []

    def combine(self, row: dict[str, Any], values: list[Any]) -> dict[str, Any]:
        return values[0] if values else {}

    def build(self, row: dict[str, Any], media: DecodedMedia | None, history: History
              ) -> ModelRequest:
        text = render(self._template, question=row["question"] or "",
                      options=lettered(row["options"]), **self.prompt_values())
        parts = [*self.media_parts(media), TextPart(text)]
        return ModelRequest((Message("user", tuple(parts)),), **self.sampling())

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, Any]:
        parsed = extract_letter(response.text, row["options"] or [])
        if parsed.letter is None:
            raise InvalidAnswer(f"{self.modality}_no_answer",
                                f"{parsed.how} answer in {response.text[-160:]!r}")
        p = self.modality
        reply = after_thinking(response.text)  # a thinking model's drafts are not its parts
        return {f"{p}_description": section(reply, self.label, ("Reasoning", "Answer")),
                f"{p}_reasoning": section(reply, "Reasoning", ("Answer",)) or reply.strip(),
                f"{p}_answer": parsed.letter, f"{p}_correct": parsed.letter == row["answer"],
                f"{p}_parse": parsed.how, f"{p}_model": f"{self.backend}:{self.model}",
                f"{p}_raw": response.text}


@dataclass
class VisualTeacher(Teacher):
    """AVRT's vision teacher: N evenly spaced frames + the question -> description, reasoning, letter."""

    name = "visual_teacher"
    modality, label = "visual", "Visual Description"
    adds = teacher_columns("visual")
    version = "1"
    frames: int = option(8, min=1, help="Evenly spaced frames for the visual teacher.")
    max_pixels: int = max_pixels_option()

    def media_needs(self) -> MediaNeeds:
        return MediaNeeds(frames=self.frames, max_pixels=self.max_pixels)

    def prompt_values(self) -> dict[str, str]:
        return {"n_frames": str(self.frames)}

    def media_parts(self, media: DecodedMedia) -> list:
        return frame_parts(media)


@dataclass
class AudioTeacher(Teacher):
    """AVRT's audio teacher: the first seconds of audio + the question -> description, reasoning, letter."""

    name = "audio_teacher"
    modality, label = "audio", "Audio Description"
    adds = teacher_columns("audio")
    version = "1"
    audio_seconds: float = option(10.0, gt=0, help="Seconds of audio for the audio teacher.")
    audio_offset: float = option(0.0, min=0, help="Where the audio clip starts, seconds.")

    def media_needs(self) -> MediaNeeds:
        return MediaNeeds(seconds=self.audio_seconds, offset=self.audio_offset)

    def media_path(self, row: dict[str, Any]) -> str | None:
        return row.get("audio") or row["video"]

    def prompt_values(self) -> dict[str, str]:
        return {"seconds": f"{self.audio_seconds:g}"}

    def media_parts(self, media: DecodedMedia) -> list:
        return audio_parts(media)


REQUIRE = ("both", "either", "any")


@dataclass
class TeacherFilter(BaseStage):
    """Keep samples the teachers got right: both (AVRT), either, or any (keep all)."""

    name = "teacher_filter"
    requires = ("answer", "visual_answer", "audio_answer")
    adds = {}
    version = "1"
    require: str = option("both", choices=REQUIRE, help="Keep rows where both teachers (AVRT), "
                          "either, or any (keep all) answered correctly.")

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
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
        return ShardResult.split(table, self.name, reasons)
