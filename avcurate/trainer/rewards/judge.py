"""The model that soft rewards ask for a 0-1 score (any avcurate model backend)."""

from __future__ import annotations

import json

from avcurate.core.options import OptionError
from avcurate.models import (
    BackendUnavailable,
    EndpointError,
    Executor,
    InvalidAnswer,
    ModelSpec,
    check_backend,
    check_reachable,
    make_backend,
)
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


def check_judge(backend: str, model: str, base_url: str, rewards: list[str]) -> None:
    """Before any model loads: the judge that `rewards` ask is named, its backend can work
    here (library, key), and its server answers and takes the key. Each of these used to stop
    training at its first step, after the policy had loaded; a wrong URL with a traceback.
    Judge options with no reward that asks a judge stop too: they were ignored, unsaid."""
    if not rewards:
        if backend or model or base_url:
            raise OptionError("--judge-backend/--judge-model/--judge-base-url go with a reward "
                              "that asks a judge (soft_accuracy, query_intent); --rewards "
                              "names none")
        return
    names = ", ".join(rewards)
    if not (backend and model):
        raise OptionError(f"reward {names} needs a judge: set --judge-backend and --judge-model")
    try:
        spec = ModelSpec(backend, model, base_url or None)
        check_backend(spec)
        check_reachable(spec.backend, spec.base_url)
    except (ValueError, BackendUnavailable) as exc:
        raise OptionError(f"the judge of reward {names} ({backend}:{model}): {exc}") from None


class Judge:
    """Scores prompts (with optional media parts) from 0 to 1. An answer that is not a score
    is 0 (the judge's verdict); a call with no answer stops training (EndpointError)."""

    def __init__(self, backend: str, model: str, base_url: str | None = None, **kw) -> None:
        spec = ModelSpec(backend, model, base_url, **kw)
        self.name = f"{backend}:{model}"
        self.executor = Executor(make_backend(spec), concurrency=spec.concurrency,
                                 max_attempts=spec.max_attempts)

    def close(self) -> None:
        """End the HTTP client and its loop thread (a later call starts them again)."""
        self.executor.close()

    def scores(self, prompts: list[str], media: list[list] | None = None) -> list[float]:
        requests = [ModelRequest((Message("user", (*(media[i] if media else []), TextPart(p))),),
                                 json_schema=SCORE_SCHEMA)
                    for i, p in enumerate(prompts)]
        results = self.executor.run(requests, _score)
        if failed := next((r for r in results if r.reason == "model_error"), None):
            # no answer after every retry: a made-up 0 would be trained on as the judge's
            raise EndpointError(f"{self.name}: {failed.detail}")
        return [r.value if r.reason is None else 0.0 for r in results]
