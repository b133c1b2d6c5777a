"""Checks a merged trace must pass before it is kept.

A trace has the shape `core.traces.parse_trace` accepts (one think block, one answer
block, nothing else), its answer exactly one option letter equal to the ground truth, a
non-empty think block within token bounds that cites both audio and visual evidence and
does not give away that the answer was provided.

Token counts are approximate (words and punctuation marks, `\\w+|[^\\w\\s]`):
the bounds are meant to catch empty or runaway traces, not to match any one
model's tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from avcurate.core.answers import parse_letter
from avcurate.core.traces import parse_trace

TOKEN_RE = re.compile(r"\w+|[^\w\s]")

AUDIO_WORDS = ("hear", "heard", "sound", "audio", "listen", "voice", "speech", "music", "noise",
               "tone", "pitch", "loud", "song", "spoken", "says", "said")
VISUAL_WORDS = ("see", "seen", "saw", "visual", "frame", "shown", "shows", "image", "appear",
                "color", "colour", "scene", "look", "visible", "watch", "picture", "video")
LEAK_PHRASES = ("the correct answer is", "correct option is", "i was told", "was given the answer",
                "the answer key", "as provided", "we are told", "i am told", "the specialist",
                "the listener", "the viewer", "analysis provided", "notes say")


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


@dataclass
class TraceRules:
    min_tokens: int = 30
    max_tokens: int = 600
    audio_words: tuple[str, ...] = AUDIO_WORDS
    visual_words: tuple[str, ...] = VISUAL_WORDS
    leak_phrases: tuple[str, ...] = LEAK_PHRASES
    extra: dict = field(default_factory=dict)


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}", text) for w in words)


def check_trace(trace: str, truth: str, rules: TraceRules) -> tuple[str | None, str]:
    """(failed check or None, explanation). Checks in a fixed order; the first failure wins."""
    parsed = parse_trace(trace)
    if parsed.problem == "format":
        return "format", parsed.why
    if parse_letter(parsed.answer).letter != parsed.answer:  # exactly one letter, nothing else
        return "answer_format", f"the answer block must hold a single option letter, not {parsed.answer!r}"
    if parsed.answer != truth:
        return "answer_mismatch", f"the answer {parsed.answer} does not match the evidence (expected {truth})"
    if parsed.problem is not None:
        return parsed.problem, parsed.why
    think = parsed.think
    n = count_tokens(think)
    if n < rules.min_tokens:
        return "too_short", f"the reasoning has {n} tokens; write at least {rules.min_tokens}"
    if n > rules.max_tokens:
        return "too_long", f"the reasoning has {n} tokens; keep it under {rules.max_tokens}"
    lower = think.lower()
    for phrase in rules.leak_phrases:
        if phrase in lower:
            return "leak", f"the reasoning gives away that the answer was provided ({phrase!r})"
    if not _mentions(lower, rules.audio_words):
        return "missing_audio_evidence", "the reasoning never cites what is heard"
    if not _mentions(lower, rules.visual_words):
        return "missing_visual_evidence", "the reasoning never cites what is seen"
    return None, ""
