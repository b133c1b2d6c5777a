"""Model backends behind one interface, and the executor every call goes through."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from avcurate.models.errors import (
    GEMINI_KEY_MISSING,
    VLLM_HINT,
    BackendUnavailable,
    EndpointError,
    InvalidAnswer,
    ModelError,
)
from avcurate.models.executor import Executor
from avcurate.models.request import (
    AudioPart,
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    TextPart,
    VideoPart,
)

BACKENDS = ("openai", "gemini", "transformers", "vllm")
# backends that return several answers to one request (OpenAI-compatible `n`, Gemini
# `candidate_count`, vLLM's SamplingParams.n); the others answer `n` separate requests
MULTI_SAMPLE = frozenset({"openai", "gemini", "vllm"})
# the name the built-in demo model (avcurate.demo) serves under; reports and cards of a
# run it answered say so, so its labels are never mistaken for a real judge's
DEMO_MODEL = "avcurate-demo-model"
DEMO_NOTICE = ("Scores, categories, probe answers and traces here come from avcurate's built-in "
               "demo model, which only measures the colour of the frames and the pitch of the "
               "tone. It is not a real judge: use this data to see the pipeline, not to train.")


def models_used(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """The model of every finished model stage of a run: stage folder, backend, model."""
    return [{"stage": e["dir"], "backend": e["model"].get("backend") or "",
             "model": e["model"].get("model") or ""}
            for e in manifest.get("stages", []) if e.get("model")]


def demo_notice(manifest: dict[str, Any]) -> str | None:
    """DEMO_NOTICE when any stage of the run was answered by the demo model."""
    return DEMO_NOTICE if any(m["model"] == DEMO_MODEL for m in models_used(manifest)) else None


@dataclass(frozen=True)
class ModelSpec:
    """How a stage names its model: backend + model (+ base URL and call settings)."""

    backend: str
    model: str
    base_url: str | None = None
    concurrency: int = 16
    rpm: float = 0.0
    timeout: float = 120.0
    max_attempts: int = 4

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if not self.model:
            raise ValueError("a model name is required (--model)")
        if self.base_url and "@" in urlsplit(self.base_url).netloc:
            # it would be recorded in the run's manifest and echoed in messages
            raise ValueError("base_url holds credentials (USER:PASSWORD@); give the URL "
                             "without them and the key in the environment (OPENAI_API_KEY, "
                             "GEMINI_API_KEY)")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL "
                             "(e.g. http://localhost:8000/v1)")


THINKING_LEVELS = ("minimal", "low", "medium", "high")


def check_thinking(backend: str, thinking: str) -> None:
    """Refuse a thinking setting the backend cannot send, or one that is neither a token
    budget nor a level, before any row is read (Gemini itself would refuse every call)."""
    if not thinking:
        return
    if backend != "gemini":
        raise ValueError("thinking is Gemini's setting (--backend gemini); a Qwen3 model on "
                         "vLLM stops thinking when served with --default-chat-template-kwargs "
                         "'{\"enable_thinking\": false}'")
    if thinking.lower() not in THINKING_LEVELS and not re.fullmatch(r"-1|\d+", thinking):
        raise ValueError(f"thinking must be a token budget (a whole number, -1 for the "
                         f"model's choice) or a level ({', '.join(THINKING_LEVELS)}), not "
                         f"{thinking!r}")


# routes an OpenAI client appends to its base URL; a URL pasted from a curl example ends in one
ROUTES = ("/chat/completions", "/completions", "/responses")


def check_backend(spec: ModelSpec) -> None:
    """Fail now, with one line, when `spec` cannot work in this environment: its library is
    missing or its key is not set. Runs when a run is planned, so a recipe whose fourth
    stage needs Gemini stops before the first stage reads a row, not hours later. (It also
    imports the backend's client library up front, the stage's first requests then go out
    at once.)"""
    import os

    if spec.backend == "openai":
        import avcurate.models.openai_backend  # noqa: F401

        # the OpenAI client also takes its URL from OPENAI_BASE_URL
        base = (spec.base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if route := next((r for r in ROUTES if base.endswith(r)), None):
            raise BackendUnavailable(f"the base URL {base} ends in {route}, which the client "
                                     f"adds itself: give the server's root, {base[:-len(route)]}")
        if not (spec.base_url or os.environ.get("OPENAI_BASE_URL")) \
                and not os.environ.get("OPENAI_API_KEY"):
            raise BackendUnavailable(f"model {spec.model!r}: set OPENAI_API_KEY for OpenAI's API, "
                                     "or give --base-url for an OpenAI-compatible server "
                                     "(e.g. `vllm serve`)")
    elif spec.backend == "gemini":
        import avcurate.models.gemini_backend  # noqa: F401

        if not (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")):
            raise BackendUnavailable(f"model {spec.model!r}: {GEMINI_KEY_MISSING}")
    else:
        import importlib.util

        need = "vllm" if spec.backend == "vllm" else "torch"
        if importlib.util.find_spec(need) is None:
            hint = VLLM_HINT if need == "vllm" else "pip install 'avcurate[train]'"
            raise BackendUnavailable(f"the {spec.backend} backend needs {need}: {hint}")
        if spec.backend == "transformers":
            from avcurate.models.local_backends import local_model_problem

            if why := local_model_problem(spec.model):
                raise BackendUnavailable(why)


def check_reachable(backend: str, base_url: str | None) -> None:
    """Raise BackendUnavailable (one line) when the server of an `openai` or `gemini`
    backend certainly cannot be used (see `models/reachable.py`). Local backends have
    no server."""
    if backend == "openai":
        from avcurate.models.reachable import check_openai

        check_openai(base_url)
    elif backend == "gemini":
        from avcurate.models.gemini_backend import check_gemini

        check_gemini(base_url)


def make_backend(spec: ModelSpec, share: float = 1.0, **kw: Any):
    """Build the backend object for `spec` (imports heavy libraries only when used).
    `share`: this process's part of the endpoint's limits, when several processes call
    it at once (Ray actors)."""
    if spec.backend == "openai":
        from avcurate.models.openai_backend import OpenAIBackend

        return OpenAIBackend(spec.model, spec.base_url, spec.timeout, **kw)
    if spec.backend == "gemini":
        from avcurate.models.gemini_backend import GeminiBackend
        from avcurate.models.gemini_uploads import UPLOAD_BUDGET

        return GeminiBackend(spec.model, spec.base_url, spec.timeout,
                             upload_budget=int(UPLOAD_BUDGET * share), **kw)
    from avcurate.models.local_backends import TransformersBackend, VLLMBackend

    cls = TransformersBackend if spec.backend == "transformers" else VLLMBackend
    return cls(spec.model, spec.base_url, spec.timeout, **kw)


__all__ = ["BACKENDS", "MULTI_SAMPLE", "AudioPart", "BackendUnavailable", "EndpointError",
           "Executor", "ImagePart", "InvalidAnswer",
           "Message", "ModelError", "ModelRequest", "ModelResponse", "ModelSpec", "TextPart",
           "VideoPart", "check_backend", "check_reachable", "check_thinking", "make_backend"]
