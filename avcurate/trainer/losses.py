"""Policy-gradient losses on [B, T] log-prob tensors with a completion mask.

Everything is computed in float32 and log-ratios are clamped before `exp`, so
a bf16 policy or one wild token cannot produce inf/NaN.

- Group advantages: A_i = (r_i - mean_group) / (std_group + eps); a group whose
  rewards are all equal gets A = 0 exactly (no NaN, no 1/eps blow-up).
- GRPO: per-token ratio exp(logp - logp_old) clipped to [1 - eps_low, 1 + eps_high].
- GSPO: one ratio per sequence, s_i = exp(mean_t(logp - logp_old)), clipped to
  [1 - 3e-4, 1 + 4e-4] by default; `gspo_token` keeps the sequence ratio's value
  but lets each token carry its own gradient: logp - sg(logp) + sg(log s_i).
- Optional KL to a reference policy with the k3 estimator exp(ref - logp) - (ref - logp) - 1.
- Aggregation: "seq_mean_token_mean" (mean over each sequence's tokens, then over
  sequences; the right one for GSPO), "token_mean" (all tokens of the batch), and
  "dr_grpo" (sum over tokens / (number of sequences * a constant length)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

LOG_RATIO_CLAMP = 20.0
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "dr_grpo")


def gather_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """All ranks' rewards in rank order (each rank holds whole groups, equally many)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rewards
    parts = [torch.empty_like(rewards) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rewards.contiguous())
    return torch.cat(parts)


def group_advantages(rewards: torch.Tensor, group_size: int, mode: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages for rewards laid out group by group ([r_0..r_{G-1}, r_G.., ...]).

    mode "group": normalise within each group; "batch": subtract the group mean,
    divide by the batch std; "none": the raw rewards, centred per group.
    """
    r = rewards.float()
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not form groups of {group_size}: "
                         "a group must never be split across batches or ranks")
    g = r.view(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if mode == "group":
        std = g.std(dim=1, keepdim=True, unbiased=False)
        adv = torch.where(std > 1e-6, centred / (std + eps), torch.zeros_like(centred))
    elif mode == "batch":
        std = r.std(unbiased=False)
        adv = centred / (std + eps) if std > 1e-6 else torch.zeros_like(centred)
    elif mode == "none":
        adv = centred
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; use group, batch or none")
    return adv.reshape(-1)


def local_advantages(rewards: torch.Tensor, group_size: int, mode: str = "group") -> torch.Tensor:
    """Gather every rank's rewards, normalise, and return this rank's slice."""
    if rewards.numel() % group_size:
        raise ValueError("this rank holds a partial group: the batch layout must keep groups whole")
    everything = gather_rewards(rewards)
    adv = group_advantages(everything, group_size, mode)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    n = rewards.numel()
    return adv[rank * n:(rank + 1) * n]


@dataclass
class LossConfig:
    algo: str = "gspo"            # "grpo" | "gspo" | "gspo_token"
    eps_low: float | None = None  # defaults: 0.2 for GRPO, 3e-4 for GSPO
    eps_high: float | None = None  # defaults: 0.2 for GRPO, 4e-4 for GSPO
    beta: float = 0.0             # KL weight (OmniVideo-R1 used 0.03)
    aggregation: str = "seq_mean_token_mean"
    dr_grpo_length: int = 1024    # Dr. GRPO's constant normaliser

    def bounds(self) -> tuple[float, float]:
        grpo = self.algo == "grpo"
        low = self.eps_low if self.eps_low is not None else (0.2 if grpo else 3e-4)
        high = self.eps_high if self.eps_high is not None else (0.2 if grpo else 4e-4)
        return low, high


@dataclass
class LossOutput:
    loss: torch.Tensor
    clip_fraction: float
    kl: float
    ratio_mean: float


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str, dr_length: int,
              denominators: dict[str, float] | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss. `denominators` (from all ranks) make a local loss whose
    average over ranks equals the global loss: keys `sequences` and `tokens`."""
    mask = mask.float()
    if how == "seq_mean_token_mean":
        per_seq = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        n = denominators["sequences"] if denominators else per_seq.numel()
        return per_seq.sum() / n
    if how == "token_mean":
        n = denominators["tokens"] if denominators else mask.sum().clamp(min=1)
        return (per_token * mask).sum() / n
    if how == "dr_grpo":
        n = denominators["sequences"] if denominators else per_token.shape[0]
        return (per_token * mask).sum() / (n * dr_length)
    raise ValueError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cfg: LossConfig, ref_logp: torch.Tensor | None = None,
                denominators: dict[str, float] | None = None) -> LossOutput:
    """The clipped surrogate (+ optional KL) for GRPO, GSPO or GSPO-token."""
    logp, old_logp = logp.float(), old_logp.float()
    mask_f = mask.float()
    adv = advantages.float().unsqueeze(1)
    low, high = cfg.bounds()
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if cfg.algo == "grpo":
        ratio = torch.exp(log_ratio)
    elif cfg.algo in ("gspo", "gspo_token"):
        seq_log_ratio = (log_ratio * mask_f).sum(1) / mask_f.sum(1).clamp(min=1)
        seq_log_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        if cfg.algo == "gspo":
            ratio = torch.exp(seq_log_ratio).unsqueeze(1).expand_as(logp)
        else:
            token_log = logp - logp.detach() + seq_log_ratio.detach().unsqueeze(1)
            ratio = torch.exp(token_log.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    else:
        raise ValueError(f"unknown algo {cfg.algo!r}; use grpo, gspo or gspo_token")
    clipped = ratio.clamp(1 - low, 1 + high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl_value = 0.0
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        d = (ref_logp.float() - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = torch.exp(d) - d - 1
        per_token = per_token + cfg.beta * kl
        kl_value = float((kl.detach() * mask_f).sum() / mask_f.sum().clamp(min=1))
    loss = aggregate(per_token, mask, cfg.aggregation, cfg.dr_grpo_length, denominators)
    with torch.no_grad():
        was_clipped = ((ratio < 1 - low) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
        clip_fraction = float((was_clipped.float() * mask_f).sum() / mask_f.sum().clamp(min=1))
        ratio_mean = float((ratio * mask_f).sum() / mask_f.sum().clamp(min=1))
    return LossOutput(loss, clip_fraction, kl_value, ratio_mean)
