"""`avcurate train`: its options are generated from `TrainConfig`'s declared fields.

Multi-GPU (FSDP2) runs use the same command under torchrun:

    torchrun --nproc-per-node 8 -m avcurate train --config train.toml
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from avcurate.cli.common import app, fail, machine_error, out
from avcurate.cli.generate import collect, options_for, with_signature
from avcurate.core.options import OptionError

CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=
                           Annotated[Path | None, typer.Option(
                               help="TOML with any of the options below (a \\[train] table or "
                                    "top-level keys); options given here override it.")])


def register() -> None:
    from avcurate.trainer.config import TrainConfig

    options = options_for([TrainConfig])

    def command(**values: Any) -> None:
        from avcurate.core.lock import RunInUse
        from avcurate.models.errors import EndpointError
        from avcurate.stages.errors import StageError
        from avcurate.trainer.out_folder import launched_as_rank_zero

        try:
            from avcurate.trainer.loop import train
        except ImportError as exc:  # installed without the train extra: a line, no traceback
            fail(f"avcurate train needs {exc.name or 'torch and transformers'}, which is not "
                 "installed: pip install torch==2.13.0 (the CPU wheel; on a GPU machine your "
                 "CUDA build), then pip install 'avcurate[train]'")

        try:
            [given] = collect(options, values, 1)
            cfg = TrainConfig.load(values["config"] or "", **given)
            history = train(cfg)
        except (OptionError, ValueError, OSError, EndpointError, StageError, RunInUse) as exc:
            # OSError: transformers cannot load the model (folder or Hub id), whose messages
            # run over several lines; or the machine's (a full disk), said as everywhere;
            # StageError: the omni policy's decode worker dies on every job (trainer/clips.py)
            fail(machine_error(exc) or " ".join(str(exc).split()))
        worker = _finish()
        if launched_as_rank_zero():  # under torchrun: one summary, rank 0's (the step's
            _summary(cfg, history)  # figures are summed over ranks already)
        if worker:
            _exit_worker()

    doc = ("Train a policy with GSPO/GRPO on an export. Several GPUs: torchrun "
           "--nproc-per-node N -m avcurate train ... (FSDP2).")
    app.command(name="train")(with_signature(command, [CONFIG, *[o.parameter() for o in options]],
                                             doc))


def _summary(cfg, history: list[dict[str, Any]]) -> None:
    """The run's last line: where it got to and where the model is."""
    final = Path(cfg.out) / "final"
    if history:
        last = history[-1]
        out.print(f"trained to step {last['step']}: reward mean {last['reward_mean']:.3f}, "
                  f"{last['tokens_per_s']:.0f} tokens/s; model in {final}"
                  f"{_evaluated(Path(cfg.out))}{_skipped(Path(cfg.out))}", markup=False,
                  soft_wrap=True)
    else:  # --out holds this training finished: nothing was loaded or written
        out.print(f"already trained to step {cfg.steps}, nothing left to do; model in "
                  f"{final}{_evaluated(Path(cfg.out))}{_skipped(Path(cfg.out))}", markup=False,
                  soft_wrap=True)


def _evaluated(folder: Path) -> str:
    """'; validation reward FIRST -> LAST at step N (FILE)' when the training evaluated."""
    import json

    from avcurate.trainer.evaluate import EVAL_FILE

    log = folder / EVAL_FILE
    lines = [json.loads(ln) for ln in (log.read_text().splitlines() if log.is_file() else [])
             if ln.strip()]
    scored = [e for e in lines if "eval_reward_mean" in e]
    if not scored:
        return ""
    first, last = scored[0], scored[-1]
    return (f"; validation reward {first['eval_reward_mean']:.3f} at step {first['step']} -> "
            f"{last['eval_reward_mean']:.3f} at step {last['step']} ({log})")


def _skipped(folder: Path) -> str:
    """'; N rows skipped (FILE)' when the training folder lists rows it could not use.
    Rows, not lines: two ranks that find a row at the same moment both list it."""
    import json

    from avcurate.trainer.unusable import SKIPPED

    log = folder / SKIPPED
    lines = log.read_text().splitlines() if log.is_file() else []
    n = len({json.loads(line)["index"] for line in lines if line.strip()})
    return f"; {n} row{'s' * (n != 1)} skipped ({log})" if n else ""


def _finish() -> bool:
    """Leave the process group; True when there was one (a worker under torchrun)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return False
    dist.destroy_process_group()
    return True


def _exit_worker() -> NoReturn:
    """End a torchrun worker whose training is finished, written and said, without the
    interpreter's teardown, which frees torch's distributed objects in no set order: Gloo's
    threads can then abort the process ("terminate called without an active exception",
    pytorch/pytorch#190489; the atexit fix proposed in #179291 was abandoned), and torchrun
    reports a training that finished and saved as failed (seen once in CI, on rank 1, after
    `destroy_process_group`). The exit handlers still run (ours close executors; a user's
    reward module may flush a logger), and so do the streams' flushes."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
