"""Host memory of a sharded run's set-up: every rank reading the weights (before) against
rank 0 reading them and the other ranks receiving their shards (after).

A Llama of ~150M parameters (float32, ~600 MB) is built from a config with random weights;
`torchrun --nproc-per-node 2` (gloo, CPU) runs the trainer's set-up (policy, FSDP2
sharding, optimizer) and each rank prints its peak resident memory once the weights are in
place and at the end of the set-up. Before is the same code with the meta-device path
turned off. About 250 MiB of every rank is the imports (torch, transformers).

    python benchmarks/bench_load.py [--hidden 1024] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def child(folder: str, data: str, meta: str) -> None:
    """One rank: the trainer's set-up, then its peak RSS (JSON, next to the model): once the weights
    are in place (read, or received), and at the end of the set-up (after the first sharded
    forward and its all-gathers)."""
    from avcurate.trainer import loop
    from avcurate.trainer.config import TrainConfig

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    loaded = {}
    real = loop.load_from_rank0

    def load(*a):
        real(*a)
        loaded["mib"] = peak()

    loop.load_from_rank0 = load
    cfg = TrainConfig(data=data, model=folder, out=str(Path(folder).parent / "out"),
                      rewards=["format"], prompts_per_step=2, dtype="float32")
    state = loop.setup(cfg, {} if meta == "on" else {"meta": False})
    (Path(folder).parent / f"peaks-{meta}-{state.rank}.json").write_text(json.dumps(
        {"rank": state.rank, "loaded_mib": loaded["mib"], "setup_mib": peak()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from tiny_lm import make_tiny_lm, make_toy_data
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_lm(Path(tmp) / "lm")  # its tokenizer; the weights replaced below
        config = LlamaConfig.from_pretrained(folder)
        config.hidden_size, config.num_hidden_layers = args.hidden, args.layers
        config.intermediate_size, config.num_attention_heads = 4 * args.hidden, 16
        config.num_key_value_heads, config.head_dim = 16, args.hidden // 16
        model = LlamaForCausalLM(config)
        total = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        del model
        data = make_toy_data(Path(tmp) / "toy.parquet")
        # a fixed mmap threshold: glibc otherwise raises it as large blocks are freed and
        # keeps later ones, which moved the end-of-set-up peak by ~500 MiB from run to run
        env = os.environ | {"PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1",
                            "MALLOC_MMAP_THRESHOLD_": "1048576"}
        print(f"Llama {args.layers} x {args.hidden}: {total / 1e6:.0f}M parameters, "
              f"{total * 4 / 2**20:.0f} MiB in float32; torchrun, 2 ranks, gloo")
        for meta in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--standalone", __file__, "--child", str(folder), str(data), meta],
                capture_output=True, text=True, env=env, timeout=600)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            ranks = [json.loads((Path(tmp) / f"peaks-{meta}-{k}.json").read_text())
                     for k in range(2)]
            label = "every rank reads the weights" if meta == "off" else \
                "rank 0 reads, the others receive their shards"
            print(f"  {label}:\n    weights in place: " + ", ".join(
                f"rank {r['rank']} {r['loaded_mib']:.0f} MiB" for r in ranks)
                + f" (total {sum(r['loaded_mib'] for r in ranks):.0f} MiB)\n"
                + "    end of set-up:    " + ", ".join(
                f"rank {r['rank']} {r['setup_mib']:.0f} MiB" for r in ranks))

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
