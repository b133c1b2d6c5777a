"""The threshold stage: keep rows that pass every rule (OmniVideo-R1's heuristic filter).

Defaults follow the paper on the normalised [0, 1] scale: answer accuracy must
be perfect, question logic at least 0.8, the composite at least 0.7. The
authors' public code uses the raw 0-10 scale (10, 8, 7); our scores are
normalised, so the same rules read as below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from avcurate.filters.rules import columns_of, first_failure, parse_rules
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.stage import BaseStage, Outcome, register

DEFAULT_RULES = ["answer_accuracy == 1", "question_logic >= 0.8", "composite_score >= 0.7"]


@register
@dataclass
class Threshold(BaseStage):
    """Keep rows passing every rule; a rejected row's reason names the first rule it failed."""

    name = "threshold"
    adds = {}
    version = "1"

    rules: list[str] = field(default_factory=lambda: list(DEFAULT_RULES))

    def __post_init__(self) -> None:
        if isinstance(self.rules, str):
            self.rules = [self.rules]
        self._state["rules"] = parse_rules(self.rules)
        self.requires = columns_of(self._state["rules"])

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        failed = first_failure(table, self._state["rules"])
        reasons = [None if f is None else f"failed({f})" for f in failed]
        return Outcome.split(table, self.name, reasons)
