"""A small persistent key-value store (SQLite) for probe results and model responses.

SQLite gives atomic writes and safe concurrent readers/writers from several processes,
which a JSON file or a folder of files would not. On a local disk the store uses WAL mode
(readers never wait for a writer). WAL keeps its index in shared memory, which processes
on different hosts do not share, so SQLite documents WAL as unsupported on network
filesystems: there (NFS, SMB/CIFS, Lustre, GPFS, CephFS, ...; read from the kernel's
mount table) the store uses the classic rollback journal, which relies only on the
filesystem's POSIX locks. `AVCURATE_SQLITE_JOURNAL=wal|delete` overrides the choice.

Leases let several processes that share a store (Ray actors, two nodes) ask a model for the
same key once: the first takes a lease, the others wait for its answer and take over if it
gives up, dies (same host: its PID is gone) or overruns the lease.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from avcurate.core.lock import pid_alive
from avcurate.core.options import OptionError

NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "9p", "lustre", "gpfs", "beegfs", "ceph",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs", "fuse.ceph", "fuse.gcsfuse",
    "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "wekafs", "panfs", "ocfs2", "gfs2", "davfs",
})
LEASE_SECONDS = 300.0


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The filesystem type holding `path`, from /proc/self/mountinfo (None where the
    table cannot be read, e.g. macOS: treated as local)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind


JOURNAL_ENV = "AVCURATE_SQLITE_JOURNAL"


def forced_journal() -> str | None:
    """The journal mode the user forces with AVCURATE_SQLITE_JOURNAL, or None to detect it.
    Any other value is a user's mistake, said in one line (the runner checks it before a
    run starts), not silently ignored."""
    value = os.environ.get(JOURNAL_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ("wal", "delete"):
        raise OptionError(f"{JOURNAL_ENV}={value!r}: use wal or delete, or unset it to pick the "
                          "journal from the filesystem")
    return value


def journal_mode(path: Path) -> str:
    """WAL on a local disk, the rollback journal (DELETE) on a network filesystem."""
    return forced_journal() or ("delete" if filesystem_type(path.parent) in NETWORK_FS
                                else "wal")


class CacheDamaged(Exception):
    """A cache file SQLite cannot read. Every write of ours is a transaction, so it was
    damaged outside avcurate (a partial copy, a disk fault): the user's to move aside or
    restore, not ours to delete, since a response cache holds answers that were paid for."""

    def __init__(self, path: Path, error: sqlite3.DatabaseError) -> None:
        super().__init__(
            f"cache {path} is damaged ({error}); avcurate writes it in transactions, so it was "
            "changed outside avcurate (a partial copy, a disk fault). Move it aside and run "
            "the same command again (what it held is asked or measured again), or restore it "
            "from a copy")


# what SQLite says of a file it cannot read as a database (not of a busy or locked one)
DAMAGE = ("malformed", "not a database", "file is encrypted")


def _damage(path: Path, exc: sqlite3.DatabaseError) -> Exception:
    """A damaged file as CacheDamaged; what the machine causes as the OSError a file
    write raises for it (the command's one line, then the same command resumes); anything
    else as it is."""
    if any(d in str(exc) for d in DAMAGE):
        return CacheDamaged(path, exc)
    if (code := _machine_errno(getattr(exc, "sqlite_errorcode", None))) is not None:
        return OSError(code, os.strerror(code), str(path))
    return exc


def _machine_errno(code: int | None) -> int | None:
    """The errno for SQLite's result codes of the machine's making: a full disk
    (SQLITE_FULL, or SQLITE_IOERR_SHMSIZE: the WAL index file could not grow), a folder it
    may not write (SQLITE_CANTOPEN, SQLITE_READONLY), a failing disk (other IOERRs)."""
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE):
        return errno.ENOSPC
    primary = None if code is None else code & 0xFF  # an extended code's primary code
    return {sqlite3.SQLITE_CANTOPEN: errno.EACCES, sqlite3.SQLITE_READONLY: errno.EACCES,
            sqlite3.SQLITE_IOERR: errno.EIO}.get(primary)


def _locked(method):
    """One statement or transaction at a time per connection: threads of one process share
    it (shards processed together), and a BEGIN from one thread must not take in another
    thread's statements. A damaged file is named (CacheDamaged), not a bare SQLite error."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                raise _damage(self.path, exc) from None

    return wrapper


class KVCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), timeout=60, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise _damage(path, exc) from None
        self.journal = journal_mode(path)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.RLock()
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _damage(path, exc) from None

    def _setup(self, attempts: int = 200) -> None:
        """Set the journal mode and create the tables. Several processes opening a new cache
        at once race for the exclusive lock a journal switch needs, which SQLite's busy
        timeout does not cover, so the setup is retried briefly."""
        for attempt in range(attempts):
            try:
                self._db.execute(f"PRAGMA journal_mode={self.journal.upper()}")
                self._db.execute("PRAGMA synchronous=" + ("NORMAL" if self.journal == "wal"
                                                          else "FULL"))
                self._db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, "
                                 "v TEXT NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS lease (k TEXT PRIMARY KEY, "
                                 "owner TEXT NOT NULL, until REAL NOT NULL)")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.01 + random.random() * 0.05)

    @_locked
    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    @_locked
    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # SQLite caps bound parameters
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for k, v in self._db.execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", chunk):
                found[k] = json.loads(v)
        return found

    def put(self, key: str, value: Any) -> None:
        self.put_many({key: value})

    @_locked
    def put_many(self, items: dict[str, Any]) -> None:
        rows = [(k, json.dumps(v)) for k, v in items.items()]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @_locked
    def try_lease(self, key: str, seconds: float = LEASE_SECONDS) -> bool:
        """Take the lease on `key` unless another live owner holds it; True when ours."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT owner, until FROM lease WHERE k = ?",
                                   (key,)).fetchone()
            if row is not None and row[0] != self.owner and row[1] > now \
                    and not self._dead(row[0]):
                self._db.execute("COMMIT")
                return False
            self._db.execute("INSERT OR REPLACE INTO lease (k, owner, until) VALUES (?, ?, ?)",
                             (key, self.owner, now + seconds))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return True

    @_locked
    def release(self, key: str) -> None:
        self._db.execute("DELETE FROM lease WHERE k = ? AND owner = ?", (key, self.owner))

    def _dead(self, owner: str) -> bool:
        """A lease holder on this host whose process is gone (a killed run)."""
        host, _, pid = owner.rpartition(":")
        return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))

    @_locked
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]

    @_locked
    def close(self) -> None:
        self._db.close()
