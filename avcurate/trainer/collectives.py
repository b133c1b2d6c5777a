"""Sums, maxima and lists over ranks; plain values when the run is one process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_sum(value: float) -> float:
    if not dist.is_initialized():
        return float(value)
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_max(value: int) -> int:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_list(values: list[float]) -> list[float]:
    """Every rank's values, rank 0's first."""
    if not dist.is_initialized():
        return list(values)
    out: list[list[float]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]
