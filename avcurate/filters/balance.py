"""The balance stage: prune long-tail categories and cap dominant ones (OmniVideo-R1).

1. Categories with fewer than `min_count` rows are dropped (`long_tail`).
2. Among the survivors, ranked by size, the largest is capped at `max_ratio`
   times the second largest (`over_cap`). With `cascade`, every category is
   capped at `max_ratio` times the (capped) size of the next one down, applied
   from the smallest up. `max_per_category` caps every category.
3. Inside a capped category the survivors are chosen by: rows with
   video_dependency == 1 and audio_dependency == 1 first, then composite_score
   descending, then id ascending, so the result is deterministic. The cap is
   hard: if the both-dependency rows alone exceed it, only the best of them
   (by composite, then id) survive.

The decision is made once over all shards with DuckDB (so it works on more
rows than fit in memory) and applied shard by shard; it is recomputed
identically on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.filters.rules import EPS
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.stage import BaseStage, Outcome, register
from avcurate.pipeline.stats import parquet_scan

REASONS = ["", "long_tail", "over_cap", "no_category"]


def plan_caps(counts: dict[str, int], *, min_count: int, max_ratio: float, cascade: bool,
              max_per_category: int) -> dict[str, int]:
    """Target size of every category (0 = dropped). Pure function of the counts."""
    survivors = sorted(((n, c) for c, n in counts.items() if n >= min_count),
                       key=lambda x: (-x[0], x[1]))
    caps = {c: 0 for c in counts}
    sizes = [n for n, _ in survivors]
    if len(sizes) >= 2:
        if cascade:
            for i in range(len(sizes) - 2, -1, -1):
                sizes[i] = min(sizes[i], math.floor(max_ratio * sizes[i + 1]))
        else:
            sizes[0] = min(sizes[0], math.floor(max_ratio * sizes[1]))
    if max_per_category > 0:
        sizes = [min(s, max_per_category) for s in sizes]
    for (_, c), size in zip(survivors, sizes, strict=True):
        caps[c] = size
    return caps


@register
@dataclass
class Balance(BaseStage):
    """Drop long-tail categories and cap the largest (OmniVideo-R1's categorical balancing)."""

    name = "balance"
    requires = ("id", "category", "video_dependency", "audio_dependency", "composite_score")
    adds = {}
    version = "1"

    min_count: int = 10
    max_ratio: float = 3.0
    cascade: bool = False
    max_per_category: int = 0

    def __post_init__(self) -> None:
        if self.max_ratio < 1:
            raise ValueError("max_ratio must be at least 1")

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        con = duckdb.connect()
        files = [str(p) for p in inputs]
        con.execute("CREATE TEMP VIEW rows AS SELECT *, filename AS _file, file_row_number AS _rn "
                    f"FROM {parquet_scan(files, positions=True)}")
        counts = dict(con.execute("SELECT category, count(*) FROM rows WHERE category IS NOT NULL "
                                  "GROUP BY 1").fetchall())
        caps = plan_caps(counts, min_count=self.min_count, max_ratio=self.max_ratio,
                         cascade=self.cascade, max_per_category=self.max_per_category)
        con.register("caps", pa.table({"category": pa.array(list(caps), pa.string()),
                                       "cap": pa.array(list(caps.values()), pa.int64())}))
        con.register("files", pa.table({"_file": files, "_idx": list(range(len(files)))}))
        reason = con.sql(
            f"""
            SELECT CASE WHEN r.category IS NULL THEN 3
                   WHEN c.cap = 0 THEN 1
                   WHEN row_number() OVER (
                          PARTITION BY r.category
                          ORDER BY (video_dependency >= 1 - {EPS} AND audio_dependency >= 1 - {EPS}) DESC,
                                   composite_score DESC NULLS LAST, id) > c.cap THEN 2
                   ELSE 0 END AS reason
            FROM rows r LEFT JOIN caps c USING (category) JOIN files f USING (_file)
            ORDER BY f._idx, r._rn
            """
        ).to_arrow_table().column("reason").to_numpy().astype(np.int8)
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        codes = dict(enumerate(np.split(reason, np.cumsum(sizes)[:-1])))
        self._state |= {"codes": codes, "before": counts,
                        "after": {c: n for c, n in caps.items() if n > 0}}
        con.close()

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        codes = self._state["codes"][ctx.shard_index]
        return Outcome.split(table, self.name, [REASONS[c] or None for c in codes.tolist()])

    def manifest_extra(self) -> dict:
        order = sorted(self._state["before"], key=lambda c: (-self._state["before"][c], c))
        return {"categories_before": {c: self._state["before"][c] for c in order},
                "categories_after": {c: self._state["after"].get(c, 0) for c in order}}
