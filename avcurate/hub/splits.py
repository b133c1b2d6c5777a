"""A config's rows, sorted by id, split into train/validation and written shard by shard.

An export used to read a config's rows into memory to sort them by id: 560k rows with
reasoning traces peaked at 3 GB, so a few million rows with traces did not fit a
workstation. Now only the ids are sorted in memory (about 50 bytes a row); the rows are
read batch by batch, prepared (media paths relinked), and spilled into buckets of
consecutive positions in id order (Arrow IPC files of about `SPILL_BYTES` each in the
staging folder); then each bucket is put in order and written into the split's shards
as it comes. An export holds about one bucket, whatever the run's size.

DuckDB was tried for the sort and dropped: with long strings (4 KB traces) its ORDER BY
stopped with an out-of-memory error instead of spilling.

The layout is the one the in-memory export wrote: a split of `rows` rows and `nbytes`
Arrow bytes gets ceil(nbytes / max) shards of equal rows, the same rows in each. A split
of one bucket is written byte for byte as before; a larger one has a row group per piece
of a bucket (at most `SPILL_BYTES` of Arrow data, where the old export wrote up to 1M
rows in one row group: the Hub's viewer reads smaller ones more readily).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq

from avcurate.core.counts import parquet_scan
from avcurate.core.store import naming

BATCH_ROWS = 16_384
SPILL_BYTES = 32 * 1024**2  # about the Arrow bytes of one bucket
MAX_BUCKETS = 256  # of a split: one open file each while the rows are spilled
SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
RANK = "__avcurate_rank"
SPLITS = ("train", "validation")


def _hash_expr(column: str = "id") -> str:
    # a stable 64-bit hash (md5's first 16 hex digits), the same in any process
    return f"('0x' || substr(md5({column}), 1, 15))::UBIGINT"


def validation_ids(files: list[Path], val_fraction: float, split_by: str = "video"
                   ) -> pa.Array:
    """Ids of the validation split: per category, the round(n * fraction) rows with the
    smallest hashes. An Arrow array, not a Python set: at 10M rows that set alone took a
    gigabyte.

    `split_by` "video" hashes each row's clip (its video, else its audio, else its id; by
    its folder's and its own name, so the split is the same wherever the run lies), and
    a clip picked in any category takes all its rows along: datasets ask several questions
    about one clip (LLaVA-Video about seven), and a clip on both sides lets validation reward
    what was memorised in training. A clip is picked when all its rows of a category fit in
    that category's share, so the split is about the fraction asked (less where clips have
    many questions each; none when every clip has more questions than a category's share).
    "id" hashes each row by itself: the fraction exactly, whatever the clips."""
    import duckdb  # imported where used: ~0.05 s that most commands never need

    con = duckdb.connect()
    scan = parquet_scan(files)
    have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}
    strata = "category" if "category" in have else "NULL"
    media = [c for c in ("video", "audio") if c in have]
    # a clip by its folder and file name: its whole path names the machine it is on, and
    # the split must be the same wherever the run is (two clips sharing both are grouped)
    group = (f"regexp_extract(coalesce({', '.join(media)}, id), '([^/]*/)?[^/]*$')"
             if split_by == "video" and media else "id")
    # a clip is picked when all its rows of the category fit in the category's share: its
    # last row's rank, max(k), is within it
    ids = con.sql(f"""
        WITH r AS (SELECT id, {strata} AS s, {group} AS g FROM {scan}),
        ranked AS (SELECT s, g,
          row_number() OVER (PARTITION BY s ORDER BY {_hash_expr("g")}, g, id) AS k,
          count(*) OVER (PARTITION BY s) AS n FROM r),
        picked AS (SELECT g FROM ranked GROUP BY s, g
                   HAVING max(k) <= round(any_value(n) * {float(val_fraction)}))
        SELECT id FROM r WHERE g IN (SELECT g FROM picked)""").to_arrow_table()
    con.close()
    return ids.column("id").combine_chunks().cast(pa.string())


def no_validation_reason(val_fraction: float, split_by: str) -> str:
    """Why an export has no validation split, for the card and the command's notes."""
    if val_fraction == 0:
        return "`--val-fraction 0`"
    unit = "a whole clip's questions" if split_by == "video" else "a row"
    return f"no category's {val_fraction:.0%} share could hold {unit}"


@dataclass
class ConfigRows:
    """The rows of one config: `files`, the rows whose `where` flag is set (all without
    one), `columns` of them."""

    files: list[Path]
    columns: list[str]
    where: str | None = None

    def in_file_order(self, columns: list[str] | None = None,
                      read: Callable[[int], object] | None = None) -> Iterator[pa.Table]:
        """The rows as they lie in the files, in batches; `read` is told how many rows of
        the files each batch covered (before `where`)."""
        columns = columns or self.columns
        wanted = columns + ([self.where] if self.where and self.where not in columns else [])
        for path in self.files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS,
                                                           columns=wanted):
                if read is not None:
                    read(batch.num_rows)
                table = pa.Table.from_batches([batch])
                if self.where:
                    table = table.filter(pc.fill_null(table.column(self.where), False))
                yield table.select(columns)


def by_split(table: pa.Table, val_ids: pa.Array) -> dict[str, pa.Table]:
    """train and validation rows of a batch, by membership of the id in `val_ids`."""
    in_val = pc.is_in(table.column("id"), value_set=val_ids)
    return {"train": table.filter(pc.invert(in_val)), "validation": table.filter(in_val)}


def id_ranks(rows: ConfigRows, val_ids: pa.Array) -> dict[str, np.ndarray]:
    """Per split, each row's position in id order (rows in file order; equal ids keep
    their file order, as the stable sort of the in-memory export did)."""
    chunks = [t.column("id").combine_chunks().cast(pa.large_string())
              for t in rows.in_file_order(["id"])]
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())
    ranks = {}
    for split, part in by_split(pa.table({"id": ids}), val_ids).items():
        order = pc.sort_indices(part.column("id")).to_numpy()  # Arrow's sort is stable
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        ranks[split] = rank
    return ranks


@dataclass
class SplitSize:
    rows: int = 0
    nbytes: int = 0
    schema: pa.Schema | None = None


@dataclass
class Spill:
    """Prepared rows of each split in buckets of `per` consecutive positions in id order,
    one Arrow IPC file per bucket, written as the rows come."""

    folder: Path
    per: int
    writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = field(default_factory=dict)

    def path(self, split: str, bucket: int) -> Path:
        return self.folder / f"{split}-{bucket:06d}.arrows"

    def add(self, split: str, table: pa.Table, ranks: np.ndarray) -> None:
        buckets = ranks // self.per
        order = np.argsort(buckets, kind="stable")
        table = table.append_column(RANK, pa.array(ranks)).take(order)
        found, starts = np.unique(buckets[order], return_index=True)
        for bucket, start, stop in zip(found, starts, [*starts[1:], len(order)], strict=True):
            key = (split, int(bucket))
            with naming(self.path(*key)):
                if key not in self.writers:
                    self.writers[key] = pa.ipc.new_stream(self.path(*key), table.schema,
                                                          options=SPILL_OPTIONS)
                self.writers[key].write_table(table.slice(start, stop - start))

    def close(self) -> None:
        for key, writer in self.writers.items():
            with naming(self.path(*key)):
                writer.close()

    def buckets(self, split: str) -> Iterator[pa.Table]:
        """The split's rows in id order, bucket by bucket; each file removed once read."""
        for key in sorted(k for k in self.writers if k[0] == split):
            path = self.path(*key)
            with pa.ipc.open_stream(path) as reader:
                table = reader.read_all()
            path.unlink()
            place = table.column(RANK).to_numpy() - key[1] * self.per
            order = np.empty(len(place), np.int64)
            order[place] = np.arange(len(place))
            yield table.take(order).drop_columns([RANK])


def spill_sorted(rows: ConfigRows, val_ids: pa.Array, prepare: Callable[[pa.Table], pa.Table],
                 folder: Path, read: Callable[[int], object] | None = None
                 ) -> tuple[dict[str, SplitSize], Spill]:
    """Read the config's rows once, prepare them, and spill them into id-order buckets;
    return each split's rows, Arrow bytes and schema, and the spill to read them back from.
    A bucket holds about `SPILL_BYTES` of rows (from the first batch's bytes per row).
    `read` is told the rows of the files read, batch by batch (a progress bar)."""
    ranks = id_ranks(rows, val_ids)
    sizes = {split: SplitSize() for split in SPLITS}
    spill: Spill | None = None
    folder.mkdir(parents=True, exist_ok=True)
    for table in rows.in_file_order(read=read):
        for split, part in by_split(table, val_ids).items():
            if not part.num_rows:
                continue
            part = prepare(part)
            size = sizes[split]
            if spill is None:
                per = max(1, SPILL_BYTES * part.num_rows // max(1, part.nbytes),
                          -(-max(len(r) for r in ranks.values()) // MAX_BUCKETS))
                spill = Spill(folder, per)
            spill.add(split, part, ranks[split][size.rows:size.rows + part.num_rows])
            size.rows, size.nbytes = size.rows + part.num_rows, size.nbytes + part.nbytes
            size.schema = size.schema or part.schema
    spill = spill or Spill(folder, 1)
    spill.close()
    return sizes, spill


@dataclass
class SplitWriter:
    """Writes a split of `rows` rows and `nbytes` Arrow bytes as ceil(nbytes / max_bytes)
    shards of equal rows (the last one shorter). Rows are written as they come, a row group
    per piece, so a shard is never held whole."""

    folder: Path
    split: str
    rows: int
    nbytes: int
    max_bytes: int
    paths: list[Path] = field(default_factory=list)
    writer: pq.ParquetWriter | None = None
    held: int = 0

    def __post_init__(self) -> None:
        wanted = max(1, -(-self.nbytes // self.max_bytes))
        self.per = -(-self.rows // wanted)
        self.count = -(-self.rows // self.per)  # never a shard without rows
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            take = min(table.num_rows, self.per - self.held)
            self._write(table.slice(0, take))
            table = table.slice(take)
            if self.held == self.per:
                self._end_shard()

    def close(self) -> list[Path]:
        if self.writer:
            self._end_shard()
        if len(self.paths) != self.count:  # a bug, not the user's: the spill lost rows
            raise RuntimeError(f"{self.split}: wrote {len(self.paths)} of {self.count} shards")
        return self.paths

    def _write(self, piece: pa.Table) -> None:
        if self.writer is None:
            path = self.folder / f"{self.split}-{len(self.paths):05d}-of-{self.count:05d}.parquet"
            self.paths.append(path)
            with naming(path):
                self.writer = pq.ParquetWriter(path, piece.schema, compression="zstd")
        with naming(self.paths[-1]):
            self.writer.write_table(piece)
        self.held += piece.num_rows

    def _end_shard(self) -> None:
        with naming(self.paths[-1]):
            self.writer.close()
        self.writer, self.held = None, 0
