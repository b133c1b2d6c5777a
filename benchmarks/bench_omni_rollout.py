"""Omni rollouts: one generate call for prompts x G against one call per prompt.

A Qwen2.5-Omni thinker built from its config class (`--hidden` x `--layers` in each of
its text, vision and audio parts; random weights) and the tests' stand-in processor;
`--prompts` clips made with PyAV (different colours and tones, 4 s each, so every prompt
has its own frames and audio); G = `--group` completions per prompt, up to
`--max-new-tokens` each. Three ways of sampling the same completions (same seeds, so
the same tokens, which the benchmark checks):

- `per copy`: a generate call per prompt, every copy carrying its frames and audio
  (the vision and audio towers run G times per prompt; how rollouts began);
- `per prompt`: a generate call per prompt, its media encoded once (the shape before
  prompts were batched);
- `batched`: one call for all prompts x G, left-padded, each prompt's media encoded once
  (what the trainer does now).

Completion tokens per second of rollout time, best of `--rounds`, alternating in this
process. Record the figures with the hardware in benchmarks/README.md.

With `--gpu` the thinker runs on CUDA in float32. There the modes may sample a few
different tokens: batches of other shapes take other kernels, and logits that differ in
the last bits can change a sampled token; the benchmark then says how many completions
differ instead of stopping (on the CPU they must all agree).

    python benchmarks/bench_omni_rollout.py [--gpu] [--prompts 4] [--group 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # omni_stub

COLORS = ["red", "blue", "green", "yellow", "white", "black", "cyan", "magenta"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args: argparse.Namespace) -> None:
    from omni_stub import make_tiny_thinker

    from avcurate.media import synth
    from avcurate.trainer.policy import OmniPolicy
    from avcurate.trainer.rollout import row_seed, sample_batch

    folder, processor = make_tiny_thinker(tmp / "thinker", hidden=args.hidden,
                                          layers=args.layers)
    device = torch.device("cuda" if args.gpu else "cpu")
    policy = OmniPolicy(str(folder), processor=processor, frames=args.frames,
                        audio_seconds=4.0, device=device)
    model, tok, G = policy.model, policy.tokenizer, args.group
    rows = [{"question": "What color?", "options": ["red", "blue"], "answer": "A",
             "video": str(synth.write_clip(tmp / f"clip{k}.mp4", seconds=4,
                                           color=COLORS[k % len(COLORS)],
                                           freq=220.0 * (k + 1)))}
            for k in range(args.prompts)]
    inputs = [policy.inputs(row, "av", 8192) for row in rows]
    seeds = [[row_seed(7 + k, j) for j in range(G)] for k in range(len(rows))]
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
              suppress_tokens=policy.suppress_tokens)

    def per_copy():
        return [c for (ids, av), s in zip(inputs, seeds, strict=True)
                for c in sample_batch(model, tok, [ids] * G, s, **kw,
                                      extras={k: torch.cat([v] * G) for k, v in av.items()})]

    def per_prompt():
        out = []
        for (ids, av), s in zip(inputs, seeds, strict=True):
            with policy.rollout_media(model, [av], G) as extras:
                out += sample_batch(model, tok, [ids] * G, s, extras=extras, **kw)
        return out

    def batched():
        with policy.rollout_media(model, [av for _, av in inputs], G) as extras:
            return sample_batch(model, tok, [ids for ids, _ in inputs for _ in range(G)],
                                [x for group in seeds for x in group], extras=extras, **kw)

    modes = {"per copy": per_copy, "per prompt": per_prompt, "batched": batched}
    best = dict.fromkeys(modes, float("inf"))
    results = {}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            if args.gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = [c.tolist() for c in fn()]  # on the CPU: synced
            best[name] = min(best[name], time.perf_counter() - start)
    differ = {name: sum(a != b for a, b in zip(r, results["batched"], strict=True))
              for name, r in results.items()}
    same = not any(differ.values())
    tokens = sum(len(c) for c in results["batched"])
    where = torch.cuda.get_device_name() if args.gpu else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}; thinker {args.layers} x {args.hidden}, "
          f"{args.prompts} prompts x {G}, {args.frames} frames + 4 s audio each, "
          f"prompt {min(len(i) for i, _ in inputs)}-{max(len(i) for i, _ in inputs)} tokens, "
          f"{tokens} completion tokens; same completions in every mode: {same}"
          + ("" if same else f" (of {len(results['batched'])}, differing from batched: "
             + ", ".join(f"{k} {v}" for k, v in differ.items() if k != "batched") + ")"))
    for name in modes:
        print(f"  {name:>10}: {best[name]:6.2f} s  {tokens / best[name]:7.0f} tokens/s  "
              f"({best['per prompt'] / best[name]:.2f}x per prompt)")
    if not same and not args.gpu:
        sys.exit("the modes sampled different completions")


if __name__ == "__main__":
    main()
