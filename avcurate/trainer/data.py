"""Training rows from an avcurate export (or any Parquet with the QA columns).

The rows stay in Arrow and a row becomes a dict only when a step draws it. Turning every
row into a dict up front, with a `Path.resolve()` per media path, took 24 s and 2.7 GB on
each rank for an export of 532k rows with reasoning traces (`benchmarks/bench_train_rows.py`
measures both ways).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avcurate.catalogs.embedded import EmbeddedMedia, batch_rows, embedded_columns
from avcurate.core.media_paths import absolute_paths

NEEDED = ("question", "options", "answer")
MEDIA = ("video", "audio")


class Rows(Sequence[dict[str, Any]]):
    """A split's rows, read-only: `rows[i]` is row i as a dict of plain Python values."""

    def __init__(self, table: pa.Table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        return self.table.slice(index, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.to_batches(max_chunksize=1024):  # never a split's worth of dicts
            yield from batch.to_pylist()


def open_ended(rows: Rows) -> int:
    """Rows without options: a reward that reads an option letter (accuracy) scores them 0
    whatever the policy answers, so a training on many of them learns from nothing."""
    options = rows.table.column("options")
    if pa.types.is_null(options.type):
        return rows.table.num_rows
    if not pa.types.is_list(options.type) and not pa.types.is_large_list(options.type):
        return 0  # options of another shape: not ours to judge
    lengths = pc.list_value_length(options)
    return lengths.null_count + pc.sum(pc.equal(lengths, 0), min_count=0).as_py()


def split_files(path: str | Path, split: str) -> list[Path]:
    """The Parquet files of an export's `split`; a config's folder (data/<config>) without
    them gives all its files for the train split; a file is itself, for the train split."""
    path = Path(path)
    if (path / "data").is_dir():
        return sorted((path / "data").glob(f"{split}-*.parquet"))
    if path.is_dir():
        return sorted(path.glob(f"{split}-*.parquet")) or (
            sorted(path.glob("*.parquet")) if split == "train" else [])
    return [path] if split == "train" else []


def load_rows(path: str | Path, split: str = "train", media_dir: Path | None = None) -> Rows:
    """Rows of an export's split, or of a Parquet file/folder, media paths made absolute.

    A relative media path is resolved from the folder of the data file that holds it (the
    export's convention, and the Hub's); a typed media column ({bytes, path}) gives its path.
    A Hub dataset that holds its clips in that column (`push_to_hub` embeds them) has them
    written out under `media_dir` (`catalogs/embedded.py`), for a policy that reads media;
    without `media_dir` their bytes are not read at all.
    """
    path = Path(path)
    files = split_files(path, split)
    if not files:
        raise FileNotFoundError(f"--data {path}: no Parquet files for split {split!r} (an "
                                f"avcurate export holds data/{split}-*.parquet)")
    tables = [_read(file, media_dir) for file in files]
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"--data {path}: its files disagree on their columns' types "
                         f"({' '.join(str(exc).split())})") from None
    if not table.num_rows:
        raise ValueError(f"{path} has no rows")
    return Rows(table)


def _read(file: Path, media_dir: Path | None) -> pa.Table:
    """One data file, its media columns as absolute paths."""
    try:
        table = _table(pq.ParquetFile(file), media_dir)
    except ClipsNotWritten:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's own line names no option
        raise ValueError(f"--data {file}: not a readable Parquet file ("
                         f"{' '.join(str(exc).split())})") from None
    missing = [c for c in NEEDED if c not in table.column_names]
    if missing:
        raise ValueError(f"{file} lacks column(s) {', '.join(missing)}")
    options = table.schema.field("options").type
    if not pa.types.is_null(options) and not (
            (pa.types.is_list(options) or pa.types.is_large_list(options))
            and (pa.types.is_string(options.value_type) or pa.types.is_null(options.value_type)
                 or pa.types.is_large_string(options.value_type))):
        # a text column would be lettered one character at a time, silently
        raise ValueError(f"--data {file}: options is {options}, not a list of strings; store "
                         "each row's options as a list (as an avcurate export does), or null "
                         "for an open-ended question")
    for col in MEDIA:
        if col not in table.column_names:
            continue
        paths = table.column(col)
        if pa.types.is_struct(paths.type):  # datasets' Video()/Audio() storage
            paths = pc.struct_field(paths, "path")
        if not pa.types.is_string(paths.type) and not pa.types.is_large_string(paths.type):
            continue  # not paths (a user's own column of another kind): left as it is
        table = table.set_column(table.schema.get_field_index(col), col,
                                 absolute_paths(paths, file.parent))
    return table


def _table(parquet: pq.ParquetFile, media_dir: Path | None) -> pa.Table:
    """The file's rows; a media column that holds clips as the paths of their files written
    out under `media_dir`, or, without it, as its paths alone (the bytes never read)."""
    embedded = embedded_columns(parquet.metadata, MEDIA)
    if not embedded:
        return parquet.read()
    if media_dir is None:
        return parquet.read(columns=[f"{c}.path" if c in embedded else c
                                     for c in parquet.schema_arrow.names])
    store = EmbeddedMedia(media_dir)

    def written(cell: dict | None) -> str | None:
        if not cell or cell.get("bytes") is None:
            return cell and cell.get("path")
        try:
            return store.write(cell["bytes"], cell.get("path"))
        except OSError as exc:  # a full disk: not the data file's fault
            raise ClipsNotWritten(f"the clips held in --data cannot be written to {media_dir} "
                                  f"({exc.strerror or exc})") from None

    parts = []
    for batch in parquet.iter_batches(batch_size=batch_rows(parquet.metadata)):
        part = pa.Table.from_batches([batch])
        for col in embedded:
            files = [written(cell) for cell in part.column(col).to_pylist()]
            part = part.set_column(part.schema.get_field_index(col), col,
                                   pa.array(files, pa.string()))
        parts.append(part)
    return pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table()


class ClipsNotWritten(ValueError):
    """The clips a data file holds could not be written out (told apart from a data file
    that cannot be read)."""
