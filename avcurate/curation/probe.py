"""The probe stage: measure how much each question needs the picture, the sound, or neither.

OmniVideo-R1's curation trusts a judge's 0-10 guess of a question's video and audio
dependency and keeps everything the policy already solves or never solves. The probe
measures both instead. A model (typically the policy to be trained) answers every
multiple-choice question `n` times under each media condition:

    av  frames and audio      v  frames only      a  audio only      t  text only

From the share of correct letters per condition it derives `pass_rate` (= acc_av:
rows at 0 or 1 give GRPO/GSPO no learning signal), `measured_video_dependency` =
max(0, acc_av - acc_a), `measured_audio_dependency` = max(0, acc_av - acc_v) and
`blind_answerable` = acc_t - 1/len(options) (above chance with no media at all).
Hedged or missing letters count as wrong and are counted in `probe_unparsed`.
Open-ended rows pass through untouched with nulls: they are neither sent nor rejected.

One row costs one request per condition when the backend can return several answers
to one request (OpenAI-compatible `n`, Gemini `candidate_count`), else `n` requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from avcurate.core.answers import extract_letter, lettered
from avcurate.core.options import option
from avcurate.media.cache import DecodedMedia, MediaNeeds, decode_rows
from avcurate.models import MULTI_SAMPLE, InvalidAnswer, ModelResponse
from avcurate.models.request import AudioPart, ImagePart, Message, ModelRequest, TextPart
from avcurate.stages.base import StageError
from avcurate.stages.context import StageContext
from avcurate.stages.media_parts import audio_parts, frame_parts, max_pixels_option
from avcurate.stages.model_stage import History, ModelStage
from avcurate.stages.prompts import load_prompt, render

CONDITIONS = ("av", "v", "a", "t")
CONDITION_NAMES = {"av": "frames+audio", "v": "frames", "a": "audio", "t": "text only"}
MEDIA_NOTES = {
    "av": "You are given frames sampled evenly from a video, with their times, and its audio.",
    "v": "You are given frames sampled evenly from a video, with their times. There is no "
         "audio: answer from the picture.",
    "a": "You are given the audio of a video. There are no frames: answer from the sound.",
    "t": "There is no video and no audio: answer from the question alone, with your best "
         "guess.",
}
PROBE_COLUMNS = {**{f"probe_acc_{c}": pa.float64() for c in CONDITIONS},
                 "probe_n": pa.int64(), "probe_unparsed": pa.int64(),
                 "pass_rate": pa.float64(), "measured_video_dependency": pa.float64(),
                 "measured_audio_dependency": pa.float64(), "blind_answerable": pa.float64()}


@dataclass
class Probe(ModelStage):
    """Answer each question n times with frames+audio, frames, audio, text only: measured
    pass rate, video/audio dependency and blind answerability."""

    name = "probe"
    requires = ("id", "video", "question", "options", "answer")
    adds = PROBE_COLUMNS
    version = "1"

    conditions: list[str] = option(default_factory=lambda: list(CONDITIONS), comma=True,
                                   help="Media conditions: av (frames+audio), v (frames), "
                                        "a (audio), t (text only); comma-separated.")
    n: int = option(8, min=1, max=64, help="Answers per condition.")
    temperature: float = option(1.0, min=0, max=2, help="Sampling temperature of the answers.")
    max_tokens: int = option(256, min=1, help="Longest answer, tokens.")
    frames: int = option(8, min=1, help="Evenly spaced frames (conditions av, v).")
    max_pixels: int = max_pixels_option("conditions av, v")
    audio_seconds: float = option(10.0, gt=0, help="Seconds of audio (conditions av, a).")
    audio_offset: float = option(0.0, min=0, help="Where the audio clip starts, seconds.")
    prompt: str = option("", path=True, help="Probe prompt file (default: the packaged one).")
    multi_sample: bool = option(True, help="Ask for the n answers in one request where the "
                                "backend can (OpenAI-compatible n, Gemini candidate_count); "
                                "turn off for a server that ignores n.")

    _template: str = field(default="", init=False, repr=False, compare=False)
    _separate: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise StageError(f"stage 'probe': conditions must be distinct values among "
                             f"{', '.join(CONDITIONS)}, not {','.join(self.conditions)}")
        self._separate = not (self.multi_sample and self.backend in MULTI_SAMPLE)
        self._template = load_prompt(self.prompt, "avcurate.curation", "probe.md", self.name)

    # -- media: frames from the video, sound from the audio file when the row has one --------
    def media_needs(self) -> MediaNeeds:
        wants_v = any("v" in c for c in self.conditions)
        wants_a = any("a" in c for c in self.conditions)
        return MediaNeeds(frames=self.frames if wants_v else 0, max_pixels=self.max_pixels,
                          seconds=self.audio_seconds if wants_a else 0,
                          offset=self.audio_offset)

    def decode(self, rows: list[dict[str, Any]], ctx: StageContext) -> list[Any]:
        needs = self.media_needs()
        mc = [r for r in rows if r.get("options")]
        if not needs or not mc:
            return [None] * len(rows)
        pictures = decode_rows(mc, lambda r: r["video"], MediaNeeds(
            frames=needs.frames, max_pixels=needs.max_pixels), ctx) \
            if needs.frames else [None] * len(mc)
        sounds = decode_rows(mc, lambda r: r.get("audio") or r["video"],
                             MediaNeeds(seconds=needs.seconds, offset=needs.offset), ctx) \
            if needs.seconds else [None] * len(mc)
        joined = iter([_join(p, s) for p, s in zip(pictures, sounds, strict=True)])
        return [next(joined) if r.get("options") else None for r in rows]

    # -- requests ----------------------------------------------------------------------------
    def build_all(self, row: dict[str, Any], media: DecodedMedia | None, history: History
                  ) -> list[ModelRequest]:
        if not row.get("options"):
            return []  # open-ended: passed through with nulls
        pictures, sound = _parts(media)  # built once per row: each is encoded once
        requests = []
        for condition in self.conditions:
            request = self._request(row, pictures, sound, condition)
            if self._separate:
                requests += [replace(request, sample=k) for k in range(self.n)]
            else:
                requests.append(replace(request, n=self.n))
        return requests

    def _request(self, row: dict[str, Any], pictures: list[ImagePart], sound: list[AudioPart],
                 condition: str) -> ModelRequest:
        parts = (pictures if "v" in condition else []) + (sound if "a" in condition else [])
        text = render(self._template, media_note=MEDIA_NOTES[condition],
                      question=row["question"] or "", options=lettered(row["options"]))
        parts.append(TextPart(text))
        return ModelRequest((Message("user", tuple(parts)),), **self.sampling())

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, int]:
        """Correct and unparsed answers among this request's answers: a hedge or a missing
        letter is an answer that counts as wrong. Only a request whose answers all stopped
        at max_tokens before any named a letter is invalid (asked again, like any stage's
        cut answer): the limit, not the question, made them wrong, and a run of them stops
        the stage at once (a reasoning model's thinking cut at 256 tokens), where it went
        on to the end and measured every question as never answered."""
        letters = [extract_letter(t, row["options"]).letter for t in response.texts]
        if response.cut and all(x is None for x in letters):
            raise InvalidAnswer("probe_cut", "the answers stopped at max_tokens before any "
                                "named an option letter")
        return {"answers": len(letters), "correct": sum(x == row["answer"] for x in letters),
                "unparsed": sum(x is None for x in letters)}

    def combine(self, row: dict[str, Any], values: list[dict[str, int]]) -> dict[str, Any]:
        if not values:
            return {}
        per = len(values) // len(self.conditions)  # requests per condition
        acc, answered, unparsed = {}, [], 0
        for k, condition in enumerate(self.conditions):
            got = values[k * per:(k + 1) * per]
            total = sum(v["answers"] for v in got)
            acc[condition] = sum(v["correct"] for v in got) / total if total else None
            answered.append(total)
            unparsed += sum(v["unparsed"] for v in got)
        return derived(acc, len(row["options"])) | {"probe_n": min(answered),
                                                    "probe_unparsed": unparsed}

    def answer_counts(self, values: list[Any]) -> dict[str, int]:
        """The answers given and those with no option letter (counted wrong): a share of
        them that is high says the setup, not the questions, shaped the figures (a model
        that reasons first cut at max_tokens, or one answering in prose); see
        `reports.tables.unlettered_answers`."""
        answered = [v for v in values if v and v.get("probe_n") is not None]
        return {"answers": sum(v["probe_n"] * sum(v[f"probe_acc_{c}"] is not None
                                                  for c in self.conditions) for v in answered),
                "unlettered": sum(v["probe_unparsed"] for v in answered)}


def derived(acc: dict[str, float | None], n_options: int) -> dict[str, Any]:
    """The accuracy columns and what they imply; null where a condition was not run."""
    av, v, a, t = (acc.get(c) for c in CONDITIONS)

    def gap(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else max(0.0, x - y)

    return {**{f"probe_acc_{c}": acc.get(c) for c in CONDITIONS}, "pass_rate": av,
            "measured_video_dependency": gap(av, a), "measured_audio_dependency": gap(av, v),
            "blind_answerable": None if t is None else t - 1 / n_options}


def _parts(media: DecodedMedia | None) -> tuple[list[ImagePart], list[AudioPart]]:
    if media is None:
        return [], []
    return frame_parts(media), audio_parts(media)


def _join(pictures: Any, sounds: Any) -> Any:
    """One DecodedMedia with the frames of one decode and the audio of the other; a decode
    error (a dict) of either is the row's error."""
    for part in (pictures, sounds):
        if isinstance(part, dict):
            return part
    base = pictures if pictures is not None else sounds
    if pictures is not None and sounds is not None:
        base.audio, base.sample_rate = sounds.audio, sounds.sample_rate
    return base
