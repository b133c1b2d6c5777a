"""Agreement figures between two raters of the same rows (two judges, or a judge and a person).

Per score dimension, on the judges' 0-10 scale: quadratic-weighted Cohen's kappa
(scikit-learn: chance-corrected, and a 7-vs-8 disagreement costs far less than 2-vs-9),
Spearman's rho (scipy: do they rank rows alike) and the mean absolute difference. For
the keep/reject decision: Cohen's kappa and the confusion counts.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from avcurate.curation.score import DIMENSIONS
from avcurate.filters.rules import Comparison, first_failure

SCORED = (*DIMENSIONS, "composite_score")
SCALE = list(range(11))  # the judge's 0-10 answers (stored as 0-1)


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def to_scale(values: list[float | None]) -> np.ndarray:
    """Stored [0, 1] scores back on the 0-10 integer scale (composites rounded)."""
    return np.rint(np.asarray(values, dtype=float) * 10).astype(int)


def dimension(a: list[float | None], b: list[float | None]) -> dict[str, Any]:
    """kappa, rho and mean absolute difference over the rows both raters scored."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    out: dict[str, Any] = {"n": len(pairs), "kappa": None, "spearman": None, "mad": None}
    if not pairs:
        return out
    x, y = (to_scale(list(v)) for v in zip(*pairs, strict=True))
    out["mad"] = float(np.abs(x - y).mean())
    with warnings.catch_warnings():  # constant ratings: kappa/rho undefined -> None
        warnings.simplefilter("ignore")
        if len(pairs) >= 2:
            out["kappa"] = _finite(cohen_kappa_score(x, y, labels=SCALE, weights="quadratic"))
        if len(set(x)) > 1 and len(set(y)) > 1:
            out["spearman"] = _finite(spearmanr(x, y).statistic)
    return out


def decision(a: list[bool | None], b: list[bool | None]) -> dict[str, Any]:
    """Cohen's kappa, the share agreeing and the confusion counts of two keep/reject lists."""
    from sklearn.metrics import cohen_kappa_score

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    confusion = {"both_keep": 0, "both_reject": 0, "only_first_keeps": 0,
                 "only_second_keeps": 0}
    for x, y in pairs:
        key = ("both_keep" if y else "only_first_keeps") if x else \
            ("only_second_keeps" if y else "both_reject")
        confusion[key] += 1
    out: dict[str, Any] = {"n": len(pairs), "kappa": None, "agreement": None,
                           "confusion": confusion}
    if pairs:
        x, y = (np.asarray(v, dtype=bool) for v in zip(*pairs, strict=True))
        out["agreement"] = float((x == y).mean())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["kappa"] = _finite(cohen_kappa_score(x, y, labels=[False, True]))
    return out


def keeps(scores: dict[str, list[float | None]], rules: list[Comparison]) -> list[bool | None]:
    """Whether the rules keep each row, judged on these scores alone (None: not scored)."""
    n = len(next(iter(scores.values())))
    table = pa.table({c: pa.array(scores.get(c, [None] * n), pa.float64()) for c in SCORED})
    failed = first_failure(table, rules).to_pylist()
    scored = [all(scores[d][i] is not None for d in DIMENSIONS if d in scores) for i in range(n)]
    return [None if not ok else f is None for ok, f in zip(scored, failed, strict=True)]


def compare(first: dict[str, list], second: dict[str, list], rules: list[Comparison],
            first_keeps: list[bool | None] | None = None,
            second_keeps: list[bool | None] | None = None) -> dict[str, Any]:
    """Every figure for two raters' aligned scores (dicts of column -> values). A rater's
    decisions are its own keep/reject where given (a person), else the rules' verdict."""
    return {
        "dimensions": {c: dimension(first[c], second[c]) for c in SCORED
                       if c in first and c in second},
        "decision": decision(first_keeps if first_keeps is not None else keeps(first, rules),
                             second_keeps if second_keeps is not None else keeps(second, rules)),
    }
