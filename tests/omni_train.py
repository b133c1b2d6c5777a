"""Train the tiny omni thinker from a script, so torchrun can start it on several ranks
(the stand-in processor is Python, not a folder `avcurate train` could load)."""

from __future__ import annotations

import json
import sys

from omni_stub import StandInOmniProcessor
from transformers import AutoTokenizer

from avcurate.trainer.config import TrainConfig
from avcurate.trainer.loop import train


def count_weight_reads(out: str) -> None:
    """Record in OUT.reads-RANK (beside the training folder, which holds only the
    trainer's files) how many times this rank loaded weights from the folder (a sharded
    run loads them on rank 0 only; the others build the model on the meta device)."""
    import os
    from pathlib import Path

    from transformers import PreTrainedModel

    real = PreTrainedModel.from_pretrained.__func__
    reads = Path(f"{out}.reads-{os.environ.get('RANK', '0')}")
    reads.parent.mkdir(parents=True, exist_ok=True)
    reads.write_text("0")

    def counted(cls, *a, **kw):
        reads.write_text(str(int(reads.read_text()) + 1))
        return real(cls, *a, **kw)

    PreTrainedModel.from_pretrained = classmethod(counted)


if __name__ == "__main__":
    # FOLDER DATA OUT [option=JSON ...]: the options after the three paths override these
    folder, data, out = sys.argv[1:4]
    count_weight_reads(out)
    processor = StandInOmniProcessor(AutoTokenizer.from_pretrained(folder))
    options = {"frames": 2, "audio_seconds": 2.0, "num_generations": 4, "prompts_per_step": 2,
               "steps": 2, "lr": 1e-2, "max_new_tokens": 3, "max_prompt_tokens": 4096,
               "system_prompt": "", "beta": 0.03,
               "rewards": ["accuracy", "modality_attention"]}
    options |= {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
    cfg = TrainConfig(data=data, model=folder, out=out, policy="omni", **options)
    train(cfg, policy_kwargs={"processor": processor}, progress=False)
