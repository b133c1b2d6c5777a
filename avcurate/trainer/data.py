"""Training rows from an avcurate export (or any Parquet with the QA columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

NEEDED = ("question", "options", "answer")


def load_rows(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of an export's split, or of a Parquet file/folder, media paths made absolute.

    A relative media path is resolved from the folder of the data file that holds it (the
    export's convention, and the Hub's); a typed media column ({bytes, path}) gives its path.
    """
    path = Path(path)
    if (path / "data").is_dir():
        files = sorted((path / "data").glob(f"{split}-*.parquet"))
    elif path.is_dir():  # a config's folder (data/<config>) holds every split: take one
        files = sorted(path.glob(f"{split}-*.parquet")) or sorted(path.glob("*.parquet"))
    else:
        files = [path]
    if not files:
        raise FileNotFoundError(f"--data {path}: no Parquet files for split {split!r} (an "
                                f"avcurate export holds data/{split}-*.parquet)")
    rows = []
    for file in files:
        try:
            table = pq.read_table(file)
        except (OSError, ValueError) as exc:  # pyarrow's own line names no option
            raise ValueError(f"--data {file}: not a readable Parquet file ("
                             f"{' '.join(str(exc).split())})") from None
        missing = [c for c in NEEDED if c not in table.column_names]
        if missing:
            raise ValueError(f"{file} lacks column(s) {', '.join(missing)}")
        rows += [_absolute_media(r, file.parent) for r in table.to_pylist()]
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def _absolute_media(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    for col in ("video", "audio"):
        value = row.get(col)
        if isinstance(value, dict):  # datasets' Video()/Audio() storage
            value = value.get("path")
        if value and not Path(value).is_absolute():
            value = str((folder / value).resolve())
        if col in row:
            row[col] = value
    return row
