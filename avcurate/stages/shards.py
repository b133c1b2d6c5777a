"""Per-shard bookkeeping for global stages (duplicate ids, dedup, balance).

A global stage decides over the whole table in `prepare` and applies the decision
shard by shard in `process`. `ShardTable` gives every input shard as one DuckDB view
`rows` in which each row knows its shard (`_shard`), its position in it (`_row`) and
its file (`_file`); `per_shard` runs one expression per row in that order and hands
back one Arrow array per shard, so no stage repeats the offset arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from avcurate.core.counts import parquet_scan, sql_list


class ShardTable:
    """All input shards as one view `rows` (+ `_shard`, `_row`, `_file`); use as a context."""

    def __init__(self, inputs: list[Path]) -> None:
        self.files = [str(p) for p in inputs]
        self.sizes = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        import duckdb  # imported where used: ~0.05 s that most commands never need

        self.con = duckdb.connect()
        # the shard is DuckDB's file_index (position in the file list), not a join of every
        # row's file name against the list: 10M rows no longer hash 10M path strings
        shard = "CAST(r.file_index AS BIGINT)"
        self.con.execute(
            f"CREATE TEMP VIEW rows AS SELECT r.* EXCLUDE (file_row_number), {shard} AS _shard, "
            f"r.file_row_number AS _row, list_extract({sql_list(self.files)}, {shard} + 1) "
            f"AS _file FROM {parquet_scan(self.files, positions=True)} r")

    def __enter__(self) -> ShardTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def columns(self) -> set[str]:
        return {r[0] for r in self.con.execute("DESCRIBE rows").fetchall()}

    def per_shard(self, expr: str, *, joins: str = "", window: str = "") -> dict[int, pa.Array]:
        """`expr` evaluated for every row (in shard, then row order), split by shard."""
        sql = (f"SELECT {expr} AS v FROM rows r {joins} "
               + (f"WINDOW {window} " if window else "") + "ORDER BY r._shard, r._row")
        values = self.con.sql(sql).to_arrow_table().column("v").combine_chunks()
        bounds = np.cumsum([0, *self.sizes])
        return {i: values.slice(int(bounds[i]), self.sizes[i]) for i in range(len(self.sizes))}
