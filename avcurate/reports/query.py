"""DuckDB over a run folder.

Views:
  samples          the newest stage's kept rows (what the run produced)
  rejects          every rejected row of every stage (columns unioned by name)
  <stage name>     kept rows of each stage, e.g. "validate", "balance"
                   (a stage that appears twice gets its index: "validate_3")
  subset_<name>    rows of a named subset (the subset stage)
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from avcurate.core.counts import parquet_scan
from avcurate.core.store import RunStore


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(run_dir: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the run's views defined."""
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    con = duckdb.connect()
    seen: set[str] = set()
    newest = None
    all_rejects: list[Path] = []
    for entry in manifest.get("stages", []):
        stage_dir = store.root / entry["dir"]
        shards = store.shards(stage_dir)
        all_rejects += store.rejects(stage_dir)
        if not shards:
            continue
        view = entry["name"] if entry["name"] not in seen else f"{entry['name']}_{entry['index']}"
        seen.add(entry["name"])
        con.execute(f"CREATE VIEW {_quote(view)} AS SELECT * FROM {parquet_scan(shards)}")
        newest = shards
        for name, sub in entry.get("subsets", {}).items():
            files = store.shards(store.root / sub["dir"])
            if files:
                con.execute(f"CREATE VIEW {_quote('subset_' + name)} AS "
                            f"SELECT * FROM {parquet_scan(files)}")
    if newest is None:
        raise FileNotFoundError(f"{run_dir} has no finished shards to query yet")
    con.execute(f"CREATE VIEW samples AS SELECT * FROM {parquet_scan(newest)}")
    if all_rejects:
        con.execute(f"CREATE VIEW rejects AS SELECT * FROM {parquet_scan(all_rejects)}")
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]


def export(con: duckdb.DuckDBPyConnection, sql: str, out: Path) -> int:
    """Write the result of `sql` to CSV or Parquet (by suffix); return the row count."""
    fmt = {".csv": "CSV, HEADER", ".parquet": "PARQUET"}.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"--out must end in .csv or .parquet, not {out.suffix!r}")
    path = str(out).replace("'", "''")
    con.execute(f"COPY ({sql}) TO '{path}' (FORMAT {fmt})")
    return con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
