"""Before a model stage that is about to run: can its server be reached, and does it take
the key? One GET of `BASE_URL/models`, the route every OpenAI-compatible server (vLLM,
SGLang, Ollama, OpenAI's API) answers, and Gemini's model list (`gemini_backend`).

Why before, and not from the stage's first failed calls (the executor's breaker, which still
stops a stage whose server goes away later): `--redo` and `--force` remove the stages made
after the one they redo before it runs, so a wrong port used to cost those stages, and a run
stopped that way had already started. Only what is certain stops the command: a refused
connection, an unknown host, no answer to the handshake within the connect timeout, or a
401/403. Anything else (a 404 from a server without the route, a slow or odd answer, a TLS
setup the check cannot judge) lets the stage start, and its own calls decide.

The model itself is not looked up in the list: servers name models their own way (Ollama
lists `llama3:latest` and answers `llama3`), and the first call's 404 already stops the stage.

urllib, not the SDK's client: a synchronous GET with one timeout needs no event loop or
session, and urllib reports a failed connection (wrapped in URLError) apart from a late
answer (a bare TimeoutError), which is the distinction drawn here.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from avcurate.models.errors import BackendUnavailable

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection, here and in the OpenAI backend's calls: the SDK's own default
(`openai.DEFAULT_TIMEOUT`), which passing `--timeout` as one number would replace. A host that
drops connections (a firewall, a wrong address) then fails each try in 5 s instead of
`--timeout` (120 s): 4 tries of the first 5 calls took 8 min before the stage stopped."""
OPENAI_API = "https://api.openai.com/v1"


def unreachable(base: str, why: str) -> BackendUnavailable:
    """The one line for a server that cannot be reached, the same for every backend."""
    return BackendUnavailable(f"cannot reach {base} ({why}); is the server up and the URL right?")


def check_openai(base_url: str | None) -> None:
    """Raise BackendUnavailable (one line) when an OpenAI-compatible server certainly cannot
    be used: nothing listens there, the host is unknown or silent, or it refuses the key."""
    base = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API).rstrip("/")
    key = os.environ.get("OPENAI_API_KEY") or "EMPTY"  # what the OpenAI backend sends
    request = urllib.request.Request(f"{base}/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT):
            return
    except urllib.error.HTTPError as exc:  # before URLError: it is one
        if exc.code in (401, 403):
            raise BackendUnavailable(
                f"{base} refused the key (HTTP {exc.code} for GET /models): set OPENAI_API_KEY "
                "to the key the server expects (`vllm serve --api-key` sets one)") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionError | socket.gaierror | TimeoutError):
            what = "no answer to the connection" if isinstance(reason, TimeoutError) \
                else getattr(reason, "strerror", None) or str(reason)
            raise unreachable(base, what) from None
    except (OSError, ValueError, http.client.HTTPException):  # a late or malformed
        # answer: the stage's own calls will tell
        return


def url_connect_error(url: str) -> str | None:
    """`connect_error` for the host and port of `url`; None where a proxy from the
    environment carries the connection (the HTTP client goes there, not to the host, so a
    direct attempt cannot judge the route)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return None
    return connect_error(host, parts.port or (443 if parts.scheme == "https" else 80))


def connect_error(host: str, port: int) -> str | None:
    """Why a TCP connection to `host:port` cannot be opened within CONNECT_TIMEOUT, in the
    system's words ("Connection refused", "<host>: Name or service not known"), or None when
    it opens: the one-attempt check for servers other clients talk to (a Ray cluster's GCS,
    the Hugging Face Hub), which retry a dead address for minutes."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except socket.gaierror as exc:
        return f"{host}: {exc.strerror or exc}"
    except TimeoutError:
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
