"""Counting what a run did, straight from its Parquet shards (DuckDB)."""

from __future__ import annotations

from pathlib import Path

import duckdb


def reject_reasons(paths: list[Path]) -> dict[str, int]:
    """Rejected rows per `reject_reason`, most frequent first."""
    if not paths:
        return {}
    files = [str(p) for p in paths]
    rows = duckdb.sql(
        "SELECT reject_reason, count(*) AS n FROM read_parquet($files, union_by_name=true) "
        "GROUP BY 1 ORDER BY n DESC, 1",
        params={"files": files},
    ).fetchall()
    return {str(reason): int(n) for reason, n in rows}
