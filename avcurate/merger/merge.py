"""The merge stage: a text-only LLM writes one audio-visual trace per sample (AVRT).

It sees the question, the options, the correct letter and both teachers'
analyses, and must write `<think>…</think><answer>X</answer>` in its own
voice. Every trace is checked (`merger/trace.py`); a failing one is sent back
with the failed check explained, for up to `max_rounds` rounds (each request
with its own `max_attempts` transport tries), then the row is rejected with
`trace_<check>`. AVRT's merger was Qwen2.5-14B-Instruct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from avcurate.core.answers import THINK_END, lettered, unfenced
from avcurate.core.options import option
from avcurate.core.traces import parse_trace
from avcurate.merger.trace import TraceRules, check_trace, count_tokens
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.stages.errors import StageError
from avcurate.stages.model_stage import History, ModelStage
from avcurate.stages.prompts import load_prompt, render

FEEDBACK = ("Your reply did not pass a check: {why}. Write the whole reply again, following every "
            "instruction: reasoning in <think></think>, then only the letter in <answer></answer>.")


def analysis(description: str | None, reasoning: str | None) -> str:
    parts = [p.strip() for p in (description, reasoning) if p and p.strip()]
    return "\n".join(parts) or "(no notes)"


@dataclass
class Merge(ModelStage):
    """Merge the visual and audio teachers' reasoning into one <think>/<answer> trace."""

    name = "merge"
    requires = ("id", "question", "options", "answer", "visual_description", "visual_reasoning",
                "audio_description", "audio_reasoning")
    adds = {"trace": pa.string(), "trace_answer": pa.string(), "trace_tokens": pa.int64(),
            "merger_model": pa.string(), "merge_attempts": pa.int64()}
    version = "2"
    rounds_column = "merge_attempts"

    prompt: str = option("", path=True, help="Merger prompt file (default: the packaged one).")
    max_rounds: int = option(3, min=1, help="Rounds per trace: a failing trace is sent back "
                             "with the failed check, up to this many answers.")
    min_tokens: int = option(30, min=0, help="Shortest allowed reasoning, tokens.")
    max_tokens_trace: int = option(600, min=1, flag="--max-tokens",
                                   help="Longest allowed reasoning, tokens.")
    audio_words: list[str] | None = option(None, cli=False, help="Words that count as citing "
                                           "audio evidence (default: a built-in list).")
    visual_words: list[str] | None = option(None, cli=False, help="Words that count as citing "
                                            "visual evidence (default: a built-in list).")
    temperature: float = option(0.3, min=0, max=2, help="Sampling temperature.")
    max_tokens: int = option(1024, min=1, flag="--max-answer-tokens",
                             help="Longest reply the merger may write, tokens.")

    _rules: TraceRules = field(default_factory=TraceRules, init=False, repr=False, compare=False)
    _template: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._template = load_prompt(self.prompt, "avcurate.merger", "merge.md", self.name)
        for longest, flag in ((self.max_tokens_trace, "max_tokens_trace (--max-tokens), the "
                                                      "longest reasoning"),
                              (self.max_tokens, "max_tokens (--max-answer-tokens), the longest "
                                                "reply")):
            if longest < self.min_tokens:  # every trace would be rejected as too short
                raise StageError(f"stage 'merge': {flag}, is {longest}, less than min_tokens = "
                                 f"{self.min_tokens}: no trace could pass")
        self._rules = TraceRules(self.min_tokens, self.max_tokens_trace)
        if self.audio_words:
            self._rules.audio_words = tuple(self.audio_words)
        if self.visual_words:
            self._rules.visual_words = tuple(self.visual_words)

    def build(self, row: dict[str, Any], media: None, history: History) -> ModelRequest:
        text = render(self._template, question=row["question"] or "",
                      options=lettered(row["options"]), answer=row["answer"] or "",
                      audio_analysis=analysis(row["audio_description"], row["audio_reasoning"]),
                      visual_analysis=analysis(row["visual_description"], row["visual_reasoning"]))
        messages = [Message("user", (TextPart(text),))]
        for reply, note in history:
            messages += [Message("assistant", (TextPart(reply),)),
                         Message("user", (TextPart(note),))]
        return ModelRequest(tuple(messages), **self.sampling())

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, Any]:
        text = unwrapped(response.text.strip())
        check, why = check_trace(text, row["answer"], self._rules)
        if check is not None:
            raise InvalidAnswer(f"trace_{check}", why)
        think = text.split("</think>")[0].removeprefix("<think>")
        return {"trace": text, "trace_answer": row["answer"], "trace_tokens": count_tokens(think),
                "merger_model": f"{self.backend}:{self.model}"}

    def feedback(self, error: InvalidAnswer) -> str:
        return FEEDBACK.format(why=str(error))


def unwrapped(text: str) -> str:
    """The trace in a merger's reply, so that no format round is spent on its wrapping:
    - after the model's own thinking. Qwen3 served by vLLM without a reasoning parser
      writes `<think>its thinking</think>` before any reply (a model whose template opens
      the block writes only the `</think>`), so every trace it merged had two think
      blocks. What follows its first closing think tag (`</think>`, or
      Kimi-VL-Thinking's `◁/think▷`) is the reply;
    - inside a code block when the reply is one (```xml), as chat-tuned models wrap
      tagged output.
    Only a whole trace is taken out; any other reply is returned as is, for the checks
    to say what is wrong."""
    parts = THINK_END.split(text, maxsplit=1)
    for reply in [text] if len(parts) == 1 else [text, parts[1].strip()]:
        for candidate in (reply, unfenced(reply)):
            if parse_trace(candidate).ok:
                return candidate
    return text
