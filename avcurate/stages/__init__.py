"""The stage kit: the Stage protocol, its context, the model-stage template, shard helpers.

Concrete stages live in `filters/`, `curation/`, `teachers/` and `merger/`; the runners
in `pipeline/` find them through `pipeline/registry.py`.
"""

from avcurate.stages.base import BaseStage, Resources, ShardResult, Stage, StageError
from avcurate.stages.context import StageContext

__all__ = ["BaseStage", "Resources", "ShardResult", "Stage", "StageContext", "StageError"]
