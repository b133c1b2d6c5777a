"""The model that soft rewards ask for a 0-1 score (any avcurate model backend)."""

from __future__ import annotations

import json

from avcurate.models import Executor, InvalidAnswer, ModelSpec, make_backend
from avcurate.models.request import Message, ModelRequest, TextPart

SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "number"}},
                "required": ["score"]}


def _score(resp) -> float:
    value = resp.json if isinstance(resp.json, dict) else None
    if value is None:
        try:
            value = json.loads(resp.text)
        except (json.JSONDecodeError, TypeError):
            raise InvalidAnswer("judge_invalid_json", resp.text[:80]) from None
    score = value.get("score") if isinstance(value, dict) else None
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        raise InvalidAnswer("judge_out_of_range", str(score))
    return float(score)


class Judge:
    """Scores prompts (with optional media parts) from 0 to 1; a failed or bad answer is 0."""

    def __init__(self, backend: str, model: str, base_url: str | None = None, **kw) -> None:
        spec = ModelSpec(backend, model, base_url, **kw)
        self.executor = Executor(make_backend(spec), concurrency=spec.concurrency,
                                 max_attempts=spec.max_attempts)

    def scores(self, prompts: list[str], media: list[list] | None = None) -> list[float]:
        requests = [ModelRequest((Message("user", (*(media[i] if media else []), TextPart(p))),),
                                 json_schema=SCORE_SCHEMA)
                    for i, p in enumerate(prompts)]
        return [r.value if r.reason is None else 0.0 for r in self.executor.run(requests, _score)]
