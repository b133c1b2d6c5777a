"""Gemini through google-genai.

Small media go inline; a video larger than `inline_limit` bytes is uploaded
through the Files API and referenced by URI (once per file, deleted when the stage
ends: `gemini_uploads`). JSON answers use
`response_mime_type="application/json"` with the schema. The key comes from
GEMINI_API_KEY or GOOGLE_API_KEY and is never stored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from google import genai
from google.genai import errors, types

from avcurate.models.errors import (
    GEMINI_KEY_MISSING,
    BackendUnavailable,
    ModelError,
    header_wait,
)
from avcurate.models.gemini_uploads import UPLOAD_BUDGET, Key, Uploads
from avcurate.models.http_errors import TIMEOUT_ERRORS, TRANSPORT_ERRORS
from avcurate.models.reachable import unreachable, url_connect_error
from avcurate.models.request import (
    AudioPart,
    ImagePart,
    ModelRequest,
    ModelResponse,
    TextPart,
    VideoPart,
    with_json,
)
from avcurate.models.video_types import gemini_refusal, gemini_video_type

INLINE_LIMIT = 20 * 1024 * 1024
GEMINI_API = "https://generativelanguage.googleapis.com"
CHECK_TIMEOUT = 10.0
"""Seconds the model list may take before a stage; a later answer lets the stage start."""


def _key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")


def _options(base_url: str | None, timeout: float) -> types.HttpOptions:
    # attempts=1: our executor retries (with the stage's --max-attempts). Without retry
    # options the SDK sleeps 1-10 s and tries once more on every connection error: a
    # refused URL took 23 s to stop the stage instead of 1 s.
    return types.HttpOptions(timeout=int(timeout * 1000),
                             retry_options=types.HttpRetryOptions(attempts=1),
                             **({"base_url": base_url} if base_url else {}))


def refused_key(exc: errors.APIError) -> str | None:
    """How the server refused the key ("HTTP 400 API_KEY_INVALID"), or None when it did
    not. Google answers a wrong or expired key with 400 INVALID_ARGUMENT, which a malformed
    request gets too; only the reason in the answer's ErrorInfo tells them apart."""
    if exc.code in (401, 403):
        return f"HTTP {exc.code}"
    body = exc.details if isinstance(exc.details, dict) else {}
    body = body.get("error", body) if isinstance(body.get("error"), dict) else body
    for info in body.get("details") or []:
        reason = info.get("reason") if isinstance(info, dict) else None
        if isinstance(reason, str) and reason.startswith("API_KEY_"):
            return f"HTTP {exc.code} {reason}"
    return None


def check_gemini(base_url: str | None) -> None:
    """Raise BackendUnavailable when Gemini's server certainly cannot be used: no TCP
    connection within the connect timeout, or a model list that refuses the key (see
    `models/reachable.py` for why before the stage). Only that is certain: an answer later
    than CHECK_TIMEOUT, a proxy without the list, any other error lets the stage start.

    The TCP check comes first because the SDK has one timeout for a whole request: a host
    that drops connections would cost all of it."""
    base = (base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or GEMINI_API).rstrip("/")
    if why := url_connect_error(base):
        raise unreachable(base, why)
    client = genai.Client(api_key=_key(), http_options=_options(base_url, CHECK_TIMEOUT))
    try:
        client.models.list(config=types.ListModelsConfig(page_size=1))
    except errors.APIError as exc:
        if why := refused_key(exc):
            raise BackendUnavailable(
                f"{base} refused the key ({why} for the model list): set GEMINI_API_KEY (or "
                "GOOGLE_API_KEY) to a key it takes") from None
    except (*TIMEOUT_ERRORS, *TRANSPORT_ERRORS, ValueError):
        return  # a late or odd answer: the stage's own calls will tell
    finally:
        client.close()


def _schema_for_gemini(schema: dict) -> dict:
    """Gemini's response_schema is an OpenAPI subset: drop keys it does not accept."""
    drop = {"additionalProperties", "$schema", "title"}
    if isinstance(schema, dict):
        return {k: _schema_for_gemini(v) for k, v in schema.items() if k not in drop}
    if isinstance(schema, list):
        return [_schema_for_gemini(v) for v in schema]
    return schema


class GeminiBackend:
    name = "gemini"

    def __init__(self, model: str, base_url: str | None = None, timeout: float = 300.0,
                 inline_limit: int = INLINE_LIMIT, upload_budget: int = UPLOAD_BUDGET) -> None:
        self.model, self.base_url, self.timeout, self.inline_limit = model, base_url, timeout, inline_limit
        self._client: genai.Client | None = None
        self.uploads = Uploads(self.client, upload_budget, wait_limit=timeout)
        # Gemini 3 models answer candidate_count > 1 with a 400 ("Multiple candidates is not
        # enabled for this model"): then one is asked for, and the executor asks for the rest
        self.one_candidate = False

    def client(self) -> genai.Client:
        if self._client is None:
            if not (key := _key()):
                raise ModelError(GEMINI_KEY_MISSING, retryable=False, kind="no_api_key")
            self._client = genai.Client(api_key=key,
                                        http_options=_options(self.base_url, self.timeout))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self.uploads.close()
            await self._client.aio.aclose()
            self._client = None

    def prepare(self, request: ModelRequest) -> None:
        """Encode the request's frames and audio now, in the caller's thread (see
        `Executor.run`), not in the executor's loop."""
        for m in request.messages:
            for part in m.parts:
                if isinstance(part, ImagePart):
                    part.jpeg  # noqa: B018 (a cached property: computing it is the point)
                elif isinstance(part, AudioPart):
                    part.wav  # noqa: B018

    async def _parts(self, request: ModelRequest, uploaded: list[Key]
                     ) -> tuple[str | None, list[types.Content]]:
        """The system text and the contents; the keys of the uploads used go to `uploaded`."""
        system, contents = None, []
        for m in request.messages:
            if m.role == "system":
                system = "\n".join(p.text for p in m.parts if isinstance(p, TextPart))
                continue
            parts = [await self._part(p, uploaded) for p in m.parts]
            contents.append(types.Content(role="model" if m.role == "assistant" else "user",
                                          parts=parts))
        return system, contents

    async def _part(self, part, uploaded: list[Key]) -> types.Part:
        if isinstance(part, TextPart):
            return types.Part.from_text(text=part.text)
        if isinstance(part, ImagePart):
            return types.Part.from_bytes(data=part.jpeg, mime_type="image/jpeg")
        if isinstance(part, AudioPart):
            return types.Part.from_bytes(data=part.wav, mime_type="audio/wav")
        if isinstance(part, VideoPart):
            path = Path(part.path)
            if (mime := gemini_video_type(part.path)) is None:
                raise ModelError(gemini_refusal(part.path), retryable=False,
                                 kind="unsupported_video")  # this row's file, not the setup
            if path.stat().st_size <= self.inline_limit:
                return types.Part.from_bytes(data=path.read_bytes(), mime_type=mime)
            key, uri = await self.uploads.part(path, mime)
            uploaded.append(key)
            return uri
        raise TypeError(f"unsupported part {part!r}")

    def config(self, request: ModelRequest, system: str | None) -> types.GenerateContentConfig:
        kw = {}
        if request.json_schema is not None:
            kw = {"response_mime_type": "application/json",
                  "response_schema": _schema_for_gemini(request.json_schema)}
        if request.n > 1 and not self.one_candidate:
            kw["candidate_count"] = request.n
        if request.thinking:
            kw["thinking_config"] = _thinking(request.thinking)
        return types.GenerateContentConfig(
            temperature=request.temperature, max_output_tokens=request.max_tokens,
            top_p=request.top_p, system_instruction=system, **kw)

    async def call(self, request: ModelRequest) -> ModelResponse:
        uploaded: list[Key] = []
        several = request.n > 1 and not self.one_candidate  # candidate_count sent
        try:
            system, contents = await self._parts(request, uploaded)
            result = await self.client().aio.models.generate_content(
                model=self.model, contents=contents, config=self.config(request, system))
        except errors.APIError as exc:
            code = exc.code or 0
            if code == 400 and several and "candidate" in (exc.message or "").lower():
                self.one_candidate = True
                return await self.call(request)
            retry_after = header_wait(getattr(getattr(exc, "response", None), "headers", None))
            if retry_after is None:
                retry_after = _retry_delay(exc)  # the Gemini API says it in the body
            kind = "rate_limited" if code == 429 else f"http_{code}"
            if code == 400 and refused_key(exc):  # a key error, not this row's
                kind = "api_key_invalid"
            detail = f"{code} {exc.status}: {exc.message}" if exc.message else str(exc)
            raise ModelError(detail, retryable=code == 429 or code >= 500 or code == 408,
                             kind=kind, retry_after=retry_after) from exc
        except TIMEOUT_ERRORS as exc:
            raise ModelError(str(exc) or f"no answer within the {self.timeout:g} s timeout",
                             retryable=True, kind="timeout") from exc
        except TRANSPORT_ERRORS as exc:
            raise ModelError(str(exc), retryable=True, kind="connection") from exc
        finally:
            for key in uploaded:
                self.uploads.release(key)
        candidates = result.candidates or []
        texts = [_candidate_text(c) for c in candidates] or [result.text or ""]
        meta = result.usage_metadata
        return with_json(ModelResponse(text=texts[0], texts=texts, usage={
            "prompt_tokens": (meta.prompt_token_count or 0) if meta else 0,
            "completion_tokens": (meta.candidates_token_count or 0) if meta else 0},
            finish=_finish(result)), request)


def _retry_delay(exc: errors.APIError) -> float | None:
    """The wait a 429 names in its body (google.rpc.RetryInfo's retryDelay, "37s"): the
    Gemini API says it there, not in a Retry-After header, and a quota's wait is often
    longer than the backoff's first tries."""
    body = exc.details[0] if isinstance(exc.details, list) and exc.details else exc.details
    error = body.get("error") if isinstance(body, dict) else None
    for detail in (error.get("details") if isinstance(error, dict) else None) or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo") \
                and (m := re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay")))):
            return float(m.group(1))
    return None


def _thinking(setting: str) -> types.ThinkingConfig:
    """A token budget ("128", "-1") for 2.5 models or a level ("low") for 3 models, as
    `check_thinking` accepted it."""
    if setting.lstrip("-").isdigit():
        return types.ThinkingConfig(thinking_budget=int(setting))
    return types.ThinkingConfig(thinking_level=setting.upper())


def _finish(result: types.GenerateContentResponse) -> str:
    """Why the first answer ended, in `ModelResponse.finish`'s words: MAX_TOKENS is "length"
    (Gemini 2.5 counts its thinking in max_output_tokens: a cut answer is often empty); a
    prompt blocked before any answer is "blocked (REASON)"."""
    if not result.candidates:
        feedback = result.prompt_feedback
        reason = feedback.block_reason if feedback is not None else None
        return f"blocked ({getattr(reason, 'value', reason)})" if reason else ""
    reason = result.candidates[0].finish_reason
    name = str(getattr(reason, "value", reason) or "")
    return {"MAX_TOKENS": "length", "STOP": "stop"}.get(name, name)


def _candidate_text(candidate: types.Candidate) -> str:
    """The text of one candidate (`result.text` only reads the first)."""
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    return "".join(p.text for p in parts if p.text and not p.thought)
