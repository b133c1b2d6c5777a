"""Rollouts: G sampled completions per prompt, and per-token log-probs of completions.

Each prompt's group is sampled under its own seed (run seed, step, global
prompt index), so the same prompt gets the same completions whichever rank,
batch position or number of processes it lands on; that is what lets a
2-process run reproduce a 1-process run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.utils.checkpoint


@dataclass
class Rollout:
    input_ids: torch.Tensor        # [B, L] prompt + completion, right-padded
    attention_mask: torch.Tensor   # [B, L]
    completion_mask: torch.Tensor  # [B, L-1] 1 where position t predicts a completion token
    completions: list[str]
    completion_tokens: int
    extras: list[dict] = field(default_factory=list)  # per sequence: media inputs (omni)

    def select(self, index: list[int]) -> Rollout:
        idx = torch.tensor(index)
        return Rollout(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx],
                       [self.completions[i] for i in index], self.completion_tokens,
                       [self.extras[i] for i in index] if self.extras else [])


def prompt_seed(seed: int, step: int, prompt_index: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + prompt_index) % (2**31 - 1)


@torch.no_grad()
def sample_group(model, tokenizer, prompt_ids: torch.Tensor, group: int, *, seed: int,
                 temperature: float, top_p: float, max_new_tokens: int,
                 extras: dict | None = None, suppress_tokens: list[int] | None = None
                 ) -> list[torch.Tensor]:
    """G completions (token ids, up to and including EOS) for one prompt (and its media)."""
    synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    torch.manual_seed(seed)  # generate samples from the global generator
    ids = prompt_ids.unsqueeze(0).repeat(group, 1).to(model.device)
    media = {k: torch.cat([v] * group).to(model.device) for k, v in (extras or {}).items()}
    if suppress_tokens:
        media["suppress_tokens"] = suppress_tokens
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **media,
                         do_sample=True,
                         temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         synced_gpus=synced)
    completions = []
    for seq in out[:, ids.shape[1]:].cpu():
        eos = (seq == tokenizer.eos_token_id).nonzero()
        completions.append(seq[: int(eos[0]) + 1] if len(eos) else seq)
    return completions


def pack(prompts: list[torch.Tensor], completions: list[torch.Tensor], pad_id: int,
         tokenizer) -> Rollout:
    """Right-padded [prompt + completion] batch with a mask over completion positions."""
    seqs = [torch.cat([p, c]) for p, c in zip(prompts, completions, strict=True)]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    comp = torch.zeros((len(seqs), length - 1), dtype=torch.float32)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, : len(s)] = s
        attn[i, : len(s)] = 1
        comp[i, len(p) - 1: len(s) - 1] = 1.0  # logits at t predict token t+1
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return Rollout(ids, attn, comp, texts, int(sum(len(c) for c in completions)))


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   extras: dict | None = None) -> torch.Tensor:
    """log p(token_{t+1} | tokens_{<=t}) for every position, in float32: [B, L-1]."""
    media = {k: v.to(model.device) for k, v in (extras or {}).items()}
    logits = model(input_ids=input_ids.to(model.device),
                   attention_mask=attention_mask.to(model.device), **media).logits
    return chosen_logprobs(logits, input_ids[:, 1:].to(logits.device))


LOGPROB_CHUNK = 1024  # positions (per batch) whose float32 vocabulary rows exist at once


def chosen_logprobs(logits: torch.Tensor, target: torch.Tensor,
                    chunk: int = LOGPROB_CHUNK) -> torch.Tensor:
    """log-softmax of `logits[:, t]` at `target[:, t]` for t < L-1, in float32: [B, L-1].

    Chunk by chunk (logit of the chosen token minus a float32 logsumexp), so the float32
    copy and log-softmax of the whole [B, L, vocab] tensor never exist: for 8 sequences of
    10k tokens and a 150k vocabulary those are ~48 GB each. Under autograd each chunk is
    recomputed in backward (activation checkpointing) instead of kept.
    """
    grad = torch.is_grad_enabled() and logits.requires_grad
    # the last position predicts nothing; padding its target keeps the chunks plain splits
    # of `logits` (one gradient buffer in backward, not one full-size buffer per slice)
    padded = torch.nn.functional.pad(target, (0, 1))
    parts = []
    for piece, want in zip(logits.split(chunk, dim=1), padded.split(chunk, dim=1), strict=True):
        parts.append(torch.utils.checkpoint.checkpoint(_chosen, piece, want, use_reentrant=False)
                     if grad else _chosen(piece, want))
    return torch.cat(parts, dim=1)[:, :-1]


def _chosen(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    part = logits.float()
    return part.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(part, dim=-1)
