"""Rollout groups: G sampled completions per prompt, their rewards, and dynamic sampling.

Dynamic sampling (DAPO, Yu et al. 2025): a group whose completions all get the same
reward has zero advantage everywhere, so it adds nothing to the policy gradient but still
dilutes the batch. With `--dynamic-sampling` such a group is replaced by a group for
another prompt, up to `--max-resample-rounds` times, so the batch stays full of groups
that carry a learning signal.

Each prompt slot resamples on its own: the replacement row and its sampling seed depend
only on (run seed, step, the slot's global index, round), never on which rank holds the
slot, so N ranks still make exactly the update one rank makes. Under FSDP every rank must
make the same number of generate calls (each forward gathers weights from all ranks), so
a rank with fewer groups to replace in a round samples throwaway groups to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from avcurate.trainer import rewards as reward_registry
from avcurate.trainer.clips import clip_scope
from avcurate.trainer.collectives import all_max, all_sum
from avcurate.trainer.rollout import pack, prompt_seed, row_seed, sample_batch
from avcurate.trainer.state import TrainState
from avcurate.trainer.unusable import UnusableRow, usable_input


@dataclass
class Group:
    """One prompt's G completions and what the rewards and the update need of them."""

    prompt: torch.Tensor
    completions: list[torch.Tensor]
    row: dict[str, Any]
    media: dict
    texts: list[str]
    rewards: list[float] | None = None
    parts: dict[str, list[float]] | None = None

    @property
    def flat(self) -> bool:
        """All completions rewarded alike: no advantage, no learning signal."""
        return self.rewards is not None and max(self.rewards) - min(self.rewards) < 1e-6


def sample_groups(state: TrainState, slots: list[tuple[int, int]], step: int,
                  sampling: dict[str, Any], salt: int = 0, throwaway: bool = False
                  ) -> list[Group]:
    """A group per (row index, global slot index), with the rewards' extra rollouts; `salt`
    (the resampling round) gives a replacement its own sampling seed; `throwaway`: groups
    sampled only to keep in step with other ranks, whose skipped rows are not counted.

    Every slot's G completions come from one generate call (and the extra rollouts from
    one more), each prompt's media encoded once. Each completion comes from its own seed,
    so the result does not depend on how slots are batched. The extra rollouts take the
    clips the prompts read: each read again, a clip that then failed (a slow mount past
    --media-timeout, a file replaced) stopped training with a traceback."""
    with clip_scope(state.policy, "hold"):
        return _sample_groups(state, slots, step, sampling, salt, throwaway)


def _sample_groups(state: TrainState, slots: list[tuple[int, int]], step: int,
                   sampling: dict[str, Any], salt: int, throwaway: bool) -> list[Group]:
    cfg, policy = state.cfg, state.policy
    G = cfg.num_generations
    rows, inputs = _usable(state, slots, step, salt, not throwaway)
    seeds = [prompt_seed(cfg.seed + 101 * salt, step, g_idx) for _, g_idx in slots]
    completions = _sample(state, inputs, seeds, G, sampling)
    for variant in state.variants:  # the extra rollouts the rewards declared
        alt_inputs = [policy.inputs(row, variant, cfg.max_prompt_tokens) for row in rows]
        alt_seeds = [prompt_seed(cfg.seed + 101 * salt + 7, step, g_idx) for _, g_idx in slots]
        for row, [alt] in zip(rows, _sample(state, alt_inputs, alt_seeds, 1, sampling),
                              strict=True):
            row[f"{variant}_completion"] = policy.tokenizer.decode(alt, skip_special_tokens=True)
    tok = policy.tokenizer
    return [Group(ids, group, row, media, [tok.decode(c, skip_special_tokens=True)
                                           for c in group])
            for (ids, media), group, row in zip(inputs, completions, rows, strict=True)]


def _usable(state: TrainState, slots: list[tuple[int, int]], step: int, salt: int,
            count: bool) -> tuple[list[dict[str, Any]], list[tuple[torch.Tensor, dict]]]:
    """Each slot's row and prompt, an unusable row replaced (`unusable.py`). A rank that
    stops tells the others, which would otherwise wait for it in the next collective."""
    cfg = state.cfg
    rows, inputs, stop = [], [], None
    for r_idx, g_idx in slots:
        try:
            row, made = usable_input(state.skipped, lambda row: row_prompt(state, row), state.rows,
                                     r_idx, [cfg.seed, step, g_idx, salt], step, count)
        except UnusableRow as exc:
            stop = exc
            break
        rows.append(row)
        inputs.append(made)
    if all_max(int(stop is not None)):
        raise stop or UnusableRow("unusable", f"training stopped at step {step + 1}: "
                                  "another rank could not find usable rows")
    return rows, inputs


def row_prompt(state: TrainState, row: dict[str, Any]) -> tuple[torch.Tensor, dict]:
    """The row's prompt ids and media. A prompt that leaves the model's context too little
    room for `--max-new-tokens` is unusable: past its positions a model with learned
    positions fails with an IndexError, and a RoPE one samples from positions it never saw
    (`policy.context_note` says so before training)."""
    cfg, policy = state.cfg, state.policy
    ids, media = policy.inputs(row, "av", cfg.max_prompt_tokens)
    context = getattr(policy, "context", None)
    if context is not None and len(ids) + cfg.max_new_tokens > context:
        raise UnusableRow("context_length", f"row {row.get('id', '?')}: the prompt has "
                          f"{len(ids)} tokens, and with --max-new-tokens {cfg.max_new_tokens} "
                          f"it is over the model's context of {context:,} positions")
    return ids, media


def _sample(state: TrainState, inputs: list[tuple[torch.Tensor, dict]], seeds: list[int],
            G: int, sampling: dict[str, Any]) -> list[list[torch.Tensor]]:
    """G completions per (prompt ids, media), from one generate call over prompts x G
    (left-padded), with the policy's media for the copies."""
    model, policy = state.model, state.policy
    if not inputs:
        return []
    with policy.rollout_media(model, [media for _, media in inputs], G) as extras:
        flat = sample_batch(model, policy.tokenizer, [ids for ids, _ in inputs for _ in range(G)],
                            [row_seed(s, j) for s in seeds for j in range(G)], extras=extras,
                            **sampling)
    return [flat[k * G:(k + 1) * G] for k in range(len(inputs))]


def score(state: TrainState, groups: list[Group]) -> None:
    """Every group's rewards, in one call per reward (judges batch their requests)."""
    G = state.cfg.num_generations
    texts = [t for g in groups for t in g.texts]
    rows = [g.row for g in groups for _ in range(G)]
    total, parts = reward_registry.combine(state.rewards, state.cfg.reward_weights or None,
                                           texts, rows)
    for k, g in enumerate(groups):
        g.rewards = total[k * G:(k + 1) * G]
        g.parts = {name: values[k * G:(k + 1) * G] for name, values in parts.items()}


def replacement_row(seed: int, step: int, slot: int, round_: int, n_rows: int) -> int:
    """The row a flat group's slot tries next: seeded by the slot, not by the rank."""
    return int(np.random.default_rng([seed, step, slot, round_]).integers(n_rows))


def fill(state: TrainState, slots: list[tuple[int, int]], step: int,
         sampling: dict[str, Any]) -> tuple[list[Group], dict[str, float]]:
    """The step's groups for this rank's slots, flat ones replaced when dynamic sampling is
    on; and the figures for the metrics (summed over ranks)."""
    cfg = state.cfg
    groups = sample_groups(state, slots, step, sampling)
    score(state, groups)
    replaced, rounds = 0, 0
    for round_ in range(1, cfg.max_resample_rounds + 1 if cfg.dynamic_sampling else 1):
        flat = [k for k, g in enumerate(groups) if g.flat]
        most = all_max(len(flat))
        if most == 0:
            break
        rounds = round_
        tries = [(replacement_row(cfg.seed, step, slots[k][1], round_, len(state.rows)),
                  slots[k][1]) for k in flat]
        if flat:
            new = sample_groups(state, tries, step, sampling, salt=round_)
        else:  # keep in step with the ranks that replace groups: the same calls and collectives
            sample_groups(state, [slots[0]], step, sampling, salt=round_, throwaway=True)
            new = []
        score(state, new)
        for k, group in zip(flat, new, strict=True):
            groups[k] = group
        replaced += len(new)
    figures = {}
    if cfg.dynamic_sampling:
        sampled = all_sum(len(groups) + replaced)  # the first round's, then replacements
        figures = {"dropped_groups": all_sum(replaced) / max(sampled, 1),
                   "resample_rounds": float(rounds)}
    return groups, figures


def to_rollout(groups: list[Group], tokenizer):
    """The groups' sequences packed for the update, with their rows and rewards."""
    G = len(groups[0].completions)
    rollout = pack([g.prompt for g in groups for _ in range(G)],
                   [c for g in groups for c in g.completions], tokenizer.pad_token_id, tokenizer)
    rollout.extras = [g.media for g in groups for _ in range(G)]
    total = [r for g in groups for r in g.rewards]
    parts = {name: [v for g in groups for v in g.parts[name]] for name in groups[0].parts}
    return rollout, total, parts
