"""Rewards: objects that score completions, built by name from the training settings.

A reward is called as `reward(completions, rows) -> list[float]` and declares the extra
rollouts it needs in `rollouts` (e.g. `modality_attention` needs each prompt also rolled
out without its video and without its audio; the trainer generates exactly what the
chosen rewards declare). Settings (λ, the judge) live on the reward object, built by
`build(names, settings)`; there are no module globals.

Built-ins: format, tcta_format, accuracy, soft_accuracy, query_intent,
modality_attention, keyframe_diversity, keyframe_count, box_iou. A plain function
registered with `@reward("name")`, or named as `package.module:function`, works too.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from avcurate.core.options import did_you_mean

RewardFn = Callable[[Sequence[str], Sequence[dict[str, Any]]], list[float]]


@dataclass
class RewardSettings:
    """What configurable rewards read: the modality-attention bonus and the judge's model."""

    attention_lambda: float = 0.3
    attention_strict: bool = False
    judge_backend: str = ""
    judge_model: str = ""
    judge_base_url: str = ""
    _judge: Any = field(default=None, init=False, repr=False)

    def judge(self):
        """The judge (built on first use), for rewards that ask a model."""
        from avcurate.trainer.rewards.judge import Judge

        if self._judge is None:
            if not (self.judge_backend and self.judge_model):
                raise ValueError("this reward needs a judge: set judge_backend and judge_model "
                                 "(--judge-backend, --judge-model)")
            self._judge = Judge(self.judge_backend, self.judge_model, self.judge_base_url or None)
        return self._judge

    def close(self) -> None:
        """Close the judge, if one was built (a later `judge()` builds it again)."""
        if self._judge is not None:
            self._judge.close()
            self._judge = None


@runtime_checkable
class Reward(Protocol):
    name: str
    rollouts: tuple[str, ...]

    def __call__(self, completions: Sequence[str], rows: Sequence[dict[str, Any]]
                 ) -> list[float]: ...


@dataclass(frozen=True)
class FunctionReward:
    """A plain reward function as a Reward (no extra rollouts, no settings)."""

    name: str
    fn: RewardFn
    rollouts: tuple[str, ...] = ()

    def __call__(self, completions, rows) -> list[float]:
        return self.fn(completions, rows)


Factory = Callable[[RewardSettings], Reward]
REWARDS: dict[str, Factory] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a plain function as reward `name`."""
    def register(fn: RewardFn) -> RewardFn:
        REWARDS[name] = lambda settings: FunctionReward(name, fn)
        return fn
    return register


def register_factory(name: str, factory: Factory) -> None:
    """Register a reward that is built from the settings (a class taking settings)."""
    REWARDS[name] = factory


def _load_builtins() -> None:
    from avcurate.trainer.rewards import (  # noqa: F401  (registers them)
        accuracy,
        formats,
        keyframe,
        modality,
        query_intent,
    )


def get(name: str, settings: RewardSettings | None = None) -> Reward:
    """The reward `name`, built with `settings`; or any function named `package.module:function`."""
    _load_builtins()
    settings = settings or RewardSettings()
    if ":" in name and name not in REWARDS:
        module, _, attr = name.partition(":")
        try:
            return FunctionReward(name, getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load reward {name!r}: {exc}") from exc
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}{did_you_mean(name, REWARDS)} "
                         f"(available: {', '.join(sorted(REWARDS))})")
    return REWARDS[name](settings)


def build(names: Sequence[str], settings: RewardSettings | None = None) -> list[Reward]:
    """Every named reward, built once (before training starts, so a typo fails early)."""
    return [get(n, settings) for n in names]


def rollouts_needed(rewards: Sequence[Reward]) -> tuple[str, ...]:
    """The extra rollout variants the rewards declare, each once, in a stable order."""
    return tuple(dict.fromkeys(v for r in rewards for v in r.rollouts))


def combine(rewards: Sequence[Reward | str], weights: Sequence[float] | None,
            completions: Sequence[str], rows: Sequence[dict[str, Any]]
            ) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the rewards, and each reward's values (for metrics)."""
    built = [get(r) if isinstance(r, str) else r for r in rewards]
    weights = list(weights) if weights else [1.0] * len(built)
    if len(weights) != len(built):
        raise ValueError(f"{len(built)} rewards but {len(weights)} weights")
    parts = {}
    total = [0.0] * len(completions)
    for r, w in zip(built, weights, strict=True):
        values = r(completions, rows)
        if len(values) != len(completions):
            raise ValueError(f"reward {r.name!r} returned {len(values)} values for "
                             f"{len(completions)} completions")
        parts[r.name] = [_score(r.name, i, v) for i, v in enumerate(values)]
        total = [t + w * v for t, v in zip(total, parts[r.name], strict=True)]
    return total, parts


def _score(name: str, i: int, value: Any) -> float:
    """One reward value as a finite float: a None or a NaN (a custom reward that could not
    score a completion) would turn every advantage of its group, then the weights, into
    NaN without a word; it stops training naming the reward instead."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"reward {name!r} gave {value!r} for completion {i}; a reward must "
                         "be a finite number (give 0 to a completion it cannot score)")
    return number
