"""DuckDB over a run folder.

Views:
  samples          the newest stage's kept rows (what the run produced)
  rejects          every rejected row of every stage (columns unioned by name)
  <stage name>     kept rows of each stage, e.g. "validate", "balance"
                   (a stage that appears twice gets its index: "validate_3")
  subset_<name>    rows of a named subset (the subset stage)

A query is read-only and scoped to the run: one SELECT (or WITH ... SELECT) statement,
and once the views exist the connection may read only files under the run folder
(DuckDB's `allowed_directories` with `enable_external_access` off, then the configuration
is locked), so `read_csv('/etc/passwd')`, `COPY ... TO`, `ATTACH` or `INSTALL` fail.
Results are written by avcurate itself (`--out`).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from avcurate.core.counts import parquet_scan
from avcurate.core.outputs import OutputError, check_output
from avcurate.core.store import RunStore, write_parquet_atomic

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection, DuckDBPyRelation


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(run_dir: Path | str) -> DuckDBPyConnection:
    """An in-memory DuckDB connection with the run's views defined."""
    import duckdb  # imported where used: ~0.05 s that most commands never need

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
    root = str(store.root.resolve()).replace("'", "''")
    con.execute(f"SET allowed_directories=['{root}/']")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


class QueryError(ValueError):
    """A query that is not one read-only SELECT over the run."""


def select(con: DuckDBPyConnection, sql: str) -> DuckDBPyRelation:
    """The relation of one SELECT statement (a trailing `;` and comments are fine)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SELECT statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT (or WITH ... SELECT) queries are allowed, not "
                         f"{statements[0].type.name}")
    return con.sql(_body(sql))


def _body(sql: str) -> str:
    """The statement without trailing `;` and comments (so it can be wrapped as a subquery)."""
    import duckdb

    tokens = duckdb.tokenize(sql)
    starts = [pos for pos, _ in tokens] + [len(sql)]
    keep = [k for k, (pos, kind) in enumerate(tokens)
            if kind != duckdb.token_type.comment and sql[pos] != ";"]
    return sql[:starts[keep[-1] + 1]].strip() if keep else sql


def views(con: DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]


STDOUT = Path("-")  # `--out -`: every row as CSV on standard output, for a pipe


def check_export(out: Path, overwrite: bool) -> None:
    """Stop before the query runs when `--out` cannot be written, is not .csv/.parquet,
    or would replace a file without `--overwrite` (a query's file carries no mark of its
    writer, so an existing one may be the user's)."""
    if out == STDOUT:
        return
    check_output(out, "--out", overwrite=overwrite)
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise QueryError(f"--out must end in .csv or .parquet, not {out.suffix.lower()!r}")


def export(rel: DuckDBPyRelation, out: Path) -> int:
    """Write a query's result to CSV or Parquet (by suffix), atomically; return its rows.
    A failing write is an OutputError; a failing query stays DuckDB's error."""
    table = rel.to_arrow_table()
    if out == STDOUT:
        import duckdb

        sys.stdout.flush()  # DuckDB writes to the descriptor, after what Python printed
        try:
            _duckdb_csv(table, "/dev/stdout")
        except duckdb.IOException as exc:  # the reader left early (`| head`): as for print
            raise BrokenPipeError(errno.EPIPE, str(exc).splitlines()[0]) from None
        return table.num_rows
    try:
        if out.suffix.lower() == ".parquet":
            write_parquet_atomic(table, out)
        else:
            _write_csv(table, out)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return table.num_rows


def _write_csv(table: pa.Table, out: Path) -> None:
    """DuckDB's CSV writer (it quotes only what needs it and writes list columns such as
    `options`, which pyarrow's cannot), on a fresh connection of ours, into a temporary
    file renamed into place."""
    import duckdb

    out.parent.mkdir(parents=True, exist_ok=True)  # as the Parquet writer does
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(8)}.tmp")
    try:
        _duckdb_csv(table, str(tmp))
        os.replace(tmp, out)
    except duckdb.IOException as exc:
        # DuckDB's message is a JSON blob; the system's error number in it (a full disk)
        # makes the usual one-line reason
        code = re.search(r'"errno":\s*"(\d+)"', str(exc))
        raise (OSError(int(code[1]), os.strerror(int(code[1]))) if code
               else OSError(str(exc).splitlines()[0])) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _duckdb_csv(table: pa.Table, path: str) -> None:
    import duckdb

    duckdb.connect().from_arrow(table).write_csv(path, header=True)
