"""Training configuration: one dataclass whose fields declare type, default, range and help.

`avcurate train` generates its options from these fields (the same way stage commands
are generated), and a TOML config file (top-level keys or a `[train]` table) is checked
against them: an unknown key names the closest valid one, a bad value is one line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avcurate.core.options import OptionError, check_fields, check_keys, option
from avcurate.core.urls import url_refusal

ALGOS = ("gspo", "gspo_token", "grpo")
DEFAULT_SYSTEM_PROMPT = ("Think about the question first, inside <think></think>, then give only "
                         "the letter of your chosen option inside <answer></answer>.")


@dataclass
class TrainConfig:
    data: str = option("", help="An avcurate export folder (or Parquet with question/options/"
                       "answer).")
    model: str = option("", help="Local model folder (the policy).")
    policy: str = option("text", choices=("text", "omni"), help="text (causal LM) or omni "
                         "(Qwen2.5-Omni thinker: frames + audio).")
    frames: int = option(8, min=1, help="Omni: evenly spaced frames per video, over the same "
                         "window as the audio.")
    audio_seconds: float = option(10.0, gt=0, help="Omni: the window the model sees and hears: "
                                  "the first N seconds of each clip (frames and audio).")
    max_pixels: int = option(200_704, min=784, help="Omni: pixels per frame at most (frames "
                             "are scaled down, aspect kept; 200,704 = 256 patches of 28x28).")
    media_timeout: float = option(60.0, gt=0, max=86_400, help="Omni: seconds one clip's "
                                  "frames and audio may take to decode, in a worker process, "
                                  "before its row is skipped as media_timeout (a file that "
                                  "hangs the decoder costs its row, not the run).")
    out: str = option("train_out", help="Checkpoints, metrics.jsonl and the final model.")
    algo: str = option("gspo", choices=ALGOS, help="gspo, gspo_token or grpo.")
    rewards: list[str] = option(default_factory=lambda: ["format", "accuracy"], comma=True,
                                help="Comma-separated reward names, e.g. format,accuracy (or "
                                     "module:function).")
    reward_weights: list[float] = option(default_factory=list, help="Comma-separated weights, "
                                         "one per reward (default: all 1).")
    num_generations: int = option(8, min=2, help="Completions per prompt (G).")
    prompts_per_step: int = option(4, min=1, help="Prompts per generation step, all ranks "
                                   "together.")
    steps: int = option(100, min=1, help="Generation steps.")
    steps_per_generation: int = option(1, min=1, help="Optimizer steps (minibatches) per "
                                       "generation; GSPO's clipping only acts when > 1.")
    grad_accum: int = option(1, min=1, help="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = option(False, help="Recompute each block's activations in "
                                          "backward instead of keeping them (less memory for "
                                          "long sequences, about a third more compute).")
    lr: float = option(1e-6, gt=0, help="AdamW learning rate (warmup, then cosine).")
    weight_decay: float = option(0.0, min=0, help="AdamW weight decay.")
    warmup_fraction: float = option(0.05, min=0, max=1, help="Share of updates spent warming "
                                    "up the learning rate.")
    max_grad_norm: float = option(1.0, min=0, help="Gradient clipping norm (0 = off).")
    beta: float = option(0.0, min=0, help="KL weight to the reference model (OmniVideo-R1: "
                         "0.03).")
    eps_low: float | None = option(None, gt=0, help="Lower clip range (default: the "
                                   "algorithm's: GRPO 0.2, GSPO 3e-4).")
    eps_high: float | None = option(None, gt=0, help="Upper clip range (default: the "
                                    "algorithm's: GRPO 0.2, GSPO 4e-4).")
    aggregation: str = option("seq_mean_token_mean", choices=(
        "seq_mean_token_mean", "token_mean", "dr_grpo"), help="How token losses are averaged.")
    advantage: str = option("group", choices=("group", "batch", "none"),
                            help="Reward normalisation for advantages.")
    dynamic_sampling: bool = option(False, help="DAPO dynamic sampling: a prompt whose "
                                    "completions all get the same reward (no learning signal) "
                                    "is replaced by another prompt, up to "
                                    "--max-resample-rounds times; the replaced share is logged "
                                    "as dropped_groups.")
    max_resample_rounds: int = option(3, min=1, help="Dynamic sampling: rounds of replacing "
                                      "flat groups per step (each round samples one group per "
                                      "flat one; what is still flat after the last is kept).")
    temperature: float = option(1.0, gt=0, max=5, help="Sampling temperature.")
    top_p: float = option(1.0, gt=0, max=1, help="Nucleus sampling.")
    max_new_tokens: int = option(256, min=1, help="Longest completion; a row whose prompt "
                                 "and this together pass the model's context is skipped "
                                 "(context_length).")
    max_prompt_tokens: int = option(1024, min=1, help="Longest prompt (media tokens included); "
                                    "a row over it is skipped, like a row whose media cannot "
                                    "be read: another row takes its place and it is listed "
                                    "in OUT/skipped_rows.jsonl.")
    system_prompt: str = option(DEFAULT_SYSTEM_PROMPT, help="System prompt of every rollout.")
    attention_lambda: float = option(0.3, min=0, help="modality_attention: the bonus λ.")
    attention_strict: bool = option(False, help="modality_attention: also require the "
                                    "audio-visual answer to be right.")
    judge_backend: str = option("", help="Judge backend for soft_accuracy / query_intent.")
    judge_model: str = option("", help="Judge model for soft_accuracy / query_intent.")
    judge_base_url: str = option("", help="Judge server URL.")
    save_every: int = option(0, min=0, help="Checkpoint every N steps (0: only at the end and, "
                             "in one process, where Ctrl-C or SIGTERM stops the run).")
    stop_after: int = option(0, min=0, help="Stop (with a checkpoint) after this many steps in "
                             "this run, for time-limited jobs.")
    seed: int = option(0, help="Run seed.")
    dtype: str = option("auto", choices=("auto", "float32", "bf16-mixed", "bfloat16"),
                        help="Precision. bf16-mixed: float32 weights and optimizer state, "
                             "bfloat16 compute (FSDP2 MixedPrecisionPolicy with float32 "
                             "gradient reduction; autocast on one rank); bfloat16: weights and "
                             "optimizer in bfloat16 (small updates are lost: at lr 1e-6 most "
                             "weights never change); auto: bf16-mixed on a GPU with native bfloat16 "
                             "(Ampere or later), else float32.")
    log_every: int = option(1, min=1, help="Write metrics every N steps.")
    eval_every: int = option(0, min=0, help="Evaluate on the export's validation split "
                             "before training, every N steps and after the last (0: never): "
                             "one greedy completion for each of the first --eval-rows rows, "
                             "scored by the training rewards, a line each in OUT/eval.jsonl.")
    eval_rows: int = option(256, min=1, help="Validation rows each evaluation answers (the "
                                             "first N, the same each time).")

    def __post_init__(self) -> None:
        check_fields(self, "train")

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A config from a TOML file (top-level keys or a [train] table), then `overrides`."""
        try:
            data = tomllib.loads(Path(path).read_text()) if path else {}
        except FileNotFoundError:
            raise OptionError(f"no training config at {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise OptionError(f"{path} is not valid TOML: {exc}") from None
        data = data.get("train", data)
        check_keys(cls, data, f"train config {path}")
        data |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**data)

    def check(self) -> None:
        """Rules between options, checked before any model is loaded."""
        if not self.data or not self.model:
            raise OptionError("--data and --model are required")
        if self.num_generations % (self.steps_per_generation * self.grad_accum):
            raise OptionError(f"--num-generations {self.num_generations} must be divisible by "
                              f"steps-per-generation x grad-accum ({self.steps_per_generation} x "
                              f"{self.grad_accum}): each micro-batch takes the same share of "
                              "every group")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise OptionError(f"{len(self.rewards)} rewards but {len(self.reward_weights)} "
                              "weights")

    def check_paths(self) -> None:
        """The data and the model folder are there, checked before anything is loaded
        (transformers' own errors name no folder, and a path that is not there reads
        to it as a malformed Hub id)."""
        for flag, value in (("--data", self.data), ("--model", self.model)):
            if why := url_refusal(flag, value, "download it (`hf download`, `aws s3 sync`) "
                                  "and give the local folder"):
                raise OptionError(why)
        if not Path(self.data).exists():
            hint = ""
            if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", self.data):  # reads as a Hub id
                hint = (f"; a dataset on the Hugging Face Hub is read from a local copy: "
                        f"`hf download {self.data} --repo-type dataset --local-dir DIR`, "
                        "then --data DIR")
            raise OptionError(f"--data {self.data}: no such file or folder (an avcurate "
                              f"export folder, or Parquet with question/options/answer){hint}")
        if (Path(self.data) / "manifest.json").is_file():  # a run: its rows are in stages
            raise OptionError(f"--data {self.data} is a run folder; train on its export "
                              f"(`avcurate export {self.data} --out DIR`, then --data DIR)")
        from avcurate.trainer.data import split_files  # pyarrow: not for `--help`

        if self.eval_every and not split_files(self.data, "validation"):
            raise OptionError(f"--eval-every needs a validation split, and --data {self.data} "
                              "has none (an avcurate export holds data/validation-*.parquet "
                              "when made with --val-fraction above 0)")
        local = Path(self.model).expanduser()
        if (local.is_absolute() or self.model.startswith(".")) and not local.is_dir():
            raise OptionError(f"--model {self.model}: no such folder (the policy's local "
                              "model folder; an org/name Hub id is fetched by transformers)")
        if local.is_dir() and not (local / "config.json").is_file():
            raise OptionError(f"--model {self.model}: not a model folder (no config.json)")
