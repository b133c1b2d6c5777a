"""The threshold stage: keep rows that pass every rule (OmniVideo-R1's heuristic filter).

Defaults follow the paper on the normalised [0, 1] scale: answer accuracy must
be perfect, question logic at least 0.8, the composite at least 0.7. The
authors' public code uses the raw 0-10 scale (10, 8, 7); our scores are
normalised, so the same rules read as below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from avcurate.core.options import option
from avcurate.filters.rules import (
    Comparison,
    RuleError,
    columns_of,
    failed_rule,
    first_failure,
    null_details,
    parse_rules,
)
from avcurate.stages.base import BaseStage, ShardResult, StageError
from avcurate.stages.context import StageContext

DEFAULT_RULES = ["answer_accuracy == 1", "question_logic >= 0.8", "composite_score >= 0.7"]


@dataclass
class Threshold(BaseStage):
    """Keep rows passing every rule; a rejected row's reason names the first rule it failed."""

    name = "threshold"
    adds = {}
    version = "1"
    parallel_shards = 4  # Arrow work that releases the GIL: shards read/written side by side

    rules: list[str] = option(default_factory=lambda: list(DEFAULT_RULES), flag="--rule",
                              help="A rule 'column op number [and ...]', repeatable. Default "
                                   "(OmniVideo-R1, scores in [0, 1]): 'answer_accuracy == 1', "
                                   "'question_logic >= 0.8', 'composite_score >= 0.7'.")

    _parsed: list[Comparison] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self._parsed = parse_rules(self.rules)
        except RuleError as exc:
            raise StageError(f"stage 'threshold': {exc}") from None
        self.requires = self.numeric = columns_of(self._parsed)

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        failed = failed_rule(table, self._parsed)
        return ShardResult.split(table, self.name,
                                 first_failure(table, self._parsed, "failed({})", failed),
                                 null_details(table, self._parsed, failed))
