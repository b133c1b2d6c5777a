"""Any OpenAI-compatible chat-completions server: OpenAI, `vllm serve`, others.

Images go as `image_url` JPEG data URLs, audio as `input_audio` wav, video as
`video_url` (a data URL, or `file://` for a vLLM server started with
`--allowed-local-media-path`). Structured output uses `response_format`
(json_schema); a server that refuses it gets the schema in the prompt instead
and the answer is parsed and validated either way. The key comes from
OPENAI_API_KEY and is never stored.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from avcurate.models.errors import ModelError, answer_within, header_wait
from avcurate.models.reachable import CONNECT_TIMEOUT
from avcurate.models.request import (
    AudioPart,
    ImagePart,
    ModelRequest,
    ModelResponse,
    TextPart,
    VideoPart,
    b64,
    with_json,
)
from avcurate.models.video_types import video_type


def _transport_error(exc: openai.APIConnectionError, timeout: float) -> ModelError:
    """A retryable error that names what went wrong. The SDK's aiohttp transport reports
    every failure to connect (refused, unknown host) as `APITimeoutError` "Request timed out.",
    which sent users looking for a slow server when the URL was wrong; what it wraps says
    what happened ("Cannot connect to host 127.0.0.1:1 ... [Connect call failed ...]")."""
    chain, e = [], exc.__cause__
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    detail = next((str(e) for e in chain if str(e)), str(exc))
    if any(isinstance(e, (ConnectionError, socket.gaierror)) for e in chain) \
            or not isinstance(exc, openai.APITimeoutError):
        return ModelError(detail, retryable=True, kind="connection")
    # httpx's ConnectTimeout, aiohttp's ConnectionTimeoutError; else the answer was late
    if not any("Connect" in type(e).__name__ for e in chain):
        detail += f" (no answer within the {timeout:g} s timeout)"
    return ModelError(detail, retryable=True, kind="timeout")


def _error_in_body(error: Any) -> ModelError:
    """A 200 whose body is an error instead of choices, as OpenRouter and other proxies pass
    on a provider's failure: a failed call (retried unless its code says it is final), not
    an empty answer that the row is rejected for."""
    message, code = (error.get("message") or json.dumps(error), error.get("code")) \
        if isinstance(error, dict) else (str(error), None)
    status = code if isinstance(code, int) and 100 <= code < 600 else None
    return ModelError(f"the server answered 200 with an error: {message}",
                      retryable=status is None or status >= 500 or status in (408, 429),
                      kind=f"http_{status}" if status else "server_error")


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else []


def _object(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    """A token count as servers send it (a number, a numeric string, null)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def message_text(content: Any) -> str:
    """An answer's text: a string, or the text parts of a list of content parts, as some
    OpenAI-compatible servers and proxies send it (`[{"type": "text", "text": ...}]`, with
    "thinking" or "reasoning" parts beside it, which are not the answer)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict)
                       and p.get("type", "text") in ("text", "output_text")
                       and isinstance(p.get("text"), str))
    return ""


def _retry_after(exc: openai.APIStatusError) -> float | None:
    return header_wait(exc.response.headers if exc.response is not None else None)


def _http_client():
    """The SDK's aiohttp transport (the `openai[aiohttp]` extra, one of our dependencies):
    httpx's connection pool polls every pooled socket each time it hands out a connection,
    which cost ~1 ms of the event loop's time per request at 32 in flight; with aiohttp
    bench_scoring went from 2.31 to 1.19 ms of client CPU per request. None (the SDK's
    default httpx client) when the extra is missing."""
    try:
        return openai.DefaultAioHttpClient()
    except RuntimeError:
        return None


_MEDIA_KIND = {ImagePart: "image", AudioPart: "audio", VideoPart: "video"}  # vLLM's names
_MEDIA_LIMIT = re.compile(r"at most \d+ (image|audio|video)|limit.mm.per.prompt", re.IGNORECASE)


def _refusal_hint(exc: openai.APIStatusError, request: ModelRequest) -> str:
    """What to change for a 400 the user's settings caused: every call would get it."""
    if exc.param == "temperature":
        return ("; this model takes only some temperatures (OpenAI's reasoning models only 1): "
                "set --temperature (temperature in a recipe) to one it takes")
    if "maximum context length" in str(exc):  # vLLM's and OpenAI's words for a long prompt
        return ("; fewer or smaller frames (--frames, --max-pixels), less audio "
                "(--audio-seconds) or a lower --max-tokens make a request fit")
    if _MEDIA_LIMIT.search(str(exc)):
        sent = Counter(_MEDIA_KIND[type(p)] for m in request.messages for p in m.parts
                       if type(p) in _MEDIA_KIND)
        limits = json.dumps(dict(sent))
        return (f"; a request here sends {', '.join(f'{n} {k}' for k, n in sent.items())}: "
                f"start vLLM with --limit-mm-per-prompt '{limits}', or send fewer (--frames)")
    return ""


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 120.0,
                 video_as: str = "data") -> None:
        if video_as not in ("data", "file"):
            raise ValueError("video_as must be 'data' or 'file'")
        self.model, self.base_url, self.timeout, self.video_as = model, base_url, timeout, video_as
        self._client: openai.AsyncOpenAI | None = None
        self.structured = True  # turned off when the server rejects response_format
        # OpenAI's reasoning models (o-series, gpt-5) refuse max_tokens for
        # max_completion_tokens, which older OpenAI-compatible servers do not know: the
        # first is sent until a server refuses it by name
        self.token_limit = "max_tokens"
        self.multi = True  # sends n; turned off when a server refuses n by name
        # top_p always goes (vLLM takes a missing one from the model's generation_config,
        # not 1) until a server refuses it by name, as OpenAI's reasoning models do
        self.top_p = True

    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            # our executor retries; the client's own retries would hide 429s and double waits
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
                timeout=openai.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                max_retries=0, http_client=_http_client())
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def prepare(self, request: ModelRequest) -> None:
        """Encode the request now, in the caller's thread (see `Executor.run`): frames and
        audio to JPEG/wav and base64, the body to JSON bytes (~0.5 ms for a body with 10 s of
        audio). `call`, in the executor's loop, then only sends it."""
        request.prepared[self.name] = (self._shape(), self._body(request))

    def _shape(self) -> tuple[bool, str, bool, bool]:
        """What this server has been found to take, which a prepared body was made for."""
        return self.structured, self.token_limit, self.multi, self.top_p

    def _body(self, request: ModelRequest) -> bytes:
        return json.dumps(self.render(request)).encode()

    def render(self, request: ModelRequest, structured: bool | None = None) -> dict[str, Any]:
        """The chat-completions request body (what `--dry-run` prints)."""
        structured = self.structured if structured is None else structured
        messages = [{"role": m.role, "content": [self._part(p) for p in m.parts]}
                    for m in request.messages]
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "temperature": request.temperature,
                                self.token_limit: request.max_tokens}
        if self.top_p:
            body["top_p"] = request.top_p
        if request.n > 1 and self.multi:
            body["n"] = request.n
        if request.json_schema is not None:
            if structured:
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "answer", "schema": request.json_schema}}
            else:
                messages[-1]["content"].append({"type": "text", "text": (
                    "Reply with one JSON object that follows this JSON schema, and nothing "
                    "else:\n" + json.dumps(request.json_schema))})
        return body

    def _part(self, part) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        if isinstance(part, ImagePart):
            return {"type": "image_url",
                    "image_url": {"url": f"data:image/jpeg;base64,{part.jpeg_b64}"}}
        if isinstance(part, AudioPart):
            return {"type": "input_audio", "input_audio": {"data": part.wav_b64, "format": "wav"}}
        if isinstance(part, VideoPart):
            if self.video_as == "file":
                url = Path(part.path).resolve().as_uri()
            else:
                data = b64(Path(part.path).read_bytes())
                url = f"data:{video_type(part.path)};base64,{data}"
            return {"type": "video_url", "video_url": {"url": url}}
        raise TypeError(f"unsupported part {part!r}")

    def _fall_back(self, request: ModelRequest, shape: tuple[bool, str, bool, bool],
                   exc: openai.APIStatusError) -> bool:
        """Whether the server refused something the body held that it can do without: then
        it is not sent again (structured output, n, max_tokens for max_completion_tokens,
        top_p)."""
        structured, token_limit, multi, top_p = shape
        if request.json_schema is not None and structured and "response_format" in str(exc):
            self.structured = False  # no structured output: the schema goes in the prompt
        elif exc.param == "n" and request.n > 1 and multi:
            self.multi = False  # one answer a call: the executor asks for the rest
        elif exc.param == "max_tokens" and token_limit == "max_tokens":
            self.token_limit = "max_completion_tokens"  # a reasoning model: the same limit
        elif exc.param == "top_p" and top_p and request.top_p == 1.0:
            self.top_p = False  # refused at all: left to the default, which is 1
        else:
            return False
        return True

    async def _models_hint(self, exc: openai.APIStatusError) -> str:
        """For a 404 naming the model (`vllm serve --served-model-name` serves another name
        than the Hub id): the names the server does serve, from its model list."""
        if exc.status_code != 404 or self.model not in str(exc):
            return ""
        try:
            served = sorted(m.id for m in (await answer_within(
                CONNECT_TIMEOUT, self.client().models.list())).data)
        except Exception:  # noqa: BLE001 (only a hint: the 404 stands without it)
            return ""
        return f"; the server serves {', '.join(served[:10])}: give one as --model" \
            if served else ""

    def _route_hint(self, status: int) -> str:
        """For a 404 from a base URL with no path: vLLM, SGLang and most OpenAI-compatible
        servers answer under /v1, which `--base-url http://host:8000` leaves out."""
        if status != 404 or not self.base_url or urlsplit(self.base_url).path.strip("/"):
            return ""
        return (f"; no chat route at {self.base_url.rstrip('/')}: OpenAI-compatible servers "
                f"(vLLM, SGLang) answer under /v1, --base-url {self.base_url.rstrip('/')}/v1")

    async def call(self, request: ModelRequest) -> ModelResponse:
        shape, body = request.prepared.pop(self.name, (None, None))
        if body is None or shape != self._shape():  # not prepared, or made before the server
            shape, body = self._shape(), self._body(request)  # refused something it held
        try:
            # The body is already a plain chat-completions payload; posting it through the
            # client's low-level `post` keeps its auth, base URL, timeouts and error types but
            # skips the SDK's per-request param transformation (~1.5 ms of CPU per call,
            # measured in benchmarks/bench_scoring.py), and we read the JSON ourselves.
            completion = await answer_within(self.timeout, self.client().post(
                "/chat/completions", content=body, cast_to=object))
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:  # 422: TGI, FastAPI
            if self._fall_back(request, shape, exc):  # by what this body held: the requests
                return await self.call(request)       # in flight with it are refused too
            raise ModelError(str(exc) + _refusal_hint(exc, request), retryable=False,
                             kind="bad_request") from exc
        except openai.RateLimitError as exc:
            raise ModelError(str(exc), retryable=True, kind="rate_limited",
                             retry_after=_retry_after(exc)) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise _transport_error(exc, self.timeout) from exc
        except openai.APIStatusError as exc:
            retryable = exc.status_code >= 500 or exc.status_code == 408
            hint = self._route_hint(exc.status_code) or await self._models_hint(exc)
            raise ModelError(str(exc) + hint, retryable=retryable,
                             kind=f"http_{exc.status_code}", retry_after=_retry_after(exc)
                             ) from exc
        if not isinstance(completion, dict):  # a web page, a proxy's login form: every call
            raise ModelError(  # would get the same, so the stage stops (not_an_api)
                f"the server answered {str(completion)[:80]!r}, not a chat completion in "
                f"JSON; is {self.base_url or 'the base URL'} an OpenAI-compatible API (vLLM "
                "serves one under /v1)?", retryable=False, kind="not_an_api")
        if not completion.get("choices") and completion.get("error"):
            raise _error_in_body(completion["error"])
        # read as leniently as servers write: a missing part is an empty answer, which the
        # stage's validator asks again (a None where an object belongs was a traceback)
        choices = [c for c in _listed(completion.get("choices")) if isinstance(c, dict)] or [{}]
        texts = [message_text(_object(c.get("message")).get("content")) for c in choices]
        usage = _object(completion.get("usage"))
        return with_json(ModelResponse(text=texts[0], texts=texts, usage={
            "prompt_tokens": _count(usage.get("prompt_tokens")),
            "completion_tokens": _count(usage.get("completion_tokens"))},
            finish=str(choices[0].get("finish_reason") or "")), request)
