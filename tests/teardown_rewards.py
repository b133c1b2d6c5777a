"""The toy reward, in a module whose teardown aborts the process as Gloo's threads can at
interpreter exit (pytorch/pytorch#190489), and whose exit handler leaves a mark: a
finished multi-rank training must not reach the one and must still run the other."""

import atexit
import os
from pathlib import Path

from toy_rewards import starts_with_b

__all__ = ["starts_with_b"]


class _AbortsWhenTornDown:
    def __del__(self) -> None:
        os.abort()


_held = _AbortsWhenTornDown()  # freed only when the interpreter tears the module down

_mark = os.environ.get("AVCURATE_TEST_EXIT_MARK")
if _mark:
    atexit.register(lambda: Path(f"{_mark}.{os.environ.get('RANK', '0')}").write_text("ran"))
