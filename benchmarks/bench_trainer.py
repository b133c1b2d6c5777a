"""Trainer throughput: rollout tokens/s (generate) and update tokens/s (forward + backward),
and, when `trl` is installed, avcurate against TRL's GRPOTrainer side by side.

On CPU: a tiny Llama built from a config (4 layers x 256, the tests' character
vocabulary), float32. With a GPU, add `--gpu` for a 0.5B-class model built from a config
(Qwen2-0.5B's shape, random weights) in bf16 mixed precision (float32 weights, bfloat16
compute: avcurate's default on a GPU, and TRL's `bf16=True`). Record the figures with the
hardware in benchmarks/README.md.

The TRL comparison (`pip install trl`): the same model folder, the same prompts (the toy
task through the same chat template), 4 prompts x 8 completions per step, one optimizer
step per generation, GSPO's sequence-level ratio (`importance_sampling_level="sequence"`),
beta 0, the same precision; for each max completion length the two run alternately in this process
(`--rounds` times) and the figure is completion tokens per second of step time (model
loading excluded), the best round of each.

    python benchmarks/bench_trainer.py [--gpu] [--steps 5] [--lengths 32,128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_lm, toy reward

PROMPTS, G = 4, 8


def make_model(folder: Path, gpu: bool) -> Path:
    from tiny_lm import make_tiny_lm

    if not gpu:
        return make_tiny_lm(folder, layers=4, hidden=256)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    make_tiny_lm(folder)  # the tokenizer
    config = Qwen2Config(vocab_size=32, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=3, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def run_avcurate(model: Path, data: Path, out: Path, steps: int, length: int, gpu: bool
                 ) -> dict[str, float]:
    """avcurate's trainer: tokens/s over the steps, and the rollout / update split."""
    from avcurate.trainer import groups, loop
    from avcurate.trainer.config import TrainConfig

    cfg = TrainConfig(data=str(data), model=str(model), out=str(out),
                      rewards=["toy_rewards:starts_with_b"], num_generations=G,
                      prompts_per_step=PROMPTS, steps=steps, lr=1e-4, max_new_tokens=length,
                      system_prompt="", dtype="bf16-mixed" if gpu else "float32",
                      warmup_fraction=0.0)
    timings = {"rollout": 0.0, "update": 0.0}
    real_sample, real_updates = groups._sample, loop._updates

    def timed(name, fn):
        def wrapper(*a, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            result = fn(*a, **kw)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            timings[name] += time.perf_counter() - t
            return result
        return wrapper

    groups._sample, loop._updates = timed("rollout", real_sample), timed("update", real_updates)
    try:
        history = loop.train(cfg, progress=False)
    finally:
        groups._sample, loop._updates = real_sample, real_updates
    tokens = sum(h["completion_len"] * PROMPTS * G for h in history)
    seconds = sum(h["seconds"] for h in history)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "rollout_s": timings["rollout"], "update_s": timings["update"],
            "mean_len": tokens / (PROMPTS * G * len(history)), "step_s": seconds / len(history),
            "first_len": history[0]["completion_len"]}


def run_trl(model: Path, out: Path, steps: int, length: int, gpu: bool) -> dict[str, float]:
    """TRL's GRPOTrainer in the GSPO setting on the same model and prompts."""
    from datasets import Dataset
    from toy_rewards import starts_with_b
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from avcurate.trainer.policy import question_text

    row = {"question": "Pick B.", "options": ["A", "B", "C", "D"]}
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": question_text(row)}]}]
                             * (PROMPTS * steps))

    def reward(completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return starts_with_b(texts, [{}] * len(texts))

    step_times: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    tok = AutoTokenizer.from_pretrained(model)
    tok.pad_token = tok.pad_token or tok.eos_token
    config = GRPOConfig(output_dir=str(out), num_generations=G,
                        per_device_train_batch_size=PROMPTS * G, max_steps=steps,
                        max_completion_length=length, importance_sampling_level="sequence",
                        loss_type="grpo",  # per-sequence token means, as GSPO (and we) do
                        beta=0.0, learning_rate=1e-4, use_cpu=not torch.cuda.is_available(),
                        bf16=gpu, report_to="none", logging_steps=1, save_strategy="no",
                        temperature=1.0, top_p=1.0, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model),
                          reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()  # quietly: it prints every step's log dict
    tokens = sum(length_ * PROMPTS * G for length_ in lengths)
    seconds = sum(step_times)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "mean_len": tokens / (PROMPTS * G * len(lengths)), "step_s": seconds / len(step_times),
            "first_len": lengths[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="completion length of the avcurate-only run")
    parser.add_argument("--lengths", default="32,128",
                        help="max completion lengths of the TRL comparison")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from tiny_lm import make_toy_data

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "lm", args.gpu)
        data = make_toy_data(root / "toy.parquet")
        solo = run_avcurate(model, data, root / "solo", args.steps, args.max_new_tokens,
                            args.gpu)
        device = torch.cuda.get_device_name() if args.gpu and torch.cuda.is_available() else \
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        print(f"{'0.5B-class Qwen2 (random init, bf16-mixed)' if args.gpu else 'tiny Llama (4x256)'}"
              f" on {device}, torch {torch.__version__}")
        print(f"{args.steps} steps x {PROMPTS} prompts x {G} completions, up to "
              f"{args.max_new_tokens} new tokens")
        print(f"rollout: {solo['tokens'] / solo['rollout_s']:.0f} completion tokens/s "
              f"({solo['rollout_s']:.2f} s)")
        print(f"update:  {solo['tokens'] / solo['update_s']:.0f} completion tokens/s "
              f"({solo['update_s']:.2f} s, forward+backward+AdamW)")
        if importlib.util.find_spec("trl") is None:
            print("trl is not installed: no side-by-side run (pip install trl)")
            return
        import trl

        print(f"\nvs TRL {trl.__version__} GRPOTrainer (GSPO: sequence-level ratio), "
              f"{PROMPTS} prompts x {G}, {args.steps} steps, "
              f"{'bf16-mixed' if args.gpu else 'float32'}, best of {args.rounds}:")
        for length in (int(x) for x in args.lengths.split(",")):
            ours, theirs, shapes = [], [], []
            for k in range(args.rounds):
                a = run_avcurate(model, data, root / f"a{length}-{k}", args.steps, length,
                                 args.gpu)
                t = run_trl(model, root / f"t{length}-{k}", args.steps, length, args.gpu)
                ours.append(a["tokens_per_s"])
                theirs.append(t["tokens_per_s"])
                # tokens/s counts the tokens kept (to EOS); a step lasts until the batch's
                # longest completion ends, so the mean lengths and step times say the rest
                # (the first step's lengths: sampled from the same weights, before any update)
                shapes.append(f"mean length {a['mean_len']:.1f} vs {t['mean_len']:.1f} (first "
                              f"step {a['first_len']:.1f} vs {t['first_len']:.1f}), step "
                              f"{a['step_s']:.2f} s vs {t['step_s']:.2f} s")
            ratio = max(ours) / max(theirs)
            print(f"  max completion {length:>4}: avcurate {max(ours):7.0f} tokens/s, TRL "
                  f"{max(theirs):7.0f} tokens/s -> {ratio:.2f}x (target >= 1.0x: "
                  f"{'met' if ratio >= 1.0 else 'NOT met'}); rounds: avcurate "
                  f"{', '.join(f'{x:.0f}' for x in ours)}, TRL "
                  f"{', '.join(f'{x:.0f}' for x in theirs)}; " + "; ".join(shapes))


if __name__ == "__main__":
    main()
