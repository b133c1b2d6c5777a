"""OmniVideo-R1's modality-attention reward.

The reward declares that each prompt is also rolled out with the video removed
and with the audio removed (the trainer puts those completions in the row as
`video_only_completion` / `audio_only_completion`). An audio-visual completion
earns lambda (default 0.3) when its answer scores at least as well as both
single-modality answers. The published rule also pays when all three are
wrong; `strict` additionally requires the audio-visual answer to be right.
R_MA = format + accuracy + modality_attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from avcurate.core.answers import tagged_letter
from avcurate.trainer.rewards import RewardSettings, register_factory


def _score(text: str | None, row: dict) -> float:
    found = tagged_letter(text, row.get("options") or None) if text is not None else None
    return 1.0 if found is not None and found == row["answer"] else 0.0


@dataclass
class ModalityAttention:
    """λ for an audio-visual completion that scores at least as well as both single-modality
    rollouts (and, when strict, is right)."""

    lam: float = 0.3
    strict: bool = False
    name: str = "modality_attention"
    rollouts: tuple[str, ...] = ("video_only", "audio_only")

    @classmethod
    def from_settings(cls, s: RewardSettings) -> ModalityAttention:
        return cls(s.attention_lambda, s.attention_strict)

    def __call__(self, completions, rows) -> list[float]:
        out = []
        for c, r in zip(completions, rows, strict=True):
            if "video_only_completion" not in r or "audio_only_completion" not in r:
                raise ValueError("modality_attention needs the modality-removed rollouts "
                                 "(video_only_completion, audio_only_completion in each row)")
            av = _score(c, r)
            ok = av >= _score(r["video_only_completion"], r) and \
                av >= _score(r["audio_only_completion"], r)
            if self.strict:
                ok = ok and av == 1.0
            out.append(self.lam if ok else 0.0)
        return out


register_factory("modality_attention", ModalityAttention.from_settings)
