"""The one parser of the `<think>…</think><answer>…</answer>` trace format.

The merger's checks (is this trace good enough to keep?) and the trainer's format
reward (did the policy follow the template?) both read traces through `parse_trace`,
so a trace the merger keeps is one the format reward pays for.

A well-formed trace is exactly one think block, then exactly one answer block, with only
whitespace around and between them, and neither block empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACE_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)


@dataclass(frozen=True)
class Trace:
    """A parsed trace: think and answer text (stripped), or the problem and why."""

    think: str = ""
    answer: str = ""
    problem: str | None = None  # format | empty_think | empty_answer
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def parse_trace(text: str) -> Trace:
    """Split a trace into its think and answer blocks, or say what is wrong with its shape."""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return Trace(problem="format", why="there must be exactly one <think>…</think> block")
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return Trace(problem="format",
                     why="there must be exactly one <answer>…</answer> block after the think block")
    m = TRACE_RE.match(text)
    if not m:
        return Trace(problem="format",
                     why="nothing may come before, between or after the <think> and <answer> blocks")
    think, answer = m.group(1).strip(), m.group(2).strip()
    if not answer:
        return Trace(think, answer, "empty_answer", "the answer block is empty")
    if not think:
        return Trace(think, answer, "empty_think", "the think block is empty")
    return Trace(think, answer)
