"""Reward functions: `(completions, rows) -> list[float]`, registered by name, combined by weight.

Built-ins: format, tcta_format, accuracy, soft_accuracy, query_intent,
modality_attention, keyframe_diversity, keyframe_count, box_iou. Register your own
with `@reward("name")`, or name any function as `package.module:function`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[[Sequence[str], Sequence[dict[str, Any]]], list[float]]
REWARDS: dict[str, RewardFn] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def register(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn
    return register


def get(name: str) -> RewardFn:
    """A reward by registry name, or any function named `package.module:function`."""
    _load_builtins()
    if ":" in name and name not in REWARDS:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load reward {name!r}: {exc}") from exc
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def _load_builtins() -> None:
    from avcurate.trainer.rewards import (  # noqa: F401  (registers them)
        accuracy,
        formats,
        keyframe,
        modality,
        query_intent,
    )


def combine(names: Sequence[str], weights: Sequence[float] | None, completions: Sequence[str],
            rows: Sequence[dict[str, Any]]) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the named rewards, and each reward's values (for metrics)."""
    weights = list(weights) if weights else [1.0] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} rewards but {len(weights)} weights")
    parts = {}
    total = [0.0] * len(completions)
    for name, w in zip(names, weights, strict=True):
        values = get(name)(completions, rows)
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for "
                             f"{len(completions)} completions")
        parts[name] = [float(v) for v in values]
        total = [t + w * v for t, v in zip(total, parts[name], strict=True)]
    return total, parts
