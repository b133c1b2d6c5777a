"""The merge stage: a text-only LLM writes one audio-visual trace per sample (AVRT).

It sees the question, the options, the correct letter and both teachers'
analyses, and must write `<think>…</think><answer>X</answer>` in its own
voice. Every trace is checked (`merger/trace.py`); a failing one is sent back
with the failed check explained, for up to `max_attempts` rounds, then the row
is rejected with `trace_<check>`. AVRT's merger was Qwen2.5-14B-Instruct.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from avcurate.curation.model_stage import ModelStage, load_prompt, render
from avcurate.merger.trace import TraceRules, check_trace, count_tokens
from avcurate.models import ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.schema import lettered, with_columns
from avcurate.pipeline.stage import Outcome, register

FEEDBACK = ("Your reply did not pass a check: {why}. Write the whole reply again, following every "
            "instruction: reasoning in <think></think>, then only the letter in <answer></answer>.")


def analysis(description: str | None, reasoning: str | None) -> str:
    parts = [p.strip() for p in (description, reasoning) if p and p.strip()]
    return "\n".join(parts) or "(no notes)"


@register
@dataclass
class Merge(ModelStage):
    """Merge the visual and audio teachers' reasoning into one <think>/<answer> trace."""

    name = "merge"
    requires = ("id", "question", "options", "answer", "visual_description", "visual_reasoning",
                "audio_description", "audio_reasoning")
    adds = {"trace": pa.string(), "trace_answer": pa.string(), "trace_tokens": pa.int64(),
            "merger_model": pa.string(), "merge_attempts": pa.int64()}
    version = "1"

    prompt: str = ""
    max_attempts: int = 3
    min_tokens: int = 30
    max_tokens_trace: int = 600
    audio_words: list[str] | None = None
    visual_words: list[str] | None = None
    temperature: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        self._state["template"] = load_prompt(self.prompt, "merge.md")
        rules = TraceRules(self.min_tokens, self.max_tokens_trace)
        if self.audio_words:
            rules.audio_words = tuple(self.audio_words)
        if self.visual_words:
            rules.visual_words = tuple(self.visual_words)
        self._state["rules"] = rules

    def build(self, row: dict[str, Any], media: None, history: list[tuple[str, str]] = ()
              ) -> ModelRequest:
        text = render(self._state["template"], question=row["question"] or "",
                      options=lettered(row["options"]), answer=row["answer"] or "",
                      audio_analysis=analysis(row["audio_description"], row["audio_reasoning"]),
                      visual_analysis=analysis(row["visual_description"], row["visual_reasoning"]))
        messages = [Message("user", (TextPart(text),))]
        for reply, why in history:
            messages += [Message("assistant", (TextPart(reply),)),
                         Message("user", (TextPart(FEEDBACK.format(why=why)),))]
        return ModelRequest(tuple(messages), temperature=self.temperature,
                            max_tokens=self.max_tokens)

    def validate(self, response: ModelResponse) -> ModelResponse:
        return response  # traces are checked per row in `process`, where the truth is known

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        rows = table.to_pylist()
        history: dict[int, list[tuple[str, str]]] = {i: [] for i in range(len(rows))}
        done: dict[int, str] = {}
        failed: dict[int, tuple[str, str]] = {}
        attempts = dict.fromkeys(range(len(rows)), 0)
        for _ in range(self.max_attempts):
            pending = [i for i in range(len(rows)) if i not in done
                       and failed.get(i, ("",))[0] != "model_error"]
            if not pending:
                break
            requests = [self.build(rows[i], None, history[i]) for i in pending]
            for i, outcome in zip(pending, self.executor(ctx).run(requests, self.validate),
                                  strict=True):
                attempts[i] += 1
                if outcome.reason is not None:
                    failed[i] = ("model_error", outcome.detail)
                    continue
                text = outcome.value.text.strip()
                check, why = check_trace(text, rows[i]["answer"], self._state["rules"])
                if check is None:
                    done[i] = text
                    failed.pop(i, None)
                else:
                    failed[i] = (f"trace_{check}", why)
                    history[i].append((text, why))
        return self._outcome(table, rows, done, failed, attempts)

    def _outcome(self, table, rows, done, failed, attempts) -> Outcome:
        traces = [done.get(i) for i in range(len(rows))]
        think = [t.split("</think>")[0].removeprefix("<think>") if t else None for t in traces]
        cols = {
            "trace": pa.array(traces, pa.string()),
            "trace_answer": pa.array([rows[i]["answer"] if t else None
                                      for i, t in enumerate(traces)], pa.string()),
            "trace_tokens": pa.array([count_tokens(t) if t else None for t in think], pa.int64()),
            "merger_model": pa.array([f"{self.backend}:{self.model}"] * len(rows), pa.string()),
            "merge_attempts": pa.array([attempts[i] for i in range(len(rows))], pa.int64()),
        }
        table = with_columns(table, cols)
        reasons = [None if i in done else failed[i][0] for i in range(len(rows))]
        details = [None if i in done else failed[i][1] for i in range(len(rows))]
        return Outcome.split(table, self.name, reasons, details)
