"""Omni-R1's keyframe rewards: temporal diversity, frame count, Hungarian box IoU.

Keyframes are read from the completion's <time>S-E</time> spans (their centres);
boxes from <box>x1,y1,x2,y2</box> tags in order; ground truth from the row
(`gt_boxes`: a list of [x1, y1, x2, y2], `k0`: the target keyframe count).

Diversity follows the paper's form overlap_punish * |J| + dist_reward * |D|
(J: consecutive keyframes in the same time bin, D: the others), divided by the
number of keyframes so it stays in [overlap_punish, dist_reward] whatever K is.
"""

from __future__ import annotations

import math
import re

import numpy as np

from avcurate.trainer.rewards import reward
from avcurate.trainer.rewards.formats import time_caption_pairs

TIME = re.compile(r"<time>\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*</time>")
BOX = re.compile(r"<box>\s*\[?\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\]?"
                 r"\s*</box>")


def keyframes(text: str) -> list[float]:
    spans = [(float(a), float(b)) for a, b in TIME.findall(text)] or \
        [(s, e) for s, e, _ in time_caption_pairs(text)]
    return sorted((a + b) / 2 for a, b in spans)


def diversity(times: list[float], bin_seconds: float = 1.0, overlap_punish: float = -0.2,
              dist_reward: float = 1.0) -> float:
    if not times:
        return 0.0
    bins = [math.floor(t / bin_seconds) for t in sorted(times)]
    overlaps = sum(1 for a, b in zip(bins, bins[1:], strict=False) if a == b)
    return (overlap_punish * overlaps + dist_reward * (len(bins) - overlaps)) / len(bins)


def count_closeness(k: int, k0: int) -> float:
    return max(0.0, 1.0 - abs(k - k0) / k0) if k0 > 0 else 0.0


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def hungarian_iou(pred: list, gt: list) -> float:
    """1 - Hungarian loss: matched IoU summed over the optimal one-to-one matching, divided by
    max(#pred, #gt) so missing and extra boxes both cost."""
    from scipy.optimize import linear_sum_assignment

    if not pred or not gt:
        return 1.0 if not pred and not gt else 0.0
    m = np.array([[iou(p, g) for g in gt] for p in pred])
    rows, cols = linear_sum_assignment(-m)
    return float(m[rows, cols].sum() / max(len(pred), len(gt)))


@reward("keyframe_diversity")
def keyframe_diversity_reward(completions, rows) -> list[float]:
    return [diversity(keyframes(c)) for c in completions]


@reward("keyframe_count")
def keyframe_count_reward(completions, rows) -> list[float]:
    return [count_closeness(len(keyframes(c)), int(r.get("k0") or 4))
            for c, r in zip(completions, rows, strict=True)]


@reward("box_iou")
def box_iou_reward(completions, rows) -> list[float]:
    out = []
    for c, r in zip(completions, rows, strict=True):
        pred = [[float(x) for x in m] for m in BOX.findall(c)]
        out.append(hungarian_iou(pred, [list(map(float, b)) for b in (r.get("gt_boxes") or [])]))
    return out
