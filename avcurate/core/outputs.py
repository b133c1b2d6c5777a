"""Output files a user names (`stats --html`, `spotcheck --out`, `query --out`).

They are checked before any work, so a folder, a path under a file or a folder that
cannot be written stops the command with one line instead of a traceback after the work
is done. They are written whole (`atomic_write_bytes`), and never over a file avcurate did
not write: an HTML page carries a generator tag that says which command wrote it, and any
other file is replaced only when the user says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from avcurate.core.store import FINGERPRINT, MANIFEST, atomic_write_bytes
from avcurate.core.urls import shown_url


class OutputError(ValueError):
    """An output path that cannot be used, as one line for the user (a ValueError, like
    the other refusals commands print as one line)."""


def generator_tag(generator: str) -> str:
    """The `<meta>` tag that marks a page as written by `generator` (an avcurate command)."""
    return f'<meta name="generator" content="{generator}">'


def check_not_url(path: Path | str, option: str) -> None:
    """Raise OutputError when `path` is a URL (s3://, gs://): read as a path, it made a
    folder `s3:` under the current one and wrote there."""
    if (shown := shown_url(str(path))) is not None:
        raise OutputError(f"{option} {shown} is a URL; avcurate writes local files: write "
                          "here, then copy it there (`aws s3 sync`, `gcloud storage rsync`)")


def check_output(path: Path, option: str, *, generator: str | None = None,
                 overwrite: bool = False) -> None:
    """Raise OutputError when `path` cannot be written, or is a file that was not written
    by `generator` (an HTML page's tag) and `overwrite` is not given. Missing folders on
    the way are fine: the write makes them."""
    check_not_url(path, option)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; name a file in it")
    _check_outside_stages(path, option)
    _check_nearest_folder(path.absolute().parent, path, option)
    if not path.exists() or overwrite or (generator and _written_by(path, generator)):
        return
    if generator:
        raise OutputError(f"{path} exists and was not written by {generator}; choose another "
                          f"{option}")
    raise OutputError(f"{path} exists; choose another {option}, or pass --overwrite to "
                      "replace it")


def check_output_folder(path: Path, option: str) -> None:
    """Raise OutputError when the folder `path` (a run, an export, a training folder)
    cannot be made or written: it is a file, lies under a file, or its nearest existing
    folder is not writable. What may already be in it is each command's own rule."""
    check_not_url(path, option)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; it names a folder")
    _check_outside_stages(path, option)
    _check_nearest_folder(path.absolute(), path, option)


def check_owned_folder(path: Path, option: str, *, ours: Callable[[str], bool], what: str,
                       hint: str) -> None:
    """Raise OutputError when the folder `path` holds a name `ours` does not claim. A folder
    avcurate writes into (a run, an export, a training folder, the demo's) is new, empty or
    its own, so the user's files are never mixed with its files nor replaced by them; the
    one rule, worded alike, for every such folder. Call after `check_output_folder`."""
    if not path.is_dir():
        return
    theirs = sorted(p.name for p in path.iterdir() if not ours(p.name))
    if theirs:
        shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
        raise OutputError(f"{option} {path} is not empty ({shown}) and is not {what}; {hint}")


def _check_outside_stages(path: Path, option: str) -> None:
    """`path` is not in (nor is) a run's stage folder or cache: `reset`, `--redo` and
    `--force` remove a stage folder whole, so what the user had written there would go with
    it, and a file named like a shard would be read as one."""
    full = path.resolve()
    for folder in (full, *full.parents):
        if (folder.parent / MANIFEST).is_file() and (
                (folder / FINGERPRINT).is_file() or folder.name == "cache"):
            raise OutputError(f"{option} {path} is inside {folder.name}/, which the run "
                              f"{folder.parent} owns (reset and --redo remove a stage's "
                              "folder whole); choose a path outside it")


def _check_nearest_folder(start: Path, path: Path, option: str) -> None:
    """The nearest existing one of `start` and its parents is a folder we may write in
    (missing folders on the way are made by the write)."""
    folder = next(p for p in (start, *start.parents) if p.exists())
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {folder} is not writable")


def _written_by(path: Path, generator: str) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    return generator_tag(generator).encode() in head


def write_output(path: Path, data: bytes) -> None:
    """Write `data` whole at `path`; a failing write (a full disk, a folder made read-only
    since the check) is one line, and nothing half-written is left."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
