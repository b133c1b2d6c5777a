"""Evaluation on the export's validation split while training.

The export sets a validation split aside (whole clips, `hub/splits.py`), and training
never looked at it: the only figure a run gave was the reward of the rollouts it was
learning from, which rises as much from memorising as from learning. With `--eval-every N`
the policy answers the first `--eval-rows` validation rows before training, every N steps
and after the last, one greedy completion each (no sampling noise between evaluations),
scored by the training rewards; each evaluation is a line of `OUT/eval.jsonl`.

The rows are dealt to the ranks in turn; under FSDP every rank must make the same
generate calls, so a rank with fewer prompts repeats one of its own to keep in step (not
counted). A row training could not use either (a missing clip, a prompt over
`--max-prompt-tokens`) is left out and counted.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avcurate.media.errors import MediaError
from avcurate.trainer import rewards as reward_registry
from avcurate.trainer.clips import clip_scope
from avcurate.trainer.collectives import all_max, all_sum
from avcurate.trainer.data import Rows
from avcurate.trainer.groups import row_prompt
from avcurate.trainer.rollout import sample_batch
from avcurate.trainer.state import TrainState
from avcurate.trainer.unusable import UnusableRow

EVAL_FILE = "eval.jsonl"


def due(cfg, done: int) -> bool:
    """Whether an evaluation follows `done` steps: before the first, every `--eval-every`,
    and after the last."""
    return bool(cfg.eval_every) and (done % cfg.eval_every == 0 or done == cfg.steps)


def evaluate(state: TrainState, rows: Rows, done: int) -> dict[str, Any]:
    """The policy's mean rewards on the first `--eval-rows` rows, after `done` steps."""
    t0 = time.perf_counter()
    state.model.eval()  # as for rollouts; the step after sets train mode for its updates
    with clip_scope(state.policy, "keep"):  # the variants read what the prompts read
        return _evaluate(state, rows, done, t0)


def _evaluate(state: TrainState, rows: Rows, done: int, t0: float) -> dict[str, Any]:
    """`evaluate` inside the clip reader's scope: a row whose clip cannot be read is left
    out, and once a row is in, its variants cannot fail to read (they take the prompt's)."""
    cfg, policy = state.cfg, state.policy
    n = min(cfg.eval_rows, len(rows))
    prompts, kept, left_out = [], [], 0
    for i in range(state.rank, n, state.world):
        row = dict(rows[i])
        try:
            prompts.append(row_prompt(state, row))
            kept.append(row)
        except (MediaError, UnusableRow):
            left_out += 1
    record: dict[str, Any] = {"step": done, "eval_rows": int(all_sum(len(kept))),
                              "eval_left_out": int(all_sum(left_out))}
    if all_max(int(not kept)):  # a rank with nothing to answer cannot keep in step
        return record | {"seconds": time.perf_counter() - t0}
    per_call = max(1, cfg.prompts_per_step * cfg.num_generations // state.world)
    calls = int(all_max(math.ceil(len(prompts) / per_call)))
    texts, tokens = _answers(state, prompts, calls, per_call)
    for variant in state.variants:  # the rewards' extra rollouts, greedy too
        alt = [policy.inputs(row, variant, cfg.max_prompt_tokens) for row in kept]
        for row, text in zip(kept, _answers(state, alt, calls, per_call)[0], strict=True):
            row[f"{variant}_completion"] = text
    total, parts = reward_registry.combine(state.rewards, cfg.reward_weights or None, texts,
                                           kept)
    count = all_sum(float(len(kept)))
    record["eval_reward_mean"] = all_sum(float(np.sum(total))) / count
    for name, values in parts.items():
        record[f"eval/{name}_mean"] = all_sum(float(np.sum(values))) / count
    record["eval_completion_len"] = all_sum(float(sum(tokens))) / count
    return record | {"seconds": time.perf_counter() - t0}


def _answers(state: TrainState, inputs: list[tuple[torch.Tensor, dict]], calls: int,
             per_call: int) -> tuple[list[str], list[int]]:
    """One greedy completion per (prompt ids, media): texts and token counts. `calls`
    generate calls of `per_call` prompts, the first prompt repeated to fill them (every
    rank makes the same calls); the repeats' answers are dropped."""
    policy, cfg = state.policy, state.cfg
    padded = inputs + [inputs[0]] * (calls * per_call - len(inputs))
    texts, tokens = [], []
    for c in range(calls):
        chunk = padded[c * per_call:(c + 1) * per_call]
        with torch.no_grad(), state.compute(), \
                policy.rollout_media(state.model, [m for _, m in chunk], 1) as extras:
            out = sample_batch(state.model, policy.tokenizer, [ids for ids, _ in chunk],
                               [0] * len(chunk), temperature=1.0, top_p=1.0, greedy=True,
                               max_new_tokens=cfg.max_new_tokens, extras=extras,
                               suppress_tokens=policy.suppress_tokens)
        texts += [policy.tokenizer.decode(o, skip_special_tokens=True) for o in out]
        tokens += [len(o) for o in out]
    return texts[:len(inputs)], tokens[:len(inputs)]


def log(path: Path, record: dict[str, Any]) -> None:
    """Rank 0: the evaluation's line in OUT/eval.jsonl, and a line on the console."""
    from tqdm.auto import tqdm

    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if "eval_reward_mean" not in record:
        tqdm.write(f"eval after step {record['step']}: no validation row could be used "
                   f"({record['eval_left_out']:,} left out)", file=sys.stderr)
        return
    parts = ", ".join(f"{k[5:-5]} {v:.3f}" for k, v in record.items()
                      if k.startswith("eval/"))
    left = f", {record['eval_left_out']:,} left out" if record["eval_left_out"] else ""
    tqdm.write(f"eval after step {record['step']}: reward {record['eval_reward_mean']:.3f} "
               f"({parts}) over {record['eval_rows']:,} validation rows{left}",
               file=sys.stderr)
