"""Trainer throughput: rollout tokens/s (generate) and update tokens/s (forward + backward).

On CPU: a tiny Llama built from a config (the one the tests use). With a GPU, add
`--gpu` for a 0.5B-class model built from a config (Qwen2-0.5B's shape, random weights)
in bfloat16. Record the figures with the hardware in benchmarks/README.md.

    python benchmarks/bench_trainer.py [--gpu] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_lm, toy reward


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from tiny_lm import make_toy_data

    from avcurate.trainer import loop
    from avcurate.trainer.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model(root / "lm", args.gpu)
        data = make_toy_data(root / "toy.parquet")
        cfg = TrainConfig(data=str(data), model=str(model), out=str(root / "out"),
                          rewards=["toy_rewards:starts_with_b"], num_generations=8,
                          prompts_per_step=4, steps=args.steps, lr=1e-4,
                          max_new_tokens=args.max_new_tokens, system_prompt="",
                          dtype="bfloat16" if args.gpu else "float32", warmup_fraction=0.0)
        timings = {"rollout": 0.0, "update": 0.0}
        real_sample, real_updates = loop.sample_group, loop._updates

        def timed(name, fn):
            def wrapper(*a, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = fn(*a, **kw)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timings[name] += time.perf_counter() - t
                return out
            return wrapper

        loop.sample_group = timed("rollout", real_sample)
        loop._updates = timed("update", real_updates)
        history = loop.train(cfg, progress=False)
    tokens = sum(h["completion_len"] * cfg.prompts_per_step * cfg.num_generations
                 for h in history)
    seq_tokens = tokens  # completion tokens trained on (prompt tokens ride along)
    device = torch.cuda.get_device_name() if args.gpu and torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"{'0.5B-class Qwen2 (random init, bf16)' if args.gpu else 'tiny Llama (4x256)'} on "
          f"{device}, torch {torch.__version__}")
    print(f"{len(history)} steps x {cfg.prompts_per_step} prompts x {cfg.num_generations} "
          f"completions, up to {cfg.max_new_tokens} new tokens")
    print(f"rollout: {tokens / timings['rollout']:.0f} completion tokens/s "
          f"({timings['rollout']:.2f} s)")
    print(f"update:  {seq_tokens / timings['update']:.0f} completion tokens/s "
          f"({timings['update']:.2f} s, forward+backward+AdamW)")


if __name__ == "__main__":
    main()
