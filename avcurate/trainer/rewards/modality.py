"""OmniVideo-R1's modality-attention reward.

Each prompt is also rolled out with the video removed and with the audio
removed (the trainer puts those completions in the row as
`video_only_completion` / `audio_only_completion`). An audio-visual completion
earns lambda (default 0.3) when its answer scores at least as well as both
single-modality answers. The published rule also pays when all three are
wrong; `strict` additionally requires the audio-visual answer to be right.
R_MA = format + accuracy + modality_attention.
"""

from __future__ import annotations

from avcurate.trainer.rewards import reward
from avcurate.trainer.rewards.accuracy import answer_letter

SETTINGS = {"lam": 0.3, "strict": False}


def configure(lam: float = 0.3, strict: bool = False) -> None:
    SETTINGS.update(lam=lam, strict=strict)


def _score(text: str | None, truth: str) -> float:
    return 1.0 if text is not None and answer_letter(text) == truth else 0.0


@reward("modality_attention")
def modality_attention_reward(completions, rows) -> list[float]:
    out = []
    for c, r in zip(completions, rows, strict=True):
        if "video_only_completion" not in r or "audio_only_completion" not in r:
            raise ValueError("modality_attention needs the modality-removed rollouts: enable it "
                             "in the trainer (it generates them)")
        av = _score(c, r["answer"])
        ok = av >= _score(r["video_only_completion"], r["answer"]) and \
            av >= _score(r["audio_only_completion"], r["answer"])
        if SETTINGS["strict"]:
            ok = ok and av == 1.0
        out.append(SETTINGS["lam"] if ok else 0.0)
    return out
