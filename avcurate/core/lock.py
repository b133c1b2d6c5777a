"""One writer per folder: an OS-level lock held while a command writes to a run folder,
an export folder or a training folder.

`filelock` takes an `fcntl`/`msvcrt` lock on `FOLDER/.avcurate.lock`; the OS drops it
when the holder exits in any way (kill -9 included), so a stale lock never blocks the
next run. Who holds it (PID and command line) is written beside it for the error
message. Readers of a run folder (status, stats, query, export) never take its lock.
Nested use in one process (a command that runs a runner) is counted, not re-locked.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK = ".avcurate.lock"
HOLDER = ".avcurate.lock.json"
_held: dict[Path, int] = {}


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one we may not signal counts as alive).

    A zombie, dead but not yet reaped by its parent, does not: a parent that reads a
    killed command's output to the end before it reaps it (`subprocess.run` with
    `capture_output=True`) would wait on decode workers that hold that output open while
    they wait for the dead command, and a dead lease holder would keep its lease.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux); or it has just gone, which the next look sees
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # after the command's name


class RunInUse(RuntimeError):
    """Another process is writing to this run folder."""


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / HOLDER).read_text())
        return f"PID {info['pid']} (`{info['command']}`)"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextmanager
def run_lock(root: Path | str, command: str | None = None, *, what: str = "run folder"
             ) -> Iterator[None]:
    """Hold the folder's writer lock, or raise RunInUse at once. `what` names the folder
    in that message: the same lock guards an export folder and a training folder."""
    root = Path(root).resolve()
    if _held.get(root):
        _held[root] += 1
        try:
            yield
        finally:
            _held[root] -= 1
        return
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunInUse(f"{what} {root} is in use by {_holder(root)}; wait for it to "
                       "finish, or use another folder") from None
    _held[root] = 1
    try:
        text = command or " ".join(["avcurate", *sys.argv[1:]])
        (root / HOLDER).write_text(json.dumps({"pid": os.getpid(), "command": text}))
        yield
    finally:
        _held.pop(root, None)
        (root / HOLDER).unlink(missing_ok=True)
        lock.release()
