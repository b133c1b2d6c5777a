"""One request type and one response type for every model backend.

A request is a list of messages whose parts are text, images (decoded frames),
audio (a mono PCM clip) or a video file, plus sampling parameters and an
optional JSON schema for the answer. Every request has a stable hash (media
enter it by content hash), which keys the response cache.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from avcurate.core.answers import after_thinking, unfenced
from avcurate.core.images import encode_jpeg, jpeg_size, pixels_digest
from avcurate.core.store import file_digest


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False)
class ImagePart:
    """An RGB uint8 frame [H, W, 3]; sent as JPEG. Built with `from_jpeg` from what the
    media cache keeps (the JPEG and the digest of the pixels it was encoded from), it is
    the same part: the same bytes are sent and the same key finds its cached answers."""

    pixels: np.ndarray | None
    timestamp_s: float | None = None
    encoded: bytes | None = None
    pixels_sha256: str | None = None

    @classmethod
    def from_jpeg(cls, jpeg: bytes, pixels_sha256: str, timestamp_s: float | None = None
                  ) -> ImagePart:
        return cls(None, timestamp_s, jpeg, pixels_sha256)

    @cached_property
    def jpeg(self) -> bytes:
        return self.encoded if self.encoded is not None else encode_jpeg(self.pixels)

    @cached_property
    def jpeg_b64(self) -> str:
        """Base64 of the JPEG, once per part (a part sent in several requests is encoded once)."""
        return b64(self.jpeg)

    def digest(self) -> str:
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return self.pixels_sha256 or pixels_digest(self.pixels)

    @cached_property
    def size(self) -> tuple[int, int]:
        """(width, height) as sent."""
        if self.encoded is not None:
            return jpeg_size(self.encoded)
        return self.pixels.shape[1] // 2 * 2, self.pixels.shape[0] // 2 * 2  # encode_jpeg's


@dataclass(frozen=True, eq=False)
class AudioPart:
    """Mono float32 PCM at `sample_rate`; sent as a 16-bit wav."""

    pcm: np.ndarray
    sample_rate: int = 16000

    @cached_property
    def wav(self) -> bytes:
        return encode_wav(self.pcm, self.sample_rate)

    @cached_property
    def wav_b64(self) -> str:
        return b64(self.wav)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate

    def digest(self) -> str:
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.pcm).tobytes()).hexdigest()


@dataclass(frozen=True)
class VideoPart:
    """A video file, sent whole (Gemini, omni models) or by path (vLLM `file://`)."""

    path: str

    def digest(self) -> str:
        return file_digest(self.path)


Part = TextPart | ImagePart | AudioPart | VideoPart


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class ModelRequest:
    messages: tuple[Message, ...]
    temperature: float = 0.0
    max_tokens: int = 1024
    top_p: float = 1.0
    json_schema: dict[str, Any] | None = None
    n: int = 1        # answers wanted from this one request (OpenAI `n`, Gemini candidate_count)
    thinking: str = ""  # Gemini's thinking budget ("128") or level ("low"); "" = the default
    sample: int = 0   # which of several identical requests this is (separate cache entries)
    # a backend's encoded form of this request, made by its `prepare` outside the event loop
    # and taken (popped) by its `call`; not part of the request's identity
    prepared: dict[str, Any] = field(default_factory=dict, compare=False, hash=False,
                                     repr=False)

    def video_bytes(self) -> int:
        """The size of the video files this request sends whole: what its encoded body holds,
        a third more in base64 (frames and audio clips are small beside them)."""
        total = 0
        for m in self.messages:
            for p in m.parts:
                if isinstance(p, VideoPart):
                    with contextlib.suppress(OSError):  # a missing file fails at the call
                        total += os.stat(p.path).st_size
        return total

    def describe(self) -> dict[str, Any]:
        """A JSON-able description with media replaced by content hashes (the cache key's input)."""
        out = {
            "messages": [{"role": m.role, "parts": [_describe(p) for p in m.parts]}
                         for m in self.messages],
            "temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
            "json_schema": self.json_schema,
        }
        # only when set, so the keys of single-answer requests cached before stay valid
        return out | ({"n": self.n} if self.n != 1 else {}) \
            | ({"sample": self.sample} if self.sample else {}) \
            | ({"thinking": self.thinking} if self.thinking else {})

    def key(self, backend: str, model: str) -> str:
        payload = json.dumps({"backend": backend, "model": model, **self.describe()},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    @property
    def text(self) -> str:
        return "\n".join(p.text for m in self.messages for p in m.parts if isinstance(p, TextPart))

    def count(self, kind: type) -> int:
        return sum(isinstance(p, kind) for m in self.messages for p in m.parts)


@dataclass
class ModelResponse:
    text: str
    json: Any = None
    usage: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    texts: list[str] = field(default_factory=list)  # every answer of a request with n > 1
    # why the (first) answer ended: "stop" (or "" when the backend does not say), "length"
    # at the request's max_tokens (OpenAI's finish_reason, Gemini's MAX_TOKENS), else the
    # backend's own word ("content_filter", Gemini's "SAFETY", "blocked (...)")
    finish: str = ""

    @property
    def cut(self) -> bool:
        """The answer stopped at max_tokens. A thinking model (Gemini 2.5, Qwen3) spends
        those tokens on its thinking first, so a cut answer is often empty or all thinking."""
        return self.finish == "length"

    def __post_init__(self) -> None:
        if not self.texts:
            self.texts = [self.text]


def _describe(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ImagePart):
        return {"image": part.digest(), "t": part.timestamp_s}
    if isinstance(part, AudioPart):
        return {"audio": part.digest(), "sr": part.sample_rate}
    return {"video": part.digest()}


def encode_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(pcm, -1, 1), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def with_json(response: ModelResponse, request: ModelRequest) -> ModelResponse:
    """Attach the parsed JSON answer when the request asked for one (None if it is not JSON:
    the stage's validator turns that into a retry, then a reject)."""
    if request.json_schema is not None:
        try:
            response.json = parse_json_answer(response.text)
        except ValueError:
            response.json = None
    return response


def parse_json_answer(text: str) -> Any:
    """The JSON object in a model's answer: plain, fenced in ```json, or embedded in prose;
    of a thinking model's answer, only what follows its thinking (a draft it wrote while
    thinking is not its answer).

    Raises ValueError when there is none.
    """
    stripped = unfenced(after_thinking(text))
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    start = stripped.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(stripped[start:])
            return obj
        except json.JSONDecodeError:
            start = stripped.find("{", start + 1)
    raise ValueError(f"no JSON object in the answer: {text[:120]!r}")
