"""The dedup stage: exact duplicates (same media, same normalised question and options).

One row of each duplicate group is kept: the highest composite_score when that
column exists, else the smallest id. The others are rejected with the reason
`duplicate_of:<kept id>`. Like balance, the decision is made once with DuckDB
over all shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.pipeline.context import StageContext
from avcurate.pipeline.stage import BaseStage, Outcome, register
from avcurate.pipeline.stats import parquet_scan

NORMALISE = "lower(regexp_replace(regexp_replace(trim({x}), '\\s+', ' ', 'g'), '[[:punct:][:space:]]+$', ''))"


@register
@dataclass
class Dedup(BaseStage):
    """Reject exact duplicates (same media + normalised question + options), keeping the best one."""

    name = "dedup"
    requires = ("id", "video", "audio", "question", "options")
    adds = {}
    version = "1"

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        files = [str(p) for p in inputs]
        has_score = "composite_score" in pq.read_schema(files[0]).names
        order = ("composite_score DESC NULLS LAST, " if has_score else "") + "id"
        question = NORMALISE.format(x="question")
        option = NORMALISE.format(x="o")
        con = duckdb.connect()
        con.register("files", pa.table({"_file": files, "_idx": list(range(len(files)))}))
        keeper = con.sql(
            f"""
            SELECT CASE WHEN id = first_value(id) OVER w THEN NULL
                        ELSE first_value(id) OVER w END AS keeper
            FROM {parquet_scan(files, positions=True)} r
            JOIN files f ON r.filename = f._file
            WINDOW w AS (PARTITION BY video, coalesce(audio, ''), {question},
                         list_transform(coalesce(options, []), lambda o: {option})
                         ORDER BY {order})
            ORDER BY f._idx, r.file_row_number
            """
        ).to_arrow_table().column("keeper").to_pylist()
        con.close()
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in files]
        bounds = np.cumsum([0, *sizes])
        self._state["keepers"] = {i: keeper[bounds[i]:bounds[i + 1]] for i in range(len(files))}

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        keepers = self._state["keepers"][ctx.shard_index]
        return Outcome.split(table, self.name, [None if k is None else f"duplicate_of:{k}"
                                                for k in keepers])
