"""Counting what a run did, straight from its Parquet shards."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from avcurate.core.store import read_parquet


def reject_reasons(paths: list[Path]) -> dict[str, int]:
    """Rejected rows per reason, most frequent first.

    Reasons that carry a payload after a colon (`duplicate_of:<id>`) are grouped by the
    part before it, so a report shows one line per kind of failure.

    Only the `reject_reason` column of each file is read, and counted with pyarrow
    compute: 0.02 s for 392k rejects where the DuckDB query it replaces took 0.10 s with
    DuckDB's import, which a stage that has no other use for DuckDB no longer pays.
    """
    counts: dict[str, int] = {}
    for path in paths:
        reasons = read_parquet(path, columns=["reject_reason"]).column(0)
        distinct = pc.value_counts(reasons)
        if len(distinct) > 256:  # reasons with payloads: cut every row's, then count
            distinct = pc.value_counts(pc.replace_substring_regex(reasons, "(?s):.*", ""))
        for value, n in zip(distinct.field("values").to_pylist(),
                            distinct.field("counts").to_pylist(), strict=True):
            kind = str(value).split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + n
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def sql_string(value: str) -> str:
    """A SQL string literal (DuckDB views cannot take prepared parameters)."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: list[Path] | list[str]) -> str:
    """A SQL list literal of strings."""
    return "[" + ", ".join(sql_string(str(v)) for v in values) + "]"


def parquet_scan(paths: list[Path] | list[str], *, positions: bool = False) -> str:
    """`read_parquet([...])` over `paths`, optionally with the file_row_number column (the
    file's position in `paths` is DuckDB's virtual column `file_index`)."""
    extra = ", file_row_number=true" if positions else ""
    return f"read_parquet({sql_list(paths)}, union_by_name=true{extra})"
