"""What every model-driven stage shares: model options, decoding, the executor, the manifest.

A subclass says how to build the request for one row (`build`) and how to turn
a validated answer into columns (`validate` returns a dict of column values,
or raises InvalidAnswer). Everything else, retries, cache, rejects for bad
media or failed calls, usage in the manifest, lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from avcurate.media.cache import (
    DecodedMedia,
    audio_path,
    content_digest,
    decode_job,
    frames_path,
)
from avcurate.models import Executor, ModelResponse, ModelSpec, make_backend
from avcurate.models.request import ModelRequest
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.schema import with_columns
from avcurate.pipeline.stage import BaseStage, Outcome


def load_prompt(path: str, default: str) -> str:
    """A prompt template: the file given, or the packaged default under catalogs/prompts/."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    return resources.files("avcurate.catalogs").joinpath("prompts", default).read_text("utf-8")


def render(template: str, **values: str) -> str:
    """Fill `{{name}}` markers; plain braces (JSON examples in prompts) are left alone."""
    for k, v in values.items():
        template = template.replace("{{" + k + "}}", v)
    return template


@dataclass
class ModelStage(BaseStage):
    backend: str = "openai"
    model: str = ""
    base_url: str = ""
    concurrency: int = 16
    rpm: float = 0.0
    timeout: float = 120.0
    max_attempts: int = 4
    cache: bool = True
    temperature: float = 0.0
    max_tokens: int = 1024

    # what the stage decodes per row (0 frames / 0 seconds = nothing)
    decode_frames = 0
    decode_seconds = 0.0
    decode_offset = 0.0

    def __post_init__(self) -> None:
        self.spec()  # an unknown backend or a missing model fails when the recipe is planned

    def spec(self) -> ModelSpec:
        return ModelSpec(self.backend, self.model, self.base_url or None, self.concurrency,
                         self.rpm, self.timeout, self.max_attempts)

    # -- subclass hooks -----------------------------------------------------------------
    def build(self, row: dict[str, Any], media: DecodedMedia | None) -> ModelRequest:
        raise NotImplementedError

    def validate(self, response: ModelResponse) -> dict[str, Any]:
        raise NotImplementedError

    def columns(self, value: dict[str, Any] | None) -> dict[str, Any]:
        """Column values for a row (None = rejected row: all nulls)."""
        return {name: (value or {}).get(name) for name in self.adds}

    # -- machinery ----------------------------------------------------------------------
    def executor(self, ctx: StageContext) -> Executor:
        if "executor" not in self._state:
            self.spec()  # validates backend/model names before anything is built
            self._state["executor"] = Executor(
                make_backend(self.spec()), concurrency=self.concurrency, rpm=self.rpm or None,
                max_attempts=self.max_attempts,
                cache=ctx.cache("responses") if self.cache else None)
        return self._state["executor"]

    def media_path(self, row: dict[str, Any]) -> str | None:
        """The file this stage decodes for a row (the audio teacher prefers `audio`)."""
        return row["video"]

    def decode(self, rows: list[dict], ctx: StageContext) -> list[DecodedMedia | dict | None]:
        """Decoded media per row (through the run's media cache), or an error dict."""
        if not self.decode_frames and self.decode_seconds == 0:
            return [None] * len(rows)
        digests = ctx.cache("digests")
        jobs, out = {}, []
        for row in rows:
            path = self.media_path(row)
            try:
                digest = content_digest(path, digests)
            except (OSError, TypeError) as exc:
                out.append({"error": "missing_media", "detail": f"{path}: {exc}"})
                continue
            fpath = frames_path(ctx.run_dir, digest, self.decode_frames) \
                if self.decode_frames else None
            apath = audio_path(ctx.run_dir, digest, self.decode_seconds, self.decode_offset,
                               16000) if self.decode_seconds != 0 else None
            jobs[(fpath, apath)] = (path, fpath, apath, self.decode_frames, self.decode_seconds,
                                    self.decode_offset, 16000)
            out.append((fpath, apath))
        errors = dict(zip(jobs, ctx.map(decode_job, list(jobs.values())), strict=True))
        return [x if isinstance(x, dict) else errors[x] or DecodedMedia(*x) for x in out]

    def requests_for(self, table: pa.Table, ctx: StageContext):
        rows = table.to_pylist()
        media = self.decode(rows, ctx)
        requests, errors = [], {}
        for i, (row, m) in enumerate(zip(rows, media, strict=True)):
            if isinstance(m, dict):
                errors[i] = m
                requests.append(None)
            else:
                requests.append(self.build(row, m))
        return rows, requests, errors

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        rows, requests, errors = self.requests_for(table, ctx)
        todo = [r for r in requests if r is not None]
        answers = iter(self.executor(ctx).run(todo, self.validate))
        reasons, details, values = [], [], []
        for i in range(len(rows)):
            if i in errors:
                reasons.append(errors[i]["error"])
                details.append(errors[i]["detail"])
                values.append(None)
                continue
            outcome = next(answers)
            reasons.append(outcome.reason)
            details.append(outcome.detail)
            values.append(outcome.value)
        table = with_columns(table, {name: pa.array([self.columns(v)[name] if v else None
                                                     for v in values], typ)
                                     for name, typ in self.adds.items()})
        return Outcome.split(table, self.name, reasons, details)

    def manifest_extra(self) -> dict[str, Any]:
        executor = self._state.get("executor")
        return {"model": {"backend": self.backend, "model": self.model,
                          "base_url": self.base_url or None},
                "usage": executor.stats.to_dict() if executor else {}}
