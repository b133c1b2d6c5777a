"""Caches on a filesystem several nodes share: no WAL on network filesystems, and a prompt
that several processes need at the same moment is sent once (a lease in the cache)."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time

import pytest
from loopback import openai_server

from avcurate.core import kvcache
from avcurate.core.kvcache import KVCache, filesystem_type, journal_mode

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:45 / /mnt/shared rw,relatime shared:3 - nfs4 server:/export rw,vers=4.2
37 22 0:46 / /mnt/my\\040data rw - cifs //srv/share rw
38 36 0:47 / /mnt/shared/local rw - xfs /dev/sdb1 rw
39 22 0:48 / /scratch rw - lustre 10.0.0.1@tcp:/fs rw
"""


@pytest.mark.parametrize("path, kind", [
    ("/mnt/shared/runs/r1/cache", "nfs4"),
    ("/mnt/shared", "nfs4"),
    ("/mnt/sharedX/cache", "ext4"),          # a prefix of the name is not the mount
    ("/mnt/my data/run", "cifs"),            # \040 in the table is a space
    ("/mnt/shared/local/run", "xfs"),        # the deepest mount wins
    ("/scratch/u/run", "lustre"),
    ("/home/u/run", "ext4"),
])
def test_filesystem_type_from_the_mount_table(path, kind):
    assert filesystem_type(path, MOUNTINFO) == kind


def test_this_machine_and_the_override(tmp_path, monkeypatch):
    assert filesystem_type(tmp_path) is not None  # /proc/self/mountinfo is readable here
    monkeypatch.delenv("AVCURATE_SQLITE_JOURNAL", raising=False)
    assert journal_mode(tmp_path / "c.sqlite") == "wal"
    monkeypatch.setenv("AVCURATE_SQLITE_JOURNAL", "delete")
    assert journal_mode(tmp_path / "c.sqlite") == "delete"


def _processes(n: int):
    """Separate processes, as on separate nodes: spawned, not forked. A fork of pytest's
    process, which holds threads of earlier tests, once inherited a lock one of them held
    and a worker hung in `sqlite3.connect` for good; the timeouts on `get` bound any hang."""
    return mp.get_context("spawn").Pool(n)


def _writer(args) -> int:
    path, worker = args
    cache = KVCache(path)
    for i in range(150):
        cache.put(f"{worker}-{i}", {"i": i})
    cache.close()
    return worker


def test_on_a_network_filesystem_the_cache_uses_a_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.delenv("AVCURATE_SQLITE_JOURNAL", raising=False)
    monkeypatch.setattr(kvcache, "filesystem_type", lambda path, mountinfo=None: "nfs4")
    path = tmp_path / "cache/responses.sqlite"
    cache = KVCache(path)
    assert cache.journal == "delete"
    cache.put("k", {"v": 1})
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not path.with_name(path.name + "-wal").exists()
    cache.close()
    # several writer processes (they read the mount table themselves: force it by env)
    monkeypatch.setenv("AVCURATE_SQLITE_JOURNAL", "delete")
    with _processes(3) as pool:
        done = pool.map_async(_writer, [(path, w) for w in range(3)]).get(timeout=120)
    assert sorted(done) == [0, 1, 2]
    assert len(KVCache(path)) == 451
    monkeypatch.undo()
    assert KVCache(tmp_path / "local.sqlite").journal == "wal"


def test_leases_one_owner_at_a_time_and_dead_owners_lose_them(tmp_path):
    a, b = KVCache(tmp_path / "c.sqlite"), KVCache(tmp_path / "c.sqlite")
    b.owner = f"{b.owner.rsplit(':', 1)[0]}:{os.getppid()}"  # another live process here
    assert a.try_lease("k") and a.try_lease("k")  # re-entrant for its owner
    assert not b.try_lease("k")
    a.release("k")
    assert b.try_lease("k") and not a.try_lease("k")
    b.owner = b.owner.rsplit(":", 1)[0] + ":999999999"  # its process is gone
    b.try_lease("k2")
    assert a.try_lease("k2")  # a dead owner's lease is free at once
    far = KVCache(tmp_path / "c.sqlite")
    far.owner = "another-host:1"
    assert far.try_lease("k3", seconds=0.2) and not a.try_lease("k3")
    time.sleep(0.3)
    assert a.try_lease("k3")  # another host's lease runs out


def _ask(args) -> list:
    url, path, n = args
    from avcurate.models import Executor, ModelSpec, make_backend
    from avcurate.models.request import Message, ModelRequest, TextPart

    executor = Executor(make_backend(ModelSpec("openai", "m", url)), concurrency=8,
                        cache=KVCache(path))
    requests = [ModelRequest((Message("user", (TextPart(f"Say ok, case {i}"),)),))
                for i in range(n)]
    results = executor.run(requests, lambda r: r.text)
    return [r.value for r in results]


def test_processes_sharing_a_cache_send_each_prompt_once(tmp_path):
    path = tmp_path / "cache/responses.sqlite"
    with openai_server(latency=0.3) as server:
        with _processes(3) as pool:
            answers = pool.map_async(_ask, [(server.url + "/v1", path, 24)] * 3).get(timeout=120)
        calls = len(server.requests)
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 24
    assert calls == 24  # not 72: each prompt went out once, the others waited for it


@pytest.mark.parametrize("room", ["16k", "48k"])
def test_a_full_disk_is_the_os_error_a_file_write_raises(small_disk, room):
    """SQLite says SQLITE_FULL, or SQLITE_IOERR_SHMSIZE when the WAL index cannot grow (a
    'disk I/O error'): both are the ENOSPC every other write of a run raises, naming the
    cache, so the command prints its one line and the rows are not blamed."""
    import errno

    small_disk.resize(room)
    path = small_disk.path / "responses.sqlite"
    with pytest.raises(OSError) as full:
        cache = KVCache(path)
        for i in range(100):
            cache.put(f"k{i}", "x" * 4000)
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(path)


def test_a_cache_on_a_read_only_filesystem_is_a_permission_error(small_disk):
    import errno

    assert small_disk.mount("1m", "remount", "ro").returncode == 0
    with pytest.raises(OSError) as refused:
        KVCache(small_disk.path / "responses.sqlite")
    assert refused.value.errno == errno.EACCES
    assert refused.value.filename == str(small_disk.path / "responses.sqlite")
