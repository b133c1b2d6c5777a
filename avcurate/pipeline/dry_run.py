"""`--dry-run` for model stages: how many calls, roughly how many input tokens, and one
fully rendered example request, without calling any model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.core.store import RunStore, read_parquet
from avcurate.models.request import AudioPart, ImagePart, ModelRequest, TextPart, VideoPart
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.registry import create
from avcurate.pipeline.runner import MissingColumns
from avcurate.stages.context import StageContext
from avcurate.stages.model_stage import ModelStage

# Rough per-item token costs, for an order-of-magnitude estimate only.
TOKENS_PER_IMAGE = 258  # Gemini's count for an image
TOKENS_PER_AUDIO_SECOND = 32
TOKENS_PER_VIDEO_SECOND = 300
EXACT_UP_TO = 2000


def image_tokens(part: ImagePart, backend: str) -> int:
    """An image's tokens: Gemini's fixed count, else one per 28x28 pixels, as the Qwen2.5
    models an OpenAI-compatible (vLLM) server usually holds count them. A flat 258 for
    every backend made 8 frames of 1080p ~2,100 tokens where a Qwen server makes ~21,500."""
    if backend == "gemini":
        return TOKENS_PER_IMAGE
    width, height = part.size
    return -(-width // 28) * -(-height // 28)


def image_rule(backend: str) -> str:
    """How `image_tokens` counts for `backend`, for the dry run's line."""
    return f"{TOKENS_PER_IMAGE}/image" if backend == "gemini" else "an image 1 per 28x28 pixels"


def estimate_tokens(request: ModelRequest, video_seconds: float = 0.0,
                    backend: str = "openai") -> int:
    total = 0
    for m in request.messages:
        for p in m.parts:
            if isinstance(p, TextPart):
                total += len(p.text) // 4 + 1
            elif isinstance(p, ImagePart):
                total += image_tokens(p, backend)
            elif isinstance(p, AudioPart):
                total += int(p.seconds * TOKENS_PER_AUDIO_SECOND)
            elif isinstance(p, VideoPart):
                total += int(video_seconds * TOKENS_PER_VIDEO_SECOND)
    return total


def _elide(value: Any) -> Any:
    """Shorten base64 payloads so the example request fits on a screen."""
    if isinstance(value, dict):
        return {k: _elide(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_elide(v) for v in value]
    if isinstance(value, str) and len(value) > 200 and (";base64," in value or " " not in value):
        return value[:60] + f"…({len(value):,} chars)"
    return value


def rendered(stage: ModelStage, request: ModelRequest) -> dict[str, Any]:
    if stage.backend == "openai":
        from avcurate.models.openai_backend import OpenAIBackend

        body = OpenAIBackend(stage.model, stage.base_url or None).render(request)
    else:
        body = {"model": stage.model, **request.describe()}
    return _elide(body)


def first_rows(files: list[Path], n: int) -> pa.Table:
    """The first `n` rows of the shards `files`, reading only the shards they are in: the
    plan of a stage over 10M rows read every row, all columns, into memory to use 2,000."""
    tables, have = [], 0
    for path in files:
        if tables and have >= n:
            break
        tables.append(read_parquet(path))
        have += tables[-1].num_rows
    return pa.concat_tables(tables).slice(0, n)


def dry_run(run_dir, spec: StageSpec) -> str:
    stage = create(spec.name, spec.options)
    if not isinstance(stage, ModelStage):
        raise ValueError(f"{spec.name} is not a model stage")
    store = RunStore(run_dir)
    last = store.load_manifest()["stages"][-1]
    inputs = store.shards(store.root / last["dir"])
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in inputs)
    have = pq.read_schema(inputs[0]).names if inputs else []
    if inputs and (missing := [c for c in stage.requires if c not in have]):
        raise MissingColumns(spec.name, missing, have)  # as a run of the stage would say
    ctx = StageContext(run_dir=store.root, stage_dir=store.root / "dry-run")
    try:
        sample_rows = min(rows, EXACT_UP_TO)
        table = first_rows(inputs, sample_rows)
        per_row, errors = stage.first_requests(table, ctx)
        built = [r for requests in per_row for r in requests]
        cache = ctx.cache("responses") if stage.cache else None
        keys = [r.key(stage.backend, stage.model) for r in built]
        hits = len(cache.get_many(keys)) if cache is not None else 0
        durations = table.column("duration_s").to_pylist() if "duration_s" in table.column_names \
            else [0.0] * table.num_rows
        tokens = sum(estimate_tokens(r, d or 0.0, stage.backend) for requests, d in zip(
            per_row, durations, strict=True) for r in requests)
    finally:
        ctx.close()
    scale = rows / sample_rows if sample_rows else 0
    calls = round((len(built) - hits) * scale)
    samples = sum(r.n for r in built)
    lines = [
        f"[bold]{spec.name}[/] with {stage.backend}:{stage.model} on {rows:,} rows"
        + ("" if scale == 1 or not rows else f" (estimated from the first {sample_rows:,})"),
        f"  {calls:,} calls to make"
        + (f", {round(samples * scale):,} samples in all" if samples != len(built) else "")
        + f" ({round(hits * scale):,} answers already cached, "
        f"{round(errors * scale):,} rows rejected before any call: unreadable media)",
        f"  about {round(tokens * scale):,} input tokens (rough: {image_rule(stage.backend)}, "
        f"{TOKENS_PER_AUDIO_SECOND}/s of audio, text/4)",
    ]
    if built:
        lines += ["  example request:", json.dumps(rendered(stage, built[0]), indent=2,
                                                   ensure_ascii=False)]
    return "\n".join(lines)
