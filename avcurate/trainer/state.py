"""What a training step works with, and the precision context its forwards run under.

Its own module so the loop and the rollout groups (`groups.py`) share it without importing
each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from avcurate.trainer.config import TrainConfig
from avcurate.trainer.losses import LossConfig
from avcurate.trainer.rewards import Reward
from avcurate.trainer.unusable import SkippedRows


def compute_context(mixed: bool, world: int, device: torch.device):
    """bfloat16 compute over float32 weights: FSDP2 casts the gathered weights itself when
    sharded; on one rank autocast does it. Anything else runs as loaded."""
    if mixed and world == 1:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TrainState:
    """Everything a training step works with, built once by `train`."""

    cfg: TrainConfig
    rank: int
    world: int
    rows: Sequence[dict[str, Any]]  # trainer.data.Rows: dicts made when drawn
    policy: Any
    model: torch.nn.Module
    ref: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_cfg: LossConfig
    rewards: list[Reward]
    variants: tuple[str, ...]  # extra rollouts the rewards declare (e.g. video_only)
    mixed: bool = False  # bfloat16 compute over float32 weights
    device: torch.device = torch.device("cpu")
    skipped: SkippedRows = field(default_factory=SkippedRows)  # rows no prompt is made of
    eval_rows: Sequence[dict[str, Any]] | None = None  # the validation rows (--eval-every)

    def compute(self):
        return compute_context(self.mixed, self.world, self.device)
