"""The training loop: rollouts, rewards, group advantages, clipped policy updates.

One process, or many with `torchrun` (FSDP2 `fully_shard` per decoder layer, NCCL on
GPUs, gloo on CPU). Each rank owns whole prompt groups; rewards are gathered before
normalising; loss denominators are global, so N processes compute the same update
as one process on the same global batch.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from avcurate.core.store import EMBEDDED_MEDIA
from avcurate.models.errors import EndpointError
from avcurate.trainer import groups as rollout_groups
from avcurate.trainer import rewards as reward_registry
from avcurate.trainer.collectives import all_sum, gather_list
from avcurate.trainer.config import TrainConfig
from avcurate.trainer.data import Rows, load_rows, open_ended
from avcurate.trainer.evaluate import EVAL_FILE, due, evaluate
from avcurate.trainer.evaluate import log as log_evaluation
from avcurate.trainer.hub_model import loadable
from avcurate.trainer.interrupts import StopAtStepEnd, say
from avcurate.trainer.losses import LossConfig, local_advantages, policy_loss
from avcurate.trainer.out_folder import check_out, out_lock, record_settings
from avcurate.trainer.policy import check_model, context_note, make_policy
from avcurate.trainer.rewards import Reward, RewardSettings
from avcurate.trainer.rewards.judge import check_judge
from avcurate.trainer.rollout import token_logprobs
from avcurate.trainer.state import TrainState
from avcurate.trainer.unusable import SKIPPED

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16-mixed": torch.float32}


def precision(cfg_dtype: str, device: torch.device) -> str:
    """The precision `auto` means here: bf16-mixed on a GPU that computes in bfloat16
    (Ampere and later), float32 elsewhere. Older GPUs (a T4, a V100) only emulate bfloat16,
    far slower than float32; `--dtype bf16-mixed` still asks for it there."""
    if cfg_dtype == "auto":
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if native else "float32"
    return cfg_dtype


# -- distributed ------------------------------------------------------------------------------

def setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count())
    if world > 1 and not dist.is_initialized():
        # NCCL for the GPUs' tensors (FSDP's gathers), Gloo for the few CPU values summed
        # or gathered between ranks (rewards, counts, figures): NCCL takes no CPU tensor
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def check_gpus(processes: int, gpus: int) -> None:
    """One process per GPU, said before any process group forms: NCCL ranks cannot share a
    GPU, and CUDA's own error for the process without one ("invalid device ordinal", a
    traceback on that rank while the others wait) names neither the count nor the fix."""
    if processes > gpus:
        raise ValueError(
            f"torchrun started {processes} processes on this node, which has {gpus} GPU"
            f"{'' if gpus == 1 else 's'} visible: one process per GPU (--nproc-per-node "
            f"{gpus}), or CUDA_VISIBLE_DEVICES= to train on the CPU")


def shard(model: torch.nn.Module, world: int, device: torch.device,
          mixed: bool = False) -> torch.nn.Module:
    """FSDP2: one unit per repeated block, one per tower that holds blocks, then the root;
    with `mixed`, bfloat16 compute and float32 gradient reduction over float32 shards."""
    if world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    kw = {"mesh": mesh}
    if mixed:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                               reduce_dtype=torch.float32)
    full = model.state_dict() if dist.get_rank() == 0 else {}  # rank 0 loaded the weights
    modules = dict(model.named_modules())
    for name in fsdp_units(model):
        fully_shard(modules[name], **kw)
    fully_shard(model, **kw)
    load_from_rank0(model, full, device)
    del full
    # FSDP sets itself up on the root's first forward; generate may call a tower first
    # (image features before the language model), so one token goes through the root now
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))
    reshard_all(model)  # the root stays gathered after a forward; the optimizer needs shards
    return model


def load_from_rank0(model: torch.nn.Module, full: dict[str, torch.Tensor],
                    device: torch.device) -> None:
    """Fill every rank's shards from rank 0's full weights (the other ranks built the model
    on the meta device): the weights are read from disk and held whole by rank 0 only
    (benchmarks/bench_load.py). Buffers, which FSDP does not shard (rotary tables, some not
    in the state dict), are copied from rank 0 as they are."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model.to_empty(device=device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                               broadcast_from_rank0=True))
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def fsdp_units(model: torch.nn.Module) -> list[str]:
    """The modules to shard as their own FSDP units, innermost first, found by shape, not by
    name (layouts move between transformers versions: `model.layers` became
    `model.language_model.layers`, next to `visual.blocks` and `audio_tower.layers`):

    - every block of a stack: a ModuleList of modules of one class, with weights (a
      tiny test model may have one block per stack);
    - every module holding such a stack (a tower: the language model, the vision or audio
      encoder) whose parameters no module outside it uses, so a tower called on its own
      (generate computes image features outside the root's forward) gathers its own
      weights. A tower sharing a weight with the outside (tied input and output embeddings)
      stays in its parent's unit, as FSDP needs a shared weight in one unit; so does the
      tower holding the input embeddings (the language model): multimodal models embed the
      tokens outside its forward, to splice the image and audio features in.
    """
    blocks, stacks = [], []
    for name, module in model.named_modules():
        children = list(module.children())
        if (isinstance(module, torch.nn.ModuleList) and children
                and len({type(c) for c in children}) == 1
                and all(any(True for _ in c.parameters()) for c in children)):
            stacks.append(name)
            blocks += [f"{name}.{i}" if name else str(i) for i in range(len(children))]
    holders = {stack.rpartition(".")[0] for stack in stacks} - {""}
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    towers = [h for h in holders if not _shares_weights(model, h)
              and not _holds(model.get_submodule(h), embed)]
    # innermost first: a unit must be sharded before any unit that contains it
    return blocks + sorted(towers, key=lambda n: -n.count("."))


def _holds(module: torch.nn.Module, part: torch.nn.Module | None) -> bool:
    return part is not None and any(m is part for m in module.modules())


def _shares_weights(model: torch.nn.Module, name: str) -> bool:
    inside = {id(p) for p in model.get_submodule(name).parameters()}
    prefix = name + "."
    return any(id(p) in inside for n, m in model.named_modules()
               if n != name and not n.startswith(prefix)
               for p in m.parameters(recurse=False))


# -- schedule and checkpoints -------------------------------------------------------------------

def lr_lambda(total: int, warmup_fraction: float):
    warmup = max(1, math.ceil(total * warmup_fraction)) if warmup_fraction > 0 else 0

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


@contextmanager
def one_process_quiet() -> Iterator[None]:
    """Torch's distributed checkpoint warns, on every save and load without a process
    group, that it assumes a single process: that is what a one-process run means, and
    the warning would interleave with the progress bar at every checkpoint."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = folder.with_name(folder.name + ".tmp")
    reshard_all(model)
    msd, osd = get_state_dict(model, optimizer)
    try:
        with one_process_quiet():
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "state"))
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state()}, tmp / f"rng-{rank}.pt")
        if rank == 0:
            torch.save({"step": step, "scheduler": scheduler.state_dict()}, tmp / "trainer.pt")
    except (Exception, CheckpointException) as exc:  # the latter is a BaseException
        if _disk_full(tmp):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp.parent)) from exc
        raise
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:  # swap in the new checkpoint only once every rank has written its part
        swap_in(tmp, folder)
    if dist.is_initialized():
        dist.barrier()


def swap_in(tmp: Path, folder: Path) -> None:
    """Put the whole folder `tmp` in place of `folder` (rank 0): the one before is moved
    aside until the new one is in place, so a kill never leaves neither, and `recover`
    finishes or undoes a swap it interrupted."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


FULL_DISK_BYTES = 64 << 20  # free space under which a failed checkpoint write is a full disk


def _disk_full(tmp: Path) -> bool:
    """Whether a checkpoint write failed for want of space. Torch's writers turn a full
    disk into a RuntimeError about a zip position (inside a CheckpointException), which
    names neither; a write that fails with next to nothing free is said as the OSError it
    was, so the command line prints its one line. The half-written checkpoint goes either
    way (the last whole one stays, and a resume starts from it)."""
    free = shutil.disk_usage(tmp.parent).free
    shutil.rmtree(tmp, ignore_errors=True)
    return free < FULL_DISK_BYTES


def reshard_all(model: torch.nn.Module) -> None:
    """Put every FSDP unit back in its sharded state. A tower run outside the root's forward
    (generation computes image and audio features first) can be left gathered, and then its
    registered parameters are not the ones the optimizer holds."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def recover(folder: Path) -> None:
    """Before loading (rank 0): finish or undo a swap (`swap_in`) a kill interrupted. A
    checkpoint or final model moved aside but not yet replaced is put back; a half-written
    new one is dropped."""
    old = folder.with_name(folder.name + ".old")
    tmp = folder.with_name(folder.name + ".tmp")
    if old.exists() and not folder.exists():
        old.rename(folder)
    for leftover in (old, tmp):
        if leftover.exists():
            shutil.rmtree(leftover)


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop logged steps after `step` (rank 0, on resume; metrics and skipped rows): they
    were logged by a run killed before its next checkpoint and are about to be trained and
    logged again."""
    if not path.exists():
        return
    every = [ln for ln in path.read_text().splitlines() if ln.strip()]
    lines = [ln for ln in every if json.loads(ln).get("step", 0) <= step]
    if len(lines) == len(every):
        return  # nothing to drop: the file is left as it is (a finished run stays untouched)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    tmp.replace(path)


def load_checkpoint(folder: Path, model, optimizer, scheduler, rank: int) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    with one_process_quiet():
        dcp.load(state, checkpoint_id=str(folder / "state"))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    trainer = torch.load(folder / "trainer.pt", weights_only=False)
    scheduler.load_state_dict(trainer["scheduler"])
    step = int(trainer["step"])
    own = folder / f"rng-{rank}.pt"
    if not own.exists():  # saved with fewer ranks: this rank's generators start afresh,
        seed_all(1_000_003 * step + rank)  # deterministically for (step, rank)
        return step
    rng = torch.load(own, weights_only=False)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return step


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


# -- the loop -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded row order of one epoch (computed once, not once per prompt)."""
    return np.random.default_rng(seed + epoch).permutation(n_rows)


def prompt_indices(n_rows: int, step: int, per_step: int, seed: int) -> list[int]:
    """The step's global prompt indices: a fresh seeded permutation each epoch."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n_rows)
        out.append(int(epoch_order(n_rows, seed, epoch)[pos]))
    return out


def build_rewards(cfg: TrainConfig) -> list[Reward]:
    settings = RewardSettings(cfg.attention_lambda, cfg.attention_strict, cfg.judge_backend,
                              cfg.judge_model, cfg.judge_base_url)
    return reward_registry.build(cfg.rewards, settings)


def close_judges(rewards: list[Reward]) -> None:
    """Close the judge the rewards share, when one was built: the HTTP client and its loop
    thread end with the training, not at the interpreter's exit (a notebook that trains
    twice kept both of the first run's)."""
    for settings in {id(s): s for r in rewards
                     if isinstance(s := getattr(r, "settings", None), RewardSettings)}.values():
        settings.close()


def setup(cfg: TrainConfig, policy_kwargs: dict | None = None,
          held: ExitStack | None = None) -> TrainState:
    """Every check, then everything a step needs (`check`, `build`)."""
    return build(cfg, *check(cfg, held), policy_kwargs)


def check(cfg: TrainConfig, held: ExitStack | None = None) -> tuple[str, list[Reward]]:
    """Every option, path, reward, judge and the model's kind, before any model loads.
    `--out`'s writer lock goes into `held` once every check has passed (a refused option
    leaves no folder) and before the model loads (a second training into the same folder
    is refused before it spends minutes loading weights). What to load for `--model`, and
    the rewards."""
    cfg.check()
    rewards = build_rewards(cfg)  # a typo in a reward name fails before any model loads
    cfg.check_paths()  # after every option's own check: a typo is named first
    check_out(cfg)
    judged = [r.name for r in rewards if getattr(r, "needs_judge", False)]
    check_judge(cfg.judge_backend, cfg.judge_model, cfg.judge_base_url, judged)
    model_path = loadable(cfg.model)  # a Hub id on a machine without network: its cache
    check_model(cfg.policy, cfg.model, model_path, cfg.max_new_tokens)
    if held is not None:
        held.enter_context(out_lock(cfg))
    return model_path, rewards


def warn_open_ended(rows: Rows, rewards: list[Reward]) -> None:
    """Say, before training, when rows without options meet the letter-reading accuracy
    reward: they earn 0 on every completion, a silent waste of their generations."""
    n = open_ended(rows)
    if n and "accuracy" in [r.name for r in rewards]:
        say(f"note: {n:,} of {len(rows):,} training rows are open-ended (no options); the "
            "accuracy reward reads an option letter and gives them 0 whatever the answer. "
            "Add soft_accuracy (a judge grades the answer) or train on multiple-choice rows.")


def build(cfg: TrainConfig, model_path: str, rewards: list[Reward],
          policy_kwargs: dict | None = None) -> TrainState:
    """Distributed setup, seeds, data, policy (+ reference), optimizer, schedule."""
    rank, world, device = setup_distributed()
    if cfg.prompts_per_step % world:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} must divide among {world} ranks")
    seed_all(cfg.seed)
    # clips a Hub dataset holds in its files are written out for a policy that reads them
    media_dir = Path(cfg.out) / EMBEDDED_MEDIA if cfg.policy == "omni" else None
    rows = load_rows(cfg.data, media_dir=media_dir)
    held_out = load_rows(cfg.data, "validation", media_dir) if cfg.eval_every else None
    if rank == 0:
        warn_open_ended(rows, rewards)
    prec = precision(cfg.dtype, device)
    mixed = prec == "bf16-mixed"
    policy_kw = {"dtype": DTYPES[prec], "device": device, "system_prompt": cfg.system_prompt,
                 "frames": cfg.frames, "audio_seconds": cfg.audio_seconds,
                 "max_pixels": cfg.max_pixels, "media_timeout": cfg.media_timeout,
                 "meta": world > 1 and rank != 0,  # sharded: only rank 0 reads the weights
                 **(policy_kwargs or {})}
    try:
        policy = make_policy(cfg.policy, model_path, **policy_kw)
    except (OSError, ValueError) as exc:  # transformers' messages name no folder, and wrap
        raise ValueError(f"--model {cfg.model} cannot be loaded: "
                         f"{' '.join(str(exc).split())}") from exc
    notes = [getattr(policy, "note", None),
             context_note(cfg.model, getattr(policy, "context", None), cfg.max_new_tokens,
                          cfg.max_prompt_tokens)]
    for note in notes if rank == 0 else []:
        if note:
            say(note)
    if cfg.gradient_checkpointing:  # transformers 5 renamed it; 4.x has the old name only
        enable = getattr(policy.model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            policy.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = shard(policy.model, world, device, mixed)
    ref = None
    if cfg.beta > 0:
        ref = shard(make_policy(cfg.policy, model_path, **policy_kw).model, world, device,
                    mixed).eval()
        ref.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_updates = cfg.steps * cfg.steps_per_generation
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lr_lambda(total_updates, cfg.warmup_fraction))
    loss_cfg = LossConfig(cfg.algo, cfg.eps_low, cfg.eps_high, cfg.beta, cfg.aggregation,
                          cfg.max_new_tokens)
    return TrainState(cfg, rank, world, rows, policy, model, ref, optimizer, scheduler, loss_cfg,
                      rewards, reward_registry.rollouts_needed(rewards), mixed, device,
                      eval_rows=held_out)


def train(cfg: TrainConfig, progress: bool = True, policy_kwargs: dict | None = None
          ) -> list[dict[str, Any]]:
    """Run (or resume) training; `policy_kwargs` reach the adapter (e.g. an omni processor).
    The steps this call trained: none when `--out` holds this training finished, which
    is found before any model loads (a re-queued job would otherwise load the policy, the
    reference and the optimizer's state only to write them back unchanged)."""
    with ExitStack() as held:
        checked = check(cfg, held)
        held.callback(close_judges, checked[1])
        if finished_at(cfg) is not None:
            return []
        return _train(build(cfg, *checked, policy_kwargs), progress)


def _train(state: TrainState, progress: bool) -> list[dict[str, Any]]:
    """The steps from the checkpoint (if any) to the last; the final model."""
    cfg = state.cfg
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    if state.rank == 0:
        recover(ckpt)
        recover(out / "final")
        record_settings(cfg)  # only now: a model that failed to load left nothing to resume
    if dist.is_initialized():
        dist.barrier()
    start = load_checkpoint(ckpt, state.model, state.optimizer, state.scheduler, state.rank) \
        if ckpt.exists() else 0
    metrics_path = out / "metrics.jsonl"
    state.skipped.path = out / SKIPPED
    if state.rank == 0:
        keep_metrics_until(metrics_path, start)
        keep_metrics_until(state.skipped.path, start)  # rows met in steps to be trained again
        # an evaluation follows its step's metrics and comes before its checkpoint; the one
        # before any step is made again with the first step
        keep_metrics_until(out / EVAL_FILE, start if start else -1)
    if dist.is_initialized():
        dist.barrier()  # before any rank logs a skipped row of the first step
    history = []
    bar = _bar(progress and state.rank == 0, cfg.steps, start)
    try:
        with StopAtStepEnd(state.world == 1) as stop:
            if start == 0:
                _evaluated(state, out, 0)
            for step in range(start, cfg.steps):
                record = _logged_step(state, ckpt, step, start)
                history.append(record)
                if state.rank == 0 and (step + 1) % cfg.log_every == 0:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.set_postfix(reward=f"{record['reward_mean']:.3f}")
                    bar.update(1)
                _evaluated(state, out, step + 1)
                if step + 1 < cfg.steps and _ends_here(state, ckpt, stop, step + 1, start):
                    return history  # a time-limited job: the next run resumes exactly here
        _save(state, ckpt, cfg.steps)
        save_final(out / "final", state.policy, state.model, state.rank)
    finally:  # an error's line then starts on a line of its own, not after the bar
        if bar is not None:
            bar.close()
        getattr(state.policy, "close", lambda: None)()  # the omni policy's clip reader
    return history


def _evaluated(state: TrainState, out: Path, done: int) -> None:
    """The evaluation due after `done` steps, if any (`evaluate.py`), logged by rank 0."""
    if state.eval_rows is None or not due(state.cfg, done):
        return
    record = evaluate(state, state.eval_rows, done)
    if state.rank == 0:
        log_evaluation(out / EVAL_FILE, record)


def _ends_here(state: TrainState, ckpt: Path, stop: StopAtStepEnd, done: int, start: int
               ) -> bool:
    """After step `done` (not the last): a checkpoint where one is due (every
    `--save-every`, at `--stop-after`, where Ctrl-C or SIGTERM asked to stop); True when
    `--stop-after` ends this run here. A stop that was asked is then handed on: the command
    stops as on any Ctrl-C or SIGTERM."""
    cfg = state.cfg
    limit = bool(cfg.stop_after) and done - start >= cfg.stop_after
    if limit or stop.asked or (cfg.save_every and done % cfg.save_every == 0):
        _save(state, ckpt, done)
    if stop.asked and not limit:
        say(f"checkpoint saved at step {done}")
        stop.hand_on()
    return limit


def _logged_step(state: TrainState, ckpt: Path, step: int, start: int) -> dict[str, Any]:
    """One generation step over this rank's share of the step's prompts, and its record."""
    cfg = state.cfg
    t0 = time.perf_counter()
    indices = prompt_indices(len(state.rows), step, cfg.prompts_per_step, cfg.seed)
    per_rank = cfg.prompts_per_step // state.world
    mine = list(range(state.rank * per_rank, (state.rank + 1) * per_rank))
    try:
        record = _generation_step(state, [indices[i] for i in mine],
                                  [step * cfg.prompts_per_step + i for i in mine], step)
    except EndpointError as exc:
        _stop_for_judge(state, ckpt, step, start, exc)
    record |= {"step": step + 1, "lr": state.scheduler.get_last_lr()[0],
               "seconds": time.perf_counter() - t0}
    record["tokens_per_s"] = record.pop("tokens") / record["seconds"]
    return record


def _stop_for_judge(state: TrainState, ckpt: Path, step: int, start: int,
                    exc: EndpointError) -> NoReturn:
    """The judge's server failed mid-run: keep the steps this run finished and say how to go
    on. The rewards come before the step's first update and draw from no global RNG (the
    rollouts have their own generators, in eval mode), so the checkpoint is the one an
    unbroken run would have written after `step`. One process only: the ranks of a sharded
    run each ask their own judge and may not all have failed, and a checkpoint needs every
    rank."""
    saved = state.world == 1 and step > start
    if saved:
        _save(state, ckpt, step)
    then = (f"steps up to {step} are saved, and the same command resumes from there"
            if saved else "run the same command again once it answers")
    raise EndpointError(f"the judge stopped training at step {step + 1} ({exc}); {then}") \
        from None


def _save(state: TrainState, folder: Path, step: int) -> None:
    save_checkpoint(folder, state.model, state.optimizer, state.scheduler, step, state.rank)


def save_final(folder: Path, policy, model, rank: int) -> None:
    """The trained policy as a plain transformers folder (gathered from all shards),
    written beside `folder` and swapped in whole: a `final/` is always a complete model,
    which is what lets a re-run of a finished training skip loading it (`finished_at`)."""
    full = full_state_dict(model)
    if rank == 0:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        policy.model.save_pretrained(tmp, state_dict=full)
        getattr(policy, "processor", policy.tokenizer).save_pretrained(tmp)
        swap_in(tmp, folder)
    if dist.is_initialized():
        dist.barrier()


def finished_at(cfg: TrainConfig) -> int | None:
    """The last step when `--out` holds this training finished: a checkpoint at the last
    step and the final model (every rank reads the same files; nothing is written while
    the folder's lock is held). A swap a kill interrupted is not finished, and the run
    goes the usual way, which recovers it. A `final/` written by avcurate before it was
    swapped in whole (2026-11-25) is taken as whole too."""
    out = Path(cfg.out)
    trainer = out / "checkpoint" / "trainer.pt"
    if not (out / "final").is_dir() or not trainer.is_file():
        return None
    step = int(torch.load(trainer, weights_only=False)["step"])
    return step if step == cfg.steps else None


def _bar(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step")


def _generation_step(state: TrainState, row_ids: list[int], global_ids: list[int], step: int
                     ) -> dict[str, Any]:
    cfg, policy, model = state.cfg, state.policy, state.model
    G = cfg.num_generations
    model.eval()
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.max_new_tokens, "suppress_tokens": policy.suppress_tokens}
    with state.compute():
        slots = list(zip(row_ids, global_ids, strict=True))
        groups, figures = rollout_groups.fill(state, slots, step, sampling)
    rollout, total, parts = rollout_groups.to_rollout(groups, policy.tokenizer)
    rollout = rollout.to(state.device)
    rewards = torch.tensor(total, dtype=torch.float32)  # gathered over gloo on the CPU
    advantages = local_advantages(rewards, G, cfg.advantage).to(state.device)
    media = policy.batch_extras(rollout.extras)
    with torch.no_grad(), state.compute():
        # with one optimizer step per generation the policy that sampled is the one being
        # updated: its log-probs are the update's own (detached), so no extra forward pass
        old_logp = token_logprobs(model, rollout.input_ids, rollout.attention_mask, media) \
            if cfg.steps_per_generation > 1 else None
        ref_logp = token_logprobs(state.ref, rollout.input_ids, rollout.attention_mask, media) \
            if state.ref is not None else None
    model.train()
    stats = _updates(state, rollout, old_logp, ref_logp, advantages)
    return _record(state, rollout, total, parts, stats) | figures


def _record(state: TrainState, rollout, total, parts, stats) -> dict[str, Any]:
    G = state.cfg.num_generations
    all_rewards = gather_list(total)
    groups = torch.tensor(all_rewards).view(-1, G)
    record = {"reward_mean": float(np.mean(all_rewards)), "reward_std": float(np.std(all_rewards)),
              "zero_std_groups": float((groups.std(dim=1, unbiased=False) < 1e-6).float().mean()),
              "completion_len": all_sum(rollout.completion_tokens) / len(all_rewards),
              "tokens": all_sum(rollout.completion_tokens),
              "skipped_rows": int(all_sum(state.skipped.take_count())), **stats}
    for name, values in parts.items():
        gathered = gather_list(values)
        record[f"reward/{name}_mean"] = float(np.mean(gathered))
        record[f"reward/{name}_std"] = float(np.std(gathered))
    return record


def _updates(state: TrainState, rollout, old_logp, ref_logp, advantages) -> dict[str, float]:
    """steps_per_generation optimizer steps, each over a minibatch split into grad_accum
    micro-batches; denominators are summed over ranks so the update is layout-independent.

    Sequences are first interleaved by their position in the group ([g0s0, g1s0, g0s1, ...]),
    so minibatch m holds the same positions of every group whichever rank owns the group:
    with G divisible by steps_per_generation * grad_accum, N ranks make exactly the
    updates one process makes.
    """
    cfg, policy, model, optimizer = state.cfg, state.policy, state.model, state.optimizer
    world = state.world
    B = rollout.input_ids.shape[0]
    G = cfg.num_generations
    order = [g * G + j for j in range(G) for g in range(B // G)]
    rollout = rollout.select(order)
    advantages = advantages[order]
    old_logp = old_logp[order] if old_logp is not None else None
    ref_logp = ref_logp[order] if ref_logp is not None else None
    mini = B // cfg.steps_per_generation
    micro = mini // cfg.grad_accum
    losses = []
    # per-token figures weighted by each micro-batch's tokens, summed over ranks at the end:
    # the logged value is the mean over every completion token of the step, whatever the
    # number of ranks or micro-batches (an average of averages is not)
    weighted = {"clip_fraction": 0.0, "kl": 0.0, "ratio_mean": 0.0}
    tokens = 0.0
    for m in range(cfg.steps_per_generation):
        sl = slice(m * mini, (m + 1) * mini)
        denom = {"sequences": all_sum(float(mini)),
                 "tokens": all_sum(float(rollout.completion_mask[sl].sum()))}
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for a in range(cfg.grad_accum):
            ms = slice(sl.start + a * micro, sl.start + (a + 1) * micro)
            if hasattr(model, "set_requires_gradient_sync"):  # sharded: reduce-scatter the
                model.set_requires_gradient_sync(a == cfg.grad_accum - 1)  # summed grads once
            media = policy.batch_extras(rollout.extras[ms]) if rollout.extras else None
            with state.compute():
                logp = token_logprobs(model, rollout.input_ids[ms], rollout.attention_mask[ms],
                                      media)
            old = old_logp[ms] if old_logp is not None else logp.detach()
            out = policy_loss(logp, old, advantages[ms], rollout.completion_mask[ms],
                              state.loss_cfg, ref_logp[ms] if ref_logp is not None else None,
                              denom)
            (out.loss * world).backward()  # FSDP averages gradients over ranks
            step_loss += float(out.loss.detach())
            n = float(rollout.completion_mask[ms].sum())
            tokens += n
            for key in weighted:
                weighted[key] += getattr(out, key) * n
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        state.scheduler.step()
        losses.append(all_sum(step_loss))
    total = max(all_sum(tokens), 1.0)
    return {"loss": float(np.mean(losses)),
            **{key: all_sum(value) / total for key, value in weighted.items()}}
