"""The dedup stage: exact duplicates (same media, same normalised question and options).

One row of each duplicate group is kept: the highest composite_score when that
column exists, else the smallest id. The others are rejected with the reason
`duplicate_of:<kept id>`. Like balance, the decision is made once with DuckDB
over all shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from avcurate.stages.base import BaseStage, ShardResult
from avcurate.stages.context import StageContext
from avcurate.stages.shards import ShardTable

NORMALISE = "lower(regexp_replace(regexp_replace(trim({x}), '\\s+', ' ', 'g'), '[[:punct:][:space:]]+$', ''))"


@dataclass
class Dedup(BaseStage):
    """Reject exact duplicates (same media + normalised question + options), keeping the best one."""

    name = "dedup"
    requires = ("id", "video", "audio", "question", "options")
    adds = {}
    version = "1"
    parallel_shards = 4  # Arrow work that releases the GIL: shards read/written side by side

    _keepers: dict[int, pa.Array] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        with ShardTable(inputs, ctx.held_table) as rows:
            order = ("composite_score DESC NULLS LAST, " if "composite_score" in rows.columns()
                     else "") + "id"
            question, option = NORMALISE.format(x="question"), NORMALISE.format(x="o")
            self._keepers = rows.per_shard(
                "CASE WHEN id = first_value(id) OVER w THEN NULL ELSE first_value(id) OVER w END",
                window=f"w AS (PARTITION BY video, coalesce(audio, ''), {question}, "
                       f"list_transform(coalesce(options, []), lambda o: {option}) "
                       f"ORDER BY {order})")

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        keepers = pc.cast(self._keepers[shard], pa.string())  # null: the row is kept
        return ShardResult.split(table, self.name,
                                 pc.binary_join_element_wise("duplicate_of:", keepers, ""))
