"""Outcome rewards: the option letter in <answer>, and a judge's soft 0-1 score."""

from __future__ import annotations

import json
import re

from avcurate.pipeline.schema import lettered
from avcurate.trainer.rewards import reward

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def answer_letter(text: str) -> str | None:
    """The option letter inside the last <answer> block ('B', '(B)', 'B. text' all count)."""
    found = ANSWER.findall(text)
    if not found:
        return None
    m = re.match(r"^\(?([A-Z])\)?(?:[.):\s]|$)", found[-1])
    return m.group(1) if m else None


@reward("accuracy")
def accuracy_reward(completions, rows) -> list[float]:
    return [1.0 if answer_letter(c) is not None and answer_letter(c) == r["answer"] else 0.0
            for c, r in zip(completions, rows, strict=True)]


SOFT_PROMPT = (
    "Grade a student's answer to a question about a video. Question:\n{question}\nOptions:\n"
    "{options}\nReference answer: {reference}\nStudent's answer: {answer}\n"
    'Reply with JSON only: {{"score": a number from 0 (wrong) to 1 (fully right)}}'
)

_JUDGE: dict = {}


def configure_judge(backend: str, model: str, base_url: str | None = None, **kw) -> None:
    """Set the model the soft rewards ask (any avcurate model backend)."""
    from avcurate.models import Executor, ModelSpec, make_backend

    spec = ModelSpec(backend, model, base_url, **kw)
    _JUDGE["executor"] = Executor(make_backend(spec), concurrency=spec.concurrency,
                                  max_attempts=spec.max_attempts)


def judge_scores(prompts: list[str], media: list[list] | None = None) -> list[float]:
    """Ask the configured judge for a 0-1 score per prompt; failures score 0."""
    from avcurate.models import InvalidAnswer
    from avcurate.models.request import Message, ModelRequest, TextPart

    if "executor" not in _JUDGE:
        raise RuntimeError("this reward needs a judge: set [judge] backend/model in the config")
    requests = [ModelRequest((Message("user", tuple([*(media[i] if media else []),
                                                      TextPart(p)])),),
                             json_schema={"type": "object", "properties": {"score": {
                                 "type": "number"}}, "required": ["score"]})
                for i, p in enumerate(prompts)]

    def validate(resp):
        value = resp.json if isinstance(resp.json, dict) else None
        if value is None:
            try:
                value = json.loads(resp.text)
            except (json.JSONDecodeError, TypeError):
                raise InvalidAnswer("judge_invalid_json", resp.text[:80]) from None
        score = value.get("score") if isinstance(value, dict) else None
        if not isinstance(score, int | float) or not 0 <= score <= 1:
            raise InvalidAnswer("judge_out_of_range", str(score))
        return float(score)

    return [o.value if o.reason is None else 0.0 for o in _JUDGE["executor"].run(requests, validate)]


@reward("soft_accuracy")
def soft_accuracy_reward(completions, rows) -> list[float]:
    prompts = []
    for c, r in zip(completions, rows, strict=True):
        found = ANSWER.findall(c)
        prompts.append(SOFT_PROMPT.format(question=r["question"], options=lettered(r.get("options")),
                                          reference=r["answer"], answer=found[-1] if found else c))
    return judge_scores(prompts)
