"""Transport exceptions of the HTTP clients that google-genai and huggingface_hub use.

Recent releases of both vendor `httpx2`; older ones use `httpx`; google-genai switches to
aiohttp whenever aiohttp is installed (it is: the OpenAI backend uses its aiohttp
transport). Catching these by class (not by name) lets callers turn an unreachable or slow
server into one clear line or a retry.
"""

from __future__ import annotations


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout, connection) exception classes of every HTTP library that may carry a call."""
    timeouts: list[type] = [TimeoutError]  # asyncio's timeouts (aiohttp's total timeout)
    transports: list[type] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        timeouts.append(mod.TimeoutException)
        transports.append(mod.TransportError)
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        timeouts.append(aiohttp.ServerTimeoutError)  # before ClientError: it is one
        transports.append(aiohttp.ClientError)
    return tuple(timeouts), tuple(transports)


TIMEOUT_ERRORS, TRANSPORT_ERRORS = _transport_errors()
