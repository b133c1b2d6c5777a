"""Transport exceptions of the HTTP client that google-genai and huggingface_hub use.

Recent releases of both vendor `httpx2`; older ones use `httpx`. Catching these by class
(not by name) lets callers turn an unreachable server into one clear line.
"""

from __future__ import annotations


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout, connection) exception classes of the HTTP library google-genai uses:
    recent releases vendor `httpx2`, older ones use `httpx`."""
    timeouts, transports = [], []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        timeouts.append(mod.TimeoutException)
        transports.append(mod.TransportError)
    return tuple(timeouts), tuple(transports)


TIMEOUT_ERRORS, TRANSPORT_ERRORS = _transport_errors()
