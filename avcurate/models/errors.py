"""How backends report failures to the executor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelError(Exception):
    """A call that failed. `retryable` failures (429, 5xx, timeouts, connection errors) are
    retried with backoff; others (bad request, auth) are not. `retry_after` is the
    server's Retry-After in seconds, when it sent one."""

    def __init__(self, message: str, *, retryable: bool, kind: str,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind
        self.retry_after = retry_after

    @property
    def systemic(self) -> bool:
        """A failure of the whole endpoint or setup (key, auth, unknown model or route), not
        of one row: every other request would fail the same way."""
        return self.kind in SYSTEMIC_KINDS


SYSTEMIC_KINDS = frozenset({"no_api_key", "api_key_invalid", "http_401", "http_403",
                            "http_404", "unsupported_media", "not_an_api"})
TRANSPORT_KINDS = frozenset({"timeout", "connection", "rate_limited"})


def header_wait(headers: Any) -> float | None:
    """The wait in seconds a server's headers ask for before a retry: `retry-after-ms`
    (OpenAI, Azure) or `retry-after` in seconds (an HTTP date is not read), else None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if isinstance(value, str) and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
            return float(value) / scale
    return None


class EndpointError(RuntimeError):
    """A model stage must stop: the endpoint or its setup is broken (no key, 401/403, unknown
    model, unreachable server, too many failed calls). No row is rejected for it."""


class InvalidAnswer(Exception):
    """The model answered, but not in the required shape (not JSON, missing field, out of
    range). `reason` becomes the reject reason once the attempts are used up."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


GEMINI_KEY_MISSING = "set GEMINI_API_KEY (or GOOGLE_API_KEY) to use the gemini backend"
VLLM_HINT = ("pip install 'avcurate[vllm]' on a machine with a GPU, or run `vllm serve MODEL` "
             "and use --backend openai --base-url http://HOST:8000/v1")


class BackendUnavailable(RuntimeError):
    """A backend that cannot be used here (e.g. vllm not installed): a clear message."""


async def answer_within(seconds: float, call: Awaitable[T]) -> T:
    """`call`'s result, or a retryable timeout once `seconds` have passed in all. The HTTP
    clients' timeouts bound each read, not the whole answer: a server (or a proxy, some of
    which send a space now and then to keep a slow answer's connection open) that kept
    sending a byte a second held the call, and with it the stage, for as long as it sent."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise ModelError(f"no answer within the {seconds:g} s timeout",
                         retryable=True, kind="timeout") from None
