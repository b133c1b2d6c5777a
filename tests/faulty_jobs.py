"""Media jobs that fail the way real decoders do, for the decode pool's tests: stuck in a
loop in native code that holds the GIL (decord's get_batch on some files, dmlc/decord#375),
or killed by a segfault. Imported by name in the pool's worker processes."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path


def spin_forever() -> None:
    """A loop in C that never gives the GIL back or looks at signals, as a stuck decoder."""
    sum(itertools.repeat(1))


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def job(name: str) -> str:
    """Double a name after 20 ms of 'decoding'; 'stuck' and 'crash' fail as decoders do."""
    if "stuck" in name:
        spin_forever()
    if "crash" in name:
        crash()
    time.sleep(0.02)
    return name * 2


def faulty_decoder_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a command whose decord and PyAV get stuck on `stuck*` files and
    crash on `crash*` files, as `job` does, in every process it starts (a
    `sitecustomize` on its PYTHONPATH, beside this folder)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text('''
import av, decord
from faulty_jobs import crash, spin_forever

def _fail_for(path):
    name = str(path).rsplit("/", 1)[-1]
    if name.startswith("stuck"):
        spin_forever()
    if name.startswith("crash"):
        crash()

_open, _init, _batch = av.open, decord.VideoReader.__init__, decord.VideoReader.get_batch

def open_(path, *args, **kwargs):
    _fail_for(path)
    return _open(path, *args, **kwargs)

def init(self, uri, *args, **kwargs):
    self._path_for_tests = uri
    _init(self, uri, *args, **kwargs)

def get_batch(self, indices):
    _fail_for(self._path_for_tests)
    return _batch(self, indices)

av.open, decord.VideoReader.__init__, decord.VideoReader.get_batch = open_, init, get_batch
''')
    return os.environ | {"PYTHONPATH": os.pathsep.join(
        [str(hooks), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
