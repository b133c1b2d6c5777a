"""A tiny, safe rule language for thresholds: `column op number [and column op number ...]`.

No `eval`: a regular expression tokenises each comparison, and pyarrow compute
applies it to a whole column at once. A small tolerance makes boundary values
such as a composite of exactly 0.7 pass `>= 0.7` despite float rounding
(e.g. (0.6 + 0.8) / 2 is 0.7000000000000001, but (0.9 + 0.5) / 2 is 0.7 minus
a hair).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avcurate.core.arrow_values import from_numpy, scalar, strings, to_numpy

EPS = 1e-9
COMPARISON_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class RuleError(ValueError):
    """A rule that does not parse."""


@dataclass(frozen=True)
class Comparison:
    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def mask(self, table: pa.Table) -> np.ndarray:
        """True where the row satisfies the comparison (nulls never do)."""
        col = pc.cast(table.column(self.column), pa.float64())
        value, below, above, eps = (scalar(v) for v in (self.value, self.value - EPS,
                                                        self.value + EPS, EPS))
        ops = {
            "==": lambda c: pc.less_equal(pc.abs(pc.subtract(c, value)), eps),
            "!=": lambda c: pc.greater(pc.abs(pc.subtract(c, value)), eps),
            ">=": lambda c: pc.greater_equal(c, below),
            "<=": lambda c: pc.less_equal(c, above),
            ">": lambda c: pc.greater(c, above),
            "<": lambda c: pc.less(c, below),
        }
        return to_numpy(ops[self.op](col))  # null compares to null: False


def parse_rule(text: str) -> list[Comparison]:
    """Parse `a >= 0.8 and b == 1` into comparisons; raise RuleError with the bad part."""
    parts = re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE)
    out = []
    for part in parts:
        m = COMPARISON_RE.match(part)
        if not m:
            raise RuleError(
                f"cannot parse rule {part!r} (in {text!r}); write 'column op number' with op one of "
                "== != >= <= > <, joined by 'and'"
            )
        out.append(Comparison(m.group(1), m.group(2), float(m.group(3))))
    return out


def parse_rules(texts: list[str]) -> list[Comparison]:
    return [c for t in texts for c in parse_rule(t)]


def columns_of(rules: list[Comparison]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.column for r in rules))


def failed_rule(table: pa.Table, rules: list[Comparison]) -> np.ndarray:
    """Per row: the index of the first rule it fails, len(rules) when it passes them all.
    Vectorised: one mask per rule."""
    failed = np.full(table.num_rows, len(rules), dtype=np.int64)
    for i in range(len(rules) - 1, -1, -1):  # last to first: the first failure wins
        failed[~rules[i].mask(table)] = i
    return failed


def first_failure(table: pa.Table, rules: list[Comparison], fmt: str = "{}",
                  failed: np.ndarray | None = None) -> pa.Array:
    """Per row: the text of the first rule it fails (through `fmt`), or null when it passes
    them all: one `take` from the rules' names."""
    failed = failed_rule(table, rules) if failed is None else failed
    return strings([fmt.format(r) for r in rules] + [None]).take(from_numpy(failed))


def null_details(table: pa.Table, rules: list[Comparison], failed: np.ndarray) -> pa.Array:
    """Per row: a note when the first rule it failed had no value to compare (null or NaN:
    a score the row never got, as the probe gives none to an open-ended question), else
    null. Without it such a row's "failed(blind_answerable <= 0.25)" read as measured."""
    which = np.full(table.num_rows, len(rules), dtype=np.int64)
    for i, rule in enumerate(rules):
        empty = to_numpy(pc.is_null(table.column(rule.column), nan_is_null=True))
        which[(failed == i) & empty] = i
    notes = [f"{r.column} is null: the row has no value to compare" for r in rules]
    return strings([*notes, None]).take(from_numpy(which))


def all_pass(table: pa.Table, rules: list[Comparison]) -> np.ndarray:
    ok = np.ones(table.num_rows, dtype=bool)
    for rule in rules:
        ok &= rule.mask(table)
    return ok
