"""Gemini through google-genai.

Small media go inline; a video larger than `inline_limit` bytes is uploaded
through the Files API and referenced by URI. JSON answers use
`response_mime_type="application/json"` with the schema. The key comes from
GEMINI_API_KEY or GOOGLE_API_KEY and is never stored.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from google import genai
from google.genai import errors, types

from avcurate.models.errors import GEMINI_KEY_MISSING, ModelError
from avcurate.models.http_errors import TIMEOUT_ERRORS, TRANSPORT_ERRORS
from avcurate.models.request import (
    AudioPart,
    ImagePart,
    ModelRequest,
    ModelResponse,
    TextPart,
    VideoPart,
    with_json,
)

INLINE_LIMIT = 20 * 1024 * 1024





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
                 inline_limit: int = INLINE_LIMIT) -> None:
        self.model, self.base_url, self.timeout, self.inline_limit = model, base_url, timeout, inline_limit
        self._client: genai.Client | None = None

    def client(self) -> genai.Client:
        if self._client is None:
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            if not key:
                raise ModelError(GEMINI_KEY_MISSING, retryable=False, kind="no_api_key")
            # attempts=1: our executor retries (with the stage's --max-attempts). Without
            # retry options the SDK sleeps 1-10 s and tries once more on every connection
            # error: a refused URL took 23 s to stop the stage instead of 1 s.
            options = types.HttpOptions(timeout=int(self.timeout * 1000),
                                        retry_options=types.HttpRetryOptions(attempts=1),
                                        **({"base_url": self.base_url} if self.base_url else {}))
            self._client = genai.Client(api_key=key, http_options=options)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
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

    async def _parts(self, request: ModelRequest) -> tuple[str | None, list[types.Content]]:
        system, contents = None, []
        for m in request.messages:
            if m.role == "system":
                system = "\n".join(p.text for p in m.parts if isinstance(p, TextPart))
                continue
            parts = [await self._part(p) for p in m.parts]
            contents.append(types.Content(role="model" if m.role == "assistant" else "user",
                                          parts=parts))
        return system, contents

    async def _part(self, part) -> types.Part:
        if isinstance(part, TextPart):
            return types.Part.from_text(text=part.text)
        if isinstance(part, ImagePart):
            return types.Part.from_bytes(data=part.jpeg, mime_type="image/jpeg")
        if isinstance(part, AudioPart):
            return types.Part.from_bytes(data=part.wav, mime_type="audio/wav")
        if isinstance(part, VideoPart):
            path = Path(part.path)
            if path.stat().st_size <= self.inline_limit:
                return types.Part.from_bytes(data=path.read_bytes(), mime_type="video/mp4")
            return await self._upload(path)
        raise TypeError(f"unsupported part {part!r}")

    async def _upload(self, path: Path) -> types.Part:
        """Large videos go through the Files API; wait until the file is processed."""
        file = await self.client().aio.files.upload(file=str(path))
        while file.state is not None and str(file.state).endswith("PROCESSING"):
            await asyncio.sleep(2)
            file = await self.client().aio.files.get(name=file.name)
        return types.Part.from_uri(file_uri=file.uri, mime_type=file.mime_type or "video/mp4")

    def config(self, request: ModelRequest, system: str | None) -> types.GenerateContentConfig:
        kw = {}
        if request.json_schema is not None:
            kw = {"response_mime_type": "application/json",
                  "response_schema": _schema_for_gemini(request.json_schema)}
        if request.n > 1:
            kw["candidate_count"] = request.n
        return types.GenerateContentConfig(
            temperature=request.temperature, max_output_tokens=request.max_tokens,
            top_p=request.top_p, system_instruction=system, **kw)

    async def call(self, request: ModelRequest) -> ModelResponse:
        try:
            system, contents = await self._parts(request)
            result = await self.client().aio.models.generate_content(
                model=self.model, contents=contents, config=self.config(request, system))
        except errors.APIError as exc:
            code = exc.code or 0
            retry_after = None
            if getattr(exc, "response", None) is not None and hasattr(exc.response, "headers"):
                value = exc.response.headers.get("retry-after")
                retry_after = float(value) if value and value.replace(".", "", 1).isdigit() else None
            raise ModelError(str(exc), retryable=code == 429 or code >= 500 or code == 408,
                             kind="rate_limited" if code == 429 else f"http_{code}",
                             retry_after=retry_after) from exc
        except TIMEOUT_ERRORS as exc:
            raise ModelError(str(exc) or f"no answer within the {self.timeout:g} s timeout",
                             retryable=True, kind="timeout") from exc
        except TRANSPORT_ERRORS as exc:
            raise ModelError(str(exc), retryable=True, kind="connection") from exc
        texts = [_candidate_text(c) for c in result.candidates or []] or [result.text or ""]
        meta = result.usage_metadata
        return with_json(ModelResponse(text=texts[0], texts=texts, usage={
            "prompt_tokens": (meta.prompt_token_count or 0) if meta else 0,
            "completion_tokens": (meta.candidates_token_count or 0) if meta else 0}), request)


def _candidate_text(candidate: types.Candidate) -> str:
    """The text of one candidate (`result.text` only reads the first)."""
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    return "".join(p.text for p in parts if p.text and not p.thought)
