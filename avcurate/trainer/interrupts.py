"""Ctrl-C and SIGTERM during a one-process training: stop at the next step's end, saved.

`--save-every` defaults to 0 (a checkpoint only at the end), so a training stopped by
Ctrl-C, or by a batch scheduler's SIGTERM ahead of its time limit, used to lose every step
since it began. In one process, the first Ctrl-C or SIGTERM now lets the step under way
finish (its update half applied is no state to save), a checkpoint is written at its end,
and then the signal is handed on to whatever handled it before: the command stops as on
any Ctrl-C (exit 130) or SIGTERM (exit 143), and the same command resumes from that step.
A second Ctrl-C or SIGTERM stops at once, from the last checkpoint saved.

Under torchrun the ranks keep the default: the agent stops every rank with SIGTERM when
one fails or is interrupted, and a rank waiting in a collective for a stopped one would
never reach a step's end.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopAtStepEnd:
    """Signal handlers for the span of a training loop (a context manager): `asked` says
    whether a stop was asked, `hand_on` passes the signal to the handler before ours."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = (enabled and threading.current_thread() is threading.main_thread()
                        and "TORCHELASTIC_RUN_ID" not in os.environ)
        self.signum: int | None = None
        self._before: dict[int, Any] = {}

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopAtStepEnd:
        if self.enabled:  # a signal the process was told to ignore (`nohup`, `&`) stays so
            self._before = {s: signal.signal(s, self._on_signal) for s in SIGNALS
                            if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)
        self._before = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.asked:  # the second one: at once
            self.hand_on(signum)
            return
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        say(f"{name}: stopping at the end of this step, with a checkpoint (a second one "
            "stops at once, from the last checkpoint saved)")

    def hand_on(self, signum: int | None = None) -> None:
        """Give the signal to the handler it would have met without us: Python's Ctrl-C
        (KeyboardInterrupt), the command line's SIGTERM (the same, said as SIGTERM), or
        the default (the process ends). A handler that returns (one of a host program's)
        still stops the loop, as a KeyboardInterrupt."""
        signum = signum or self.signum
        self.__exit__()
        if signum is not None:
            signal.raise_signal(signum)
        raise KeyboardInterrupt


def say(line: str) -> None:
    """A line on stderr that does not run into the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)
