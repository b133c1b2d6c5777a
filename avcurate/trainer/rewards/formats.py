"""Format rewards: the answer template, and OmniVideo-R1's time/caption template."""

from __future__ import annotations

import re

from avcurate.core.traces import parse_trace
from avcurate.trainer.rewards import reward

NUM = r"\d+(?:\.\d+)?"
PAIR = re.compile(rf"\s*<time>\s*({NUM})\s*-\s*({NUM})\s*</time>\s*<caption>((?:(?!</?caption>"
                  rf"|</?time>).)+)</caption>", re.DOTALL)
TAIL = re.compile(r"\s*<thinking>(?:(?!</?thinking>|</?answer>).)+</thinking>\s*"
                  r"<answer>(?:(?!</?answer>).)+</answer>\s*$", re.DOTALL)


@reward("format")
def format_reward(completions, rows) -> list[float]:
    """1 for exactly <think>…</think><answer>…</answer> (nothing else, neither empty), else 0:
    the shape `core.traces.parse_trace` accepts, the same the merger's traces must have."""
    return [1.0 if parse_trace(c).ok else 0.0 for c in completions]


def time_caption_pairs(text: str) -> list[tuple[float, float, str]]:
    return [(float(a), float(b), cap.strip()) for a, b, cap in PAIR.findall(text)]


def tcta_valid(text: str, duration: float | None) -> bool:
    """One or more <time>S-E</time><caption>…</caption> pairs (S < E, inside the clip), then
    <thinking>…</thinking><answer>…</answer>, with as many time tags as caption tags."""
    if text.count("<time>") != text.count("<caption>") or text.count("<time>") == 0:
        return False
    pos = 0
    pairs = 0
    while m := PAIR.match(text, pos):
        start, end = float(m.group(1)), float(m.group(2))
        if not start < end or (duration is not None and end > duration + 1e-6):
            return False
        pos, pairs = m.end(), pairs + 1
    return pairs == text.count("<time>") and bool(TAIL.match(text, pos))


@reward("tcta_format")
def tcta_format_reward(completions, rows) -> list[float]:
    return [1.0 if tcta_valid(c, r.get("duration_s")) else 0.0
            for c, r in zip(completions, rows, strict=True)]
