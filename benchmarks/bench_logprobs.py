"""Peak memory of the trainer's log-probs for one long sequence: before and after chunking.

The policy's logits for a long rollout are [B, L, vocab]; the update needs only the
log-probability of each chosen token. Before: a float32 copy of all the logits and a float32
log-softmax of them (two full tensors, kept for backward). After (`chosen_logprobs`): a
float32 logsumexp chunk by chunk, recomputed in backward. Each variant runs forward and
backward in a fresh process; the figure is that process's peak RSS above the logits alone.

    python benchmarks/bench_logprobs.py [--length 8192] [--vocab 32768] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
from avcurate.trainer.rollout import chosen_logprobs
variant, batch, length, vocab = sys.argv[1], *map(int, sys.argv[2:5])
torch.manual_seed(0)
logits = torch.randn(batch, length, vocab, dtype=torch.bfloat16).requires_grad_(True)
target = torch.randint(0, vocab, (batch, length - 1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if variant == "full":
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target.unsqueeze(-1))[..., 0]
else:
    logp = chosen_logprobs(logits, target)
logp.sum().backward()
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (peak - base) / 1024, "seconds": seconds,
                  "logits_mib": logits.numel() * 2 / 2**20, "sum": float(logp.sum())}))
"""


def run(variant: str, args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, str(args.batch), str(args.length),
                          str(args.vocab)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    full, chunked = run("full", args), run("chunked", args)
    print(f"logits [{args.batch}, {args.length}, {args.vocab}] bf16 = "
          f"{full['logits_mib']:.0f} MiB; forward + backward of the chosen tokens' log-probs")
    for name, r in (("before (float32 log_softmax)", full), ("after (chunked logsumexp)", chunked)):
        print(f"  {name:<29} peak RSS above the logits {r['extra_mib']:7.0f} MiB, "
              f"{r['seconds']:.2f} s")
    print(f"  same values: {abs(full['sum'] - chunked['sum']) <= 1e-3 * abs(full['sum'])}; "
          f"memory ratio {chunked['extra_mib'] / full['extra_mib']:.2f}")


if __name__ == "__main__":
    main()
