"""Rows training cannot turn into a prompt, and what takes their place.

A clip deleted or damaged since the export, or a prompt longer than --max-prompt-tokens
with its media, used to stop the run at whatever step first drew that row, with a
traceback and the steps since the last checkpoint lost. Such a row is now replaced by
another row, drawn from a seed of its slot alone (so every rank, a resume and a re-run
agree), and written once to `skipped_rows.jsonl` in the training folder; the step's
metrics count it. Only when several rows drawn one after another are all unusable does
training stop, with one line: that is a setting or a media root, not a row.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avcurate.media.errors import MediaError

SKIPPED = "skipped_rows.jsonl"
TRIES = 8  # rows a slot draws before training stops: 8 bad rows in a row is not bad luck
SHOWN = 10  # rows a process prints one by one; a run missing a tenth of its clips would
# otherwise print thousands of lines, and the log lists every row anyway


class UnusableRow(ValueError):
    """A row the policy cannot make a prompt of; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SkippedRows:
    """The rows this process found unusable (index → reason), the log they go to, and how
    many draws they cost since the metrics last took the count. That count covers every
    draw of an unusable row, known or new, so it is the same on one rank or several (each
    rank finds rows on its own)."""

    path: Path | None = None
    found: dict[int, str] = field(default_factory=dict)
    replaced: int = 0
    pending: list[str] = field(default_factory=list)  # said once a row takes their place
    shown: int = 0  # rows put in `pending` so far
    _seen: set[int] = field(default_factory=set)  # indexes in the log, read up to _read
    _read: int = 0

    def add(self, index: int, row: dict[str, Any], exc: Exception, step: int) -> None:
        reason = getattr(exc, "reason", None) or getattr(exc, "kind", "unusable")
        self.found[index] = reason
        detail = " ".join(str(exc).split())
        if self.path is None or index in self._logged():
            return  # logged before (by another rank, or before a resume)
        line = {"step": step + 1, "index": index, "id": row.get("id"), "reason": reason,
                "detail": detail}
        # O_APPEND: ranks may append at once, and each line is one small write
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        self._seen.add(index)
        if self.shown < SHOWN:
            self.pending.append(f"skipped row {row.get('id', index)} at step {step + 1} "
                                f"({reason}): {detail}; another row takes its place (listed "
                                f"in {self.path})")
        elif self.shown == SHOWN:
            self.pending.append(f"more rows skipped; from here on they are listed only in "
                                f"{self.path} (the summary counts them)")
        self.shown += 1

    def say(self) -> None:
        """Print the rows skipped for a slot that found a usable row. A slot that found
        none stops training with one line instead of a screen of these."""
        from tqdm.auto import tqdm

        for line in self.pending:
            tqdm.write(line, file=sys.stderr)
        self.pending.clear()

    def take_count(self) -> int:
        replaced, self.replaced = self.replaced, 0
        return replaced

    def _logged(self) -> set[int]:
        """The rows in the log, read on from where the last call stopped: other ranks
        append to it too, and reading it whole for every new row was quadratic in a run
        with thousands of missing clips. A line still being written waits for the next
        call (its row may then be logged twice, as when two ranks find a row at once)."""
        if self.path is None or not self.path.exists():
            return self._seen
        with open(self.path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < self._read:  # rewritten (a resume's cut)
                self._seen, self._read = set(), 0
            fh.seek(self._read)
            data = fh.read()
        whole = data.rfind(b"\n") + 1
        self._seen.update(json.loads(ln)["index"] for ln in data[:whole].splitlines()
                          if ln.strip())
        self._read += whole
        return self._seen


def usable_input(skipped: SkippedRows, make: Callable[[dict[str, Any]], Any],
                 rows: Sequence[dict[str, Any]], index: int, seed: list[int], step: int,
                 count: bool = True) -> tuple[dict[str, Any], Any]:
    """(row, make(row)) for row `index`, or for the first usable row drawn in its place
    from `seed` (the slot's: run seed, step, slot, round). Raises UnusableRow after
    `TRIES` unusable rows. `count`: add the unusable draws to `skipped.replaced` (not for
    the groups a rank samples only to keep in step with the others)."""
    draws = np.random.default_rng([*seed, 7919])  # the slot's own stream of replacements
    last = ""
    for _ in range(TRIES):
        if index in skipped.found:
            last = skipped.found[index]
        else:
            row = dict(rows[index])
            try:
                made = make(row)
                skipped.say()
                return row, made
            except (MediaError, UnusableRow) as exc:
                skipped.add(index, row, exc, step)
                last = " ".join(str(exc).split())
        skipped.replaced += count
        index = int(draws.integers(len(rows)))
    raise UnusableRow("unusable", f"training stopped at step {step + 1}: {TRIES} rows drawn "
                      f"one after another could not be used, the last for: {last} (check "
                      "--max-prompt-tokens, --frames, --max-pixels, --audio-seconds and the "
                      f"media; the rows skipped are listed in {skipped.path or SKIPPED})")
