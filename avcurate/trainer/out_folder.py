"""The training folder (`--out`): one run's checkpoint, metrics and final model.

Resuming continues from the checkpoint, so it must be the same training: a re-run with
another learning rate, data or reward into a folder that holds a checkpoint would mix two
trainings in one model and one metrics file. `train.json` records the settings that shape
the result; a re-run that differs stops with one line naming them. Options that only say
where or how often to write (`--out`, `--save-every`, `--stop-after`, `--log-every`), where
the judge lives (`--judge-base-url`) or how memory is spent (`--gradient-checkpointing`:
the same numbers, recomputed) may change between runs. The folder must be new, empty or
avcurate's own: the trainer replaces `checkpoint/` and `final/`, never a folder of the
user's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from avcurate.core.lock import HOLDER, LOCK, run_lock
from avcurate.core.options import OptionError
from avcurate.core.outputs import OutputError, check_output_folder, check_owned_folder
from avcurate.core.store import EMBEDDED_MEDIA, atomic_write_bytes
from avcurate.trainer.config import TrainConfig
from avcurate.trainer.unusable import SKIPPED

RECORD = "train.json"
OPERATIONAL = frozenset({"out", "save_every", "stop_after", "log_every", "judge_base_url",
                         "gradient_checkpointing", "media_timeout", "eval_every", "eval_rows"})
# what the trainer writes into --out (checkpoint and final swaps go through .old and .tmp)
OURS = frozenset({"checkpoint", "checkpoint.old", "checkpoint.tmp", "metrics.jsonl", "eval.jsonl",
                  "final",
                  "final.old", "final.tmp", RECORD, SKIPPED, LOCK, HOLDER, EMBEDDED_MEDIA})


def settings(cfg: TrainConfig) -> dict[str, Any]:
    """The options that shape the result, with local paths made absolute (a resume from
    another folder names the same files differently)."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
              if f.name not in OPERATIONAL}
    for key in ("data", "model"):
        local = Path(values[key]).expanduser()
        if local.exists():
            values[key] = str(local.resolve())
    return values


def check_out(cfg: TrainConfig) -> None:
    """Raise OptionError, before any model is loaded, when `--out` is a file, a folder of
    the user's, or holds a checkpoint of a training with other settings."""
    out = Path(cfg.out)
    try:
        check_output_folder(out, "--out")
        check_owned_folder(out, "--out", what="an avcurate training folder",
                           ours=lambda name: name in OURS or name.startswith(f".{RECORD}."),
                           hint="choose a new or empty --out")
    except OutputError as exc:
        raise OptionError(str(exc)) from None
    record = out / RECORD
    if not _resumable(out) or not record.is_file():
        return  # nothing to continue from, or a folder from before the record
    before, now = json.loads(record.read_text()), settings(cfg)
    # a setting one version records and another does not (added or removed) is not a change
    changed = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now
               if k in before and before[k] != now[k]]
    if changed:
        raise OptionError(f"--out {out} holds a checkpoint of a training with other settings "
                          f"({'; '.join(changed)}); give the same settings to resume it, or "
                          "choose another --out")


def launched_as_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (torchrun's RANK), known before the
    process group is made; a plain process is."""
    return int(os.environ.get("RANK", "0")) == 0


def out_lock(cfg: TrainConfig) -> AbstractContextManager[None]:
    """One training per folder: rank 0 holds `--out`'s writer lock for the whole run (the
    ranks of one torchrun job share the folder; a second job's rank 0 is refused, and
    torchrun then stops its other ranks)."""
    if not launched_as_rank_zero():
        return nullcontext()
    return run_lock(cfg.out, what="training folder")


def record_settings(cfg: TrainConfig) -> None:
    """Write `train.json` (rank 0, once the model loaded): what a resume is checked
    against."""
    text = json.dumps(settings(cfg), indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(Path(cfg.out) / RECORD, text.encode())


def _resumable(out: Path) -> bool:
    return (out / "checkpoint").exists() or (out / "checkpoint.old").exists()
