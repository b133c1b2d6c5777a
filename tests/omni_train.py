"""Train the tiny omni thinker from a script, so torchrun can start it on several ranks
(the stand-in processor is Python, not a folder `avcurate train` could load)."""

from __future__ import annotations

import sys

from omni_stub import StandInOmniProcessor
from transformers import AutoTokenizer

from avcurate.trainer.config import TrainConfig
from avcurate.trainer.loop import train

if __name__ == "__main__":
    folder, data, out = sys.argv[1:4]
    processor = StandInOmniProcessor(AutoTokenizer.from_pretrained(folder))
    cfg = TrainConfig(data=data, model=folder, out=out, policy="omni", frames=2,
                      audio_seconds=2.0, num_generations=4, prompts_per_step=2, steps=2,
                      lr=1e-2, max_new_tokens=3, max_prompt_tokens=4096, system_prompt="",
                      beta=0.03, rewards=["accuracy", "modality_attention"])
    train(cfg, policy_kwargs={"processor": processor}, progress=False)
