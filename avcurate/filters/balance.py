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
   (by composite, then id) survive. With `dependency = "measured"` the first key is
   the probe's min(measured_video_dependency, measured_audio_dependency) instead.

The decision is made once over all shards with DuckDB (so it works on more
rows than fit in memory) and applied shard by shard; it is recomputed
identically on resume. Only the rows of capped categories are ranked, and only
the positions of those beyond a cap are kept between the two steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from avcurate.core.arrow_values import from_numpy, strings, to_numpy
from avcurate.core.options import option
from avcurate.filters.rules import EPS
from avcurate.stages.base import BaseStage, ShardResult
from avcurate.stages.context import StageContext
from avcurate.stages.shards import ShardTable

REASONS = ["", "long_tail", "over_cap", "no_category"]
DEPENDENCY = ("judge", "measured")


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


@dataclass
class Balance(BaseStage):
    """Drop long-tail categories and cap the largest (OmniVideo-R1's categorical balancing)."""

    name = "balance"
    requires = ("id", "category", "video_dependency", "audio_dependency", "composite_score")
    adds = {}
    version = "1"
    parallel_shards = 4  # Arrow work that releases the GIL: shards read/written side by side

    min_count: int = option(10, min=0, help="Drop categories with fewer rows (long tail).")
    max_ratio: float = option(3.0, min=1, max=1e6,
                              help="Largest category at most this times the second largest.")
    cascade: bool = option(False, help="Cap every category at max-ratio times the next one down.")
    max_per_category: int = option(0, min=0, help="Cap every category (0 = no cap).")
    dependency: str = option("judge", choices=DEPENDENCY, help="Which dependency orders a "
                             "capped category: judge (OmniVideo-R1: rows the judge rated 10/10 "
                             "on both first) or measured (the probe's: rows whose answer needs "
                             "both the picture and the sound most first, i.e. by "
                             "min(measured_video_dependency, measured_audio_dependency); rows "
                             "the probe did not measure fall back to the judge's scores).")

    _over: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)
    _dropped: pa.Array = field(default_factory=lambda: pa.nulls(0, pa.string()), init=False,
                               repr=False, compare=False)
    _before: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _after: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dependency == "measured":
            self.requires = ("id", "category", "measured_video_dependency",
                             "measured_audio_dependency", "composite_score")

    def _order(self, columns: list[str]) -> str:
        judge = f"(video_dependency >= 1 - {EPS} AND audio_dependency >= 1 - {EPS})"
        if self.dependency == "judge":
            return f"{judge} DESC"
        measured = "least(measured_video_dependency, measured_audio_dependency)"
        if "video_dependency" in columns and "audio_dependency" in columns:
            measured = f"coalesce({measured}, least(video_dependency, audio_dependency))"
        return f"{measured} DESC NULLS LAST"

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        """Count the categories, plan the caps, and rank only the rows of capped
        categories: the shards' rows beyond a cap are all that is kept (per shard, as
        row positions); dropped categories and nulls are told apart in `process`."""
        with ShardTable(inputs, ctx.held_table) as rows:
            counts = dict(rows.con.execute("SELECT category, count(*) FROM rows WHERE category "
                                           "IS NOT NULL GROUP BY 1").fetchall())
            caps = plan_caps(counts, min_count=self.min_count, max_ratio=self.max_ratio,
                             cascade=self.cascade, max_per_category=self.max_per_category)
            capped = {c: n for c, n in caps.items() if 0 < n < counts[c]}
            self._over = self._over_cap(rows, capped) if capped else {}
        self._dropped = strings([c for c, n in caps.items() if n == 0])
        self._before = counts
        self._after = {c: n for c, n in caps.items() if n > 0}

    def _over_cap(self, rows: ShardTable, capped: dict[str, int]) -> dict[int, np.ndarray]:
        """Row positions, per shard, of the rows ranked beyond their category's cap."""
        rows.con.register("caps", pa.table({
            "category": strings(list(capped)),
            "cap": from_numpy(np.array(list(capped.values()), np.int64))}))
        over = rows.con.sql(
            f"""SELECT _shard, _row FROM (
                    SELECT r._shard, r._row, c.cap, row_number() OVER (
                        PARTITION BY r.category
                        ORDER BY {self._order(rows.columns())},
                                 composite_score DESC NULLS LAST, id) AS rank
                    FROM rows r JOIN caps c USING (category))
                WHERE rank > cap""").to_arrow_table()
        shards, positions = (to_numpy(over.column(c)) for c in ("_shard", "_row"))
        return {int(k): np.sort(positions[shards == k]) for k in np.unique(shards)}

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        category = table.column("category")
        codes = np.zeros(table.num_rows, dtype=np.int64)
        codes[to_numpy(pc.is_in(category, value_set=self._dropped))] = 1
        codes[self._over.get(shard, np.empty(0, np.int64))] = 2
        codes[to_numpy(pc.is_null(category))] = 3
        reasons = strings([None, *REASONS[1:]]).take(from_numpy(codes))
        return ShardResult.split(table, self.name, reasons)

    def summary(self) -> dict:
        order = sorted(self._before, key=lambda c: (-self._before[c], c))
        return {"categories_before": {c: self._before[c] for c in order},
                "categories_after": {c: self._after.get(c, 0) for c in order}}
