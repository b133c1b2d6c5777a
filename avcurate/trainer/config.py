"""Training configuration: one dataclass, loadable from TOML, overridable from the CLI."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    data: str = ""                      # an avcurate export folder, or Parquet file/folder
    model: str = ""                     # a local model folder
    policy: str = "text"                # text (causal LM) | omni (Qwen2.5-Omni-style thinker)
    frames: int = 8                     # omni: evenly spaced frames per video
    audio_seconds: float = 10.0         # omni: seconds of audio
    out: str = "train_out"
    algo: str = "gspo"                  # gspo | gspo_token | grpo
    rewards: list[str] = field(default_factory=lambda: ["format", "accuracy"])
    reward_weights: list[float] = field(default_factory=list)
    num_generations: int = 8            # G completions per prompt
    prompts_per_step: int = 4           # prompts per generation step, all ranks together
    steps: int = 100                    # generation steps
    steps_per_generation: int = 1       # optimizer steps (minibatches) per generation
    grad_accum: int = 1                 # micro-batches per optimizer step
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    beta: float = 0.0                   # KL weight (OmniVideo-R1: 0.03)
    eps_low: float | None = None
    eps_high: float | None = None
    aggregation: str = "seq_mean_token_mean"
    advantage: str = "group"            # group | batch | none
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    system_prompt: str = ("Think about the question first, inside <think></think>, then give only "
                          "the letter of your chosen option inside <answer></answer>.")
    attention_lambda: float = 0.3
    attention_strict: bool = False
    judge_backend: str = ""             # for soft_accuracy / query_intent
    judge_model: str = ""
    judge_base_url: str = ""
    save_every: int = 0                 # 0: only at the end
    stop_after: int = 0                 # stop (with a checkpoint) after this many steps this run
    seed: int = 0
    dtype: str = "float32"              # float32 | bfloat16
    log_every: int = 1

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text()) if path else {}
        data = data.get("train", data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        data |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**data)

    def check(self) -> None:
        if not self.data or not self.model:
            raise ValueError("--data and --model are required")
        if self.algo not in ("gspo", "gspo_token", "grpo"):
            raise ValueError("--algo must be gspo, gspo_token or grpo")
        if self.num_generations < 2:
            raise ValueError("--num-generations must be at least 2 (advantages are relative)")
        if self.num_generations % (self.steps_per_generation * self.grad_accum):
            raise ValueError(f"--num-generations {self.num_generations} must be divisible by "
                             f"steps-per-generation x grad-accum ({self.steps_per_generation} x "
                             f"{self.grad_accum}): each micro-batch takes the same share of "
                             "every group")
