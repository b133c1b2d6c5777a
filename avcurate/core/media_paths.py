"""Media path columns worked out once per distinct folder, not once per row.

A video holds several questions and a folder holds many videos, so a column of 1M paths
names a few thousand folders. `pathlib` and `os.path` per row cost seconds per million
rows (a `resolve()` per path: 24 s of training's start-up at 532k rows); the folder
part is worked out once each and joined back to the file names with pyarrow compute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

Paths = pa.Array | pa.ChunkedArray  # of strings


def path_folders(paths: Paths) -> Paths:
    """Each path's folder with its trailing "/" ("" for a bare file name)."""
    return pa.compute.replace_substring_regex(paths, pattern="[^/]*$", replacement="")


def file_names(paths: Paths) -> Paths:
    """Each path's last part, after its last "/"."""
    return pa.compute.replace_substring_regex(paths, pattern="^.*/", replacement="")


def join_prefixes(paths: Paths, prefix: Callable[[str], str]) -> Paths:
    """Each path with its folder replaced by `prefix(folder)`, called once per distinct
    folder; "" and nulls stay as they are."""
    pc = pa.compute
    folders = path_folders(paths)
    distinct = pc.unique(folders)
    prefixes = pa.array([None if f is None else prefix(f) for f in distinct.to_pylist()],
                        paths.type)
    chosen = pc.take(prefixes, pc.index_in(folders, value_set=distinct))
    joined = pc.binary_join_element_wise(chosen, file_names(paths), "")
    return pc.if_else(pc.equal(paths, ""), paths, joined)


def absolute_paths(paths: Paths, start: Path) -> Paths:
    """Relative paths made absolute from `start`, their folder resolved as
    `Path.resolve()` does (symlinks, `..`); absolute paths, "" and nulls kept as they are.
    The file's own name is not resolved: a symlinked clip keeps its name and is read
    through the link."""
    def prefix(folder: str) -> str:
        if folder.startswith("/"):
            return folder
        return f"{str((start / folder).resolve()).rstrip('/')}/"

    return join_prefixes(paths, prefix)
