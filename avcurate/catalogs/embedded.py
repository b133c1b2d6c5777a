"""Media held in the annotation file itself: a `datasets` Video() or Audio() column.

`datasets` stores such a column as a struct of `bytes` and `path`. `push_to_hub` embeds
each file's bytes by default, so a dataset downloaded from the Hub often carries its clips
inside its Parquet files; a dataset saved without embedding (and avcurate's own export with
`--media-features`) has null bytes and a path. Every stage reads media from files, so
ingest writes each embedded file out once, into the run folder's `media/`, named by its
content (one file for a clip that many questions share, the same name on a resume); a
struct without bytes is its path, resolved under the media root like any other.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.core.store import atomic_write_bytes

STRUCT_KEYS = {"bytes", "path"}


def is_media_struct(value: Any) -> bool:
    """`value` is a `datasets` media cell: a dict of `bytes` and/or `path`, nothing else."""
    return isinstance(value, dict) and bool(value) and set(value) <= STRUCT_KEYS


@dataclass(frozen=True)
class EmbeddedMedia:
    """Where embedded media files are written: RUN/media (avcurate's own folder)."""

    folder: Path

    def write(self, data: bytes, name: str | None) -> str:
        """The path of a file holding `data`: named by its SHA-256 with the suffix of the
        name it had (`clip.mp4`), so any reader can tell its kind; written atomically,
        and only when no whole copy is there yet (many rows, or a resumed ingest)."""
        digest = hashlib.sha256(data).hexdigest()
        suffix = Path(name).suffix.lower() if isinstance(name, str) else ""
        target = self.folder / digest[:2] / f"{digest[:32]}{suffix}"
        try:
            if target.stat().st_size == len(data):
                return str(target)
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        return str(target)


BATCH_BYTES = 64 << 20  # a Parquet batch's rows as Python objects, about at most


def batch_rows(meta: Any, most: int = 4096) -> int:
    """Rows per batch for reading a Parquet file of this metadata row by row: up to `most`,
    fewer when rows are large. A file that holds its clips has megabytes a row, and 4,096
    of them at once were gigabytes of memory."""
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1, min(most, BATCH_BYTES * max(meta.num_rows, 1) // max(size, 1)))


def embedded_columns(meta: Any, names: tuple[str, ...]) -> list[str]:
    """Which of the media columns `names` of a Parquet file hold bytes in some row, from its
    column statistics alone (a column without them counts as holding some)."""
    found = []
    for name in names:
        chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups)
                  for c in range(meta.row_group(g).num_columns)
                  if meta.row_group(g).column(c).path_in_schema == f"{name}.bytes"]
        if any(ch.statistics is None or not ch.statistics.has_null_count
               or ch.statistics.null_count < ch.num_values for ch in chunks):
            found.append(name)
    return found


def summarised(value: Any) -> Any:
    """`value` for a row's `meta` JSON: bytes (an unmapped media column's) replaced by
    their size, as a video's bytes written as text there made every row megabytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value):,} bytes>"
    if is_media_struct(value):
        return {k: summarised(v) for k, v in value.items()}
    return value
