"""The score stage: a multimodal judge rates each sample on four dimensions (OmniVideo-R1).

The judge answers integer scores 0-10 for video dependency, audio dependency,
question logic and answer accuracy, each with a one-sentence rationale. They
are stored normalised to [0, 1]; the composite is their weighted sum (weights
normalised to sum to 1, equal by default). The paper's judge was Gemini-2.5-Pro.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from avcurate.core.answers import lettered
from avcurate.core.options import option
from avcurate.media.cache import DecodedMedia, MediaNeeds
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart, VideoPart
from avcurate.stages.base import StageError
from avcurate.stages.media_parts import audio_parts, frame_parts, max_pixels_option
from avcurate.stages.model_stage import History, ModelStage
from avcurate.stages.prompts import load_prompt, render

DIMENSIONS = ("video_dependency", "audio_dependency", "question_logic", "answer_accuracy")
MEDIA_MODES = ("frames+audio", "video", "none")

SCHEMA = {
    "type": "object",
    "properties": {k: v for d in DIMENSIONS for k, v in (
        (d, {"type": "integer", "minimum": 0, "maximum": 10}),
        (f"{d}_rationale", {"type": "string"}))},
    "required": [k for d in DIMENSIONS for k in (d, f"{d}_rationale")],
}


SCORE_TEXT = re.compile(r"\s*(\d+(?:\.0*)?)\s*(?:/\s*10)?\s*")


@dataclass
class Score(ModelStage):
    """Rate each sample on video/audio dependency, question logic, answer accuracy (0-10 -> 0-1)."""

    name = "score"
    requires = ("id", "video", "question", "options", "answer")
    adds = {**{d: pa.float64() for d in DIMENSIONS}, "composite_score": pa.float64(),
            "score_rationale": pa.string(), "judge_model": pa.string()}
    version = "1"

    prompt: str = option("", path=True, help="Rubric prompt file (default: the packaged one).")
    media: str = option("frames+audio", choices=MEDIA_MODES,
                        help="What the judge sees: frames+audio, video or none.")
    frames: int = option(8, min=1, help="Evenly spaced frames (frames+audio).")
    max_pixels: int = max_pixels_option("frames+audio")
    audio_seconds: float = option(30.0, gt=0, help="Seconds of audio (frames+audio).")
    weights: list[float] = option(default_factory=lambda: [0.25, 0.25, 0.25, 0.25], min=0,
                                  help="Composite weights for video, audio, logic, accuracy "
                                       "(comma-separated on the command line).")

    _template: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.weights) != 4 or sum(self.weights) <= 0:
            raise StageError("stage 'score': weights must be four non-negative numbers with a "
                             f"positive sum, not {self.weights}")
        self._template = load_prompt(self.prompt, "avcurate.curation", "score.md", self.name)

    def media_needs(self) -> MediaNeeds:
        if self.media == "frames+audio":
            return MediaNeeds(frames=self.frames, max_pixels=self.max_pixels,
                              seconds=self.audio_seconds)
        return MediaNeeds()

    def build(self, row: dict[str, Any], media: DecodedMedia | None, history: History
              ) -> ModelRequest:
        text = render(self._template, question=row["question"] or "",
                      options=lettered(row["options"]) or "(open-ended question)",
                      answer=row["answer"] or "")
        parts: list = []
        if self.media == "video":
            parts.append(VideoPart(row["video"]))
        elif media is not None:
            parts += frame_parts(media) + audio_parts(media)
        parts.append(TextPart(text))
        return ModelRequest((Message("user", tuple(parts)),), **self.sampling(),
                            json_schema=SCHEMA)

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, Any]:
        answer = response.json
        if not isinstance(answer, dict):
            raise InvalidAnswer("judge_invalid_json", f"not a JSON object: {response.text[:120]!r}")
        missing = [d for d in DIMENSIONS if d not in answer]
        if missing:
            raise InvalidAnswer("judge_missing_field", f"missing {', '.join(missing)}")
        scores = {}
        for d in DIMENSIONS:
            v = answer[d]
            if isinstance(v, str) and (m := SCORE_TEXT.fullmatch(v)):  # "8", "8/10": a model
                v = float(m.group(1))                                # without the schema
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v != int(v) or not 0 <= v <= 10:  # NaN, Infinity: JSON as Python reads it
                raise InvalidAnswer("judge_out_of_range", f"{d} = {v!r} is not an integer in 0..10")
            scores[d] = int(v) / 10
        total = sum(self.weights)
        composite = sum(w / total * scores[d] for w, d in zip(self.weights, DIMENSIONS, strict=True))
        rationale = {d: str(answer.get(f"{d}_rationale", "")) for d in DIMENSIONS}
        return {**scores, "composite_score": round(composite, 12),
                "score_rationale": json.dumps(rationale, ensure_ascii=False),
                "judge_model": f"{self.backend}:{self.model}"}
