"""Deprecated import path, kept so plugins written for v0.1 still import and run.

New code imports from `avcurate.stages` (the protocol) and `avcurate.pipeline.registry`.
`Outcome` is the old name of `ShardResult`; a v0.1 stage's `process(table, ctx)` is
adapted to today's `process(table, ctx, shard)`.
"""

from __future__ import annotations

import inspect
import warnings

from avcurate.pipeline.registry import available, create, register
from avcurate.stages.base import BaseStage as _BaseStage
from avcurate.stages.base import Resources, ShardResult, Stage, StageError, fingerprint

Outcome = ShardResult


class BaseStage(_BaseStage):
    """The v0.1 base class: subclasses may still define `process(self, table, ctx)`."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        old = cls.__dict__.get("process")
        if old is not None and len(inspect.signature(old).parameters) == 3:
            warnings.warn(f"{cls.__qualname__}.process(table, ctx) is the v0.1 signature; "
                          "define process(table, ctx, shard)", DeprecationWarning, stacklevel=2)

            def process(self, table, ctx, shard, _old=old):
                return _old(self, table, ctx)

            cls.process = process


__all__ = ["BaseStage", "Outcome", "Resources", "ShardResult", "Stage", "StageError", "available",
           "create", "fingerprint", "register"]
