"""Rollouts: G sampled completions per prompt, and per-token log-probs of completions.

Each completion is sampled from its own seed (run seed, step, global prompt index,
position in the group) by `SeededSampler`, so the same prompt gets the same completions
whichever rank, batch or batch position it lands on; that is what lets a 2-process run
reproduce a 1-process run, and lets a step's prompts share one generate call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
        idx = torch.tensor(index, device=self.input_ids.device)
        return Rollout(self.input_ids[idx], self.attention_mask[idx], self.completion_mask[idx],
                       [self.completions[i] for i in index], self.completion_tokens,
                       [self.extras[i] for i in index] if self.extras else [])

    def to(self, device: torch.device) -> Rollout:
        """The token tensors on the model's device (packed on the CPU): the masks meet the
        log-probs there, in the loss."""
        return replace(self, input_ids=self.input_ids.to(device),
                       attention_mask=self.attention_mask.to(device),
                       completion_mask=self.completion_mask.to(device))


def prompt_seed(seed: int, step: int, prompt_index: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + prompt_index) % (2**31 - 1)


def on_device(extras: dict | None, device: torch.device) -> dict:
    """Model inputs moved to `device`; non-tensors (precomputed encoder outputs) as they are."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in (extras or {}).items()}


def row_seed(seed: int, j: int) -> int:
    """The seed of the j-th completion of a prompt whose group seed is `seed`."""
    return (seed * 1_000_033 + j) % (2**63 - 1)


class SeededSampler:
    """Samples each row of a batch from its own generator (the Gumbel-max trick: the
    argmax of temperature-scaled, top-p-masked logits plus Gumbel noise is a sample of
    that distribution). Passed to a greedy `generate`, it makes a row's completion depend
    on its prompt and seed only, not on which other prompts share the batch: one batched
    generate call per step, and still the same rollouts whichever rank a prompt lands on.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float,
                 device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:  # as transformers' TopPLogitsWarper: keep the smallest set
            ordered, index = torch.sort(scores, descending=False)  # whose mass >= top_p
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[..., -1:] = False
            scores = scores.masked_fill(drop.scatter(1, index, drop), float("-inf"))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        return scores - torch.log(-torch.log(uniform))  # + Gumbel(0, 1) noise


@torch.no_grad()
def sample_batch(model, tokenizer, prompts: list[torch.Tensor], seeds: list[int], *,
                 temperature: float, top_p: float, max_new_tokens: int,
                 extras: dict | None = None, suppress_tokens: list[int] | None = None,
                 greedy: bool = False) -> list[torch.Tensor]:
    """One completion (token ids, up to and including EOS) per (prompt, seed), in one
    generate call: prompts left-padded, each row sampled from its own seed (`greedy`: the
    most likely token at each position instead, for evaluation)."""
    from transformers import LogitsProcessorList

    synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    media = on_device(extras, model.device)
    if suppress_tokens:
        media["suppress_tokens"] = suppress_tokens
    processors = [] if greedy else [SeededSampler(seeds, temperature, top_p, model.device)]
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                         **media, do_sample=False, temperature=None, top_p=None, top_k=None,
                         logits_processor=LogitsProcessorList(processors),
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, synced_gpus=synced)
    completions = []
    for seq in out[:, length:].cpu():
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
    media = on_device(extras, model.device)
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
