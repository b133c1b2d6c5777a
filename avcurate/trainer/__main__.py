"""`python -m avcurate.trainer --config train.toml [--key value ...]`, the torchrun entry point:

    torchrun --nproc-per-node 8 -m avcurate.trainer --config train.toml
"""

from __future__ import annotations

import argparse
import dataclasses

from avcurate.trainer.config import TrainConfig
from avcurate.trainer.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m avcurate.trainer", description=__doc__)
    parser.add_argument("--config", default="")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("rewards", "reward_weights"):
            parser.add_argument(flag, default=None)
        elif f.type in ("bool",):
            parser.add_argument(flag, default=None, action="store_true")
        else:
            parser.add_argument(flag, default=None)
    args = vars(parser.parse_args())
    path = args.pop("config")
    overrides = {}
    defaults = TrainConfig()
    for k, v in args.items():
        if v is None:
            continue
        if k == "rewards":
            v = [x.strip() for x in v.split(",") if x.strip()]
        elif k == "reward_weights":
            v = [float(x) for x in v.split(",") if x.strip()]
        elif isinstance(getattr(defaults, k), bool):
            v = bool(v)
        elif isinstance(getattr(defaults, k), int):
            v = int(v)
        elif isinstance(getattr(defaults, k), float) or k in ("eps_low", "eps_high"):
            v = float(v)
        overrides[k] = v
    cfg = TrainConfig.load(path, **overrides) if path else TrainConfig(**overrides)
    history = train(cfg)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if history:
        print(f"trained {len(history)} steps; last reward mean {history[-1]['reward_mean']:.3f}")


if __name__ == "__main__":
    main()
