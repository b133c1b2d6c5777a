"""The local runner hands each stage's kept shards to the next in memory (pipeline/held.py):
the same run folder as reading them back, and the files not read again."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filters import row, scored_recipe

from avcurate.core.store import write_parquet_atomic
from avcurate.pipeline import held as held_module
from avcurate.pipeline.held import HeldShards
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.runner import Runner

FUNNEL = [StageSpec("threshold"), StageSpec("balance", {"min_count": 2, "max_ratio": 1}),
          StageSpec("subset")]


def rows() -> list[dict]:
    """Rows that every stage of FUNNEL splits: failures, a capped and a long-tail category."""
    out = []
    for i in range(30):
        out.append(row(f"r{i:02d}", category="ABC"[i % 3] if i < 28 else "tail",
                       vd=(i % 4) / 3, ad=(i % 5) / 4, ql=0.5 if i % 7 == 0 else 1.0,
                       comp=0.7 + (i % 3) / 10))
    return out


@pytest.fixture
def full_reads(monkeypatch):
    """The files read whole (not a column projection) through `pq.ParquetFile.read`."""
    seen: list[str] = []
    original = pq.ParquetFile.read

    def read(self, columns=None, **kw):
        if columns is None:
            seen.append(getattr(self, "_avcurate_path", "?"))
        return original(self, columns=columns, **kw)

    init = pq.ParquetFile.__init__

    def remember(self, source, *args, **kw):
        init(self, source, *args, **kw)
        self._avcurate_path = str(source)

    monkeypatch.setattr(pq.ParquetFile, "read", read)
    monkeypatch.setattr(pq.ParquetFile, "__init__", remember)
    return seen


def stage_files(run_dir) -> dict[str, pa.Table]:
    return {str(p.relative_to(run_dir)): pq.read_table(p)
            for p in sorted(run_dir.rglob("*.parquet"))}


def test_the_next_stage_takes_kept_shards_from_memory_with_the_same_result(
        tmp_path, monkeypatch, full_reads):
    recipe = scored_recipe(tmp_path, rows(), FUNNEL, shard_size=8)
    Runner(recipe, tmp_path / "held", show_progress=False).run()
    read_in_run = [p for p in full_reads if "/held/" in p]
    monkeypatch.setattr(held_module, "BUDGET", 0)  # nothing fits: every input read back
    Runner(recipe, tmp_path / "read", show_progress=False).run()

    # threshold reads the ingested shards; balance and subset never read a file whole
    assert read_in_run and all("/00-ingest/" in p for p in read_in_run), read_in_run
    assert any("/01-threshold/part-" in p for p in full_reads if "/read/" in p)
    held, read = stage_files(tmp_path / "held"), stage_files(tmp_path / "read")
    assert held.keys() == read.keys() and len(held) > 10
    for name, table in held.items():
        assert table.equals(read[name]), name
    kept = held["02-balance/part-00000.parquet"].num_rows
    assert 0 < kept < 8  # the shard was split, so the comparison covers real decisions


def test_a_held_table_is_served_once_and_only_for_the_file_written_with_it(tmp_path):
    path = tmp_path / "part-00000.parquet"
    table = pa.table({"id": ["a", "b"]})
    write_parquet_atomic(table, path)
    shards = HeldShards()
    shards.put(path, table)
    assert shards.read(path) is table
    assert shards.read(path) is not table and shards.read(path).equals(table)  # read back

    shards.put(path, table)
    other = pa.table({"id": ["c"]})
    write_parquet_atomic(other, path)  # replaced since: a new file at that path
    os.utime(path, ns=(1, 1))
    assert shards.read(path).equals(other)


def test_held_tables_stay_within_the_budget_and_go_when_no_stage_needs_them(tmp_path):
    table = pa.table({"id": [str(i) for i in range(1000)]})
    paths = [tmp_path / f"part-{i:05d}.parquet" for i in range(3)]
    for p in paths:
        write_parquet_atomic(table, p)
    shards = HeldShards(budget=2 * table.nbytes)
    for p in paths:
        shards.put(p, table)
    assert [shards.read(p) is table for p in paths] == [True, True, False]

    for p in paths[:2]:
        shards.put(p, table)
    shards.keep_only([paths[1]])
    assert shards.read(paths[0]) is not table and shards.read(paths[1]) is table
    shards.put(paths[2], table)  # the room of the ones let go is free again
    assert shards.read(paths[2]) is table


def test_a_global_stage_sees_held_and_read_shards_as_the_same_rows(tmp_path):
    """`ShardTable` scans the shards held in memory and reads the others from their files;
    each row keeps its shard, position and file either way, so balance's and dedup's
    decisions (made in `prepare`) are the same as when every shard is read back."""
    from avcurate.stages.shards import ShardTable

    tables = [pa.table({"id": [f"s{s}r{r}" for r in range(n)], "x": [float(s * 10 + r)
                                                                      for r in range(n)]})
              for s, n in enumerate([3, 0, 4, 2])]
    paths = [tmp_path / f"part-{i:05d}.parquet" for i in range(len(tables))]
    for path, table in zip(paths, tables, strict=True):
        write_parquet_atomic(table, path)
    shards = HeldShards()
    for i in (0, 3):  # held: the first and the last; read: the empty one and the third
        shards.put(paths[i], tables[i])
    query = "SELECT _shard, _row, _file, id, x FROM rows ORDER BY _shard, _row"
    with ShardTable(paths) as read, ShardTable(paths, shards.peek) as mixed:
        assert mixed.con.sql(query).fetchall() == read.con.sql(query).fetchall()
        ranked = "row_number() OVER (ORDER BY x DESC)"
        assert {k: v.to_pylist() for k, v in mixed.per_shard(ranked).items()} == {
            k: v.to_pylist() for k, v in read.per_shard(ranked).items()}
        assert mixed.sizes == read.sizes == [3, 0, 4, 2]
        assert mixed.con.sql("SELECT count(*) FROM rows").fetchall() == [(9,)]
    assert shards.read(paths[0]) is tables[0]  # a peek leaves the table for process's read
