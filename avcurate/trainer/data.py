"""Training rows from an avcurate export (or any Parquet with the QA columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

NEEDED = ("question", "options", "answer")


def load_rows(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of an export's split (media paths made absolute), or of a Parquet file/folder."""
    path = Path(path)
    if (path / "data").is_dir():
        files = sorted((path / "data").glob(f"{split}-*.parquet"))
        root = path
    elif path.is_dir():
        files, root = sorted(path.glob("*.parquet")), path
    else:
        files, root = [path], path.parent
    if not files:
        raise FileNotFoundError(f"no Parquet files for split {split!r} under {path}")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    missing = [c for c in NEEDED if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
    rows = table.to_pylist()
    for r in rows:
        for col in ("video", "audio"):
            if r.get(col) and not Path(r[col]).is_absolute():
                r[col] = str((root / r[col]).resolve())
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows
