"""Media jobs that fail the way real decoders do, for the decode pool's tests: stuck in a
loop in native code that holds the GIL (decord's get_batch on some files, dmlc/decord#375),
or killed by a segfault. Imported by name in the pool's worker processes."""

from __future__ import annotations

import itertools
import os
import signal
import time


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
