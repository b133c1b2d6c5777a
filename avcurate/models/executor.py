"""Every model call goes through here: bounded concurrency, rate limit, retries, cache.

- Concurrency: an asyncio semaphore (`concurrency`, default 16).
- Rate limit: at most `rpm` request starts per minute (spaced evenly).
- Retries (tenacity): 429 / 5xx / timeouts / connection errors, exponential
  backoff with jitter, honouring the server's Retry-After; at most
  `max_attempts` tries.
- Invalid answers (not JSON, missing field, out of range): the validator
  raises `InvalidAnswer`; the request is retried up to `max_attempts` times,
  then the row is rejected with the validator's reason.
- Cache: valid answers are stored by the request's stable hash in the run
  folder (SQLite, safe for several processes), so a second run of the same
  stage makes zero calls. Invalid answers are never cached.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from avcurate.models.errors import InvalidAnswer, ModelError
from avcurate.models.request import ModelRequest, ModelResponse
from avcurate.pipeline.kvcache import KVCache

Validator = Callable[[ModelResponse], Any]


@dataclass
class CallStats:
    calls: int = 0
    cached: int = 0
    retries: int = 0
    invalid_answers: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class Outcome:
    """Per request: the validated value, or the reject reason and detail."""

    value: Any = None
    reason: str | None = None
    detail: str = ""
    response: ModelResponse | None = None


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (a minimal leaky bucket; the
    limit is a single number, which does not justify a dependency)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        if delay:
            await asyncio.sleep(delay)


def backoff(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (1-based): Retry-After when the server
    sent one, else exponential with full jitter."""
    if retry_after is not None:
        return min(cap, retry_after)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class Executor:
    def __init__(self, backend, *, concurrency: int = 16, rpm: float | None = None,
                 max_attempts: int = 4, cache: KVCache | None = None,
                 backoff_base: float = 0.5, backoff_cap: float = 30.0) -> None:
        self.backend = backend
        self.concurrency = concurrency
        self.rpm = rpm
        self.max_attempts = max_attempts
        self.cache = cache
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.stats = CallStats()

    def run(self, requests: list[ModelRequest], validate: Validator) -> list[Outcome]:
        """Answer every request (in order); never raises for a bad answer or a failed call."""
        if not requests:
            return []
        return asyncio.run(self._run_all(requests, validate))

    async def _run_all(self, requests, validate) -> list[Outcome]:
        sem = asyncio.Semaphore(self.concurrency)
        limiter = RateLimiter(self.rpm)
        keys = [r.key(self.backend.name, self.backend.model) for r in requests]
        cached = self.cache.get_many(keys) if self.cache is not None else {}
        try:
            return await asyncio.gather(*(self._one(r, k, cached.get(k), validate, sem, limiter)
                                          for r, k in zip(requests, keys, strict=True)))
        finally:
            await self.backend.aclose()

    async def _one(self, request, key, cached, validate, sem, limiter) -> Outcome:
        if cached is not None:
            response = ModelResponse(text=cached["text"], json=cached.get("json"),
                                     usage=cached.get("usage", {}), cached=True)
            try:
                self.stats.add(cached=1)
                return Outcome(value=validate(response), response=response)
            except InvalidAnswer:
                pass  # the validation rules changed since it was cached: ask again
        last: InvalidAnswer | None = None
        for _ in range(self.max_attempts):
            try:
                response = await self._call_with_retries(request, sem, limiter)
            except ModelError as exc:
                self.stats.add(failed=1)
                return Outcome(reason="model_error", detail=f"{exc.kind}: {exc}")
            try:
                value = validate(response)
            except InvalidAnswer as exc:
                self.stats.add(invalid_answers=1)
                last = exc
                continue
            if self.cache is not None:
                self.cache.put(key, {"text": response.text, "json": response.json,
                                     "usage": response.usage})
            return Outcome(value=value, response=response)
        assert last is not None
        return Outcome(reason=last.reason, detail=f"after {self.max_attempts} attempts: {last}")

    async def _call_with_retries(self, request, sem, limiter) -> ModelResponse:
        def wait(state) -> float:
            exc = state.outcome.exception()
            return backoff(state.attempt_number, getattr(exc, "retry_after", None),
                           self.backoff_base, self.backoff_cap)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts), wait=wait, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable),
            before_sleep=lambda _: self.stats.add(retries=1),
        )
        async for attempt in retrying:
            with attempt:
                await limiter.wait()
                async with sem:
                    self.stats.add(calls=1)
                    response = await self.backend.call(request)
                usage = response.usage
                self.stats.add(prompt_tokens=usage.get("prompt_tokens", 0),
                               completion_tokens=usage.get("completion_tokens", 0))
                return response
        raise AssertionError("unreachable")  # pragma: no cover
