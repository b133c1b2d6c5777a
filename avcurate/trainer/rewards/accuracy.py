"""Outcome rewards: the option letter in <answer>, and a judge's soft 0-1 score.

The letter is read by `core.answers.tagged_letter`, the parser every stage uses: a
hedge (`B or C`, `B C D`) or two `<answer>` blocks is no answer and earns 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from avcurate.core.answers import lettered, tagged_letter
from avcurate.trainer.rewards import RewardSettings, register_factory, reward

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


@reward("accuracy")
def accuracy_reward(completions, rows) -> list[float]:
    out = []
    for c, r in zip(completions, rows, strict=True):
        found = tagged_letter(c, r.get("options") or None)
        out.append(1.0 if found is not None and found == r["answer"] else 0.0)
    return out


SOFT_PROMPT = (
    "Grade a student's answer to a question about a video. Question:\n{question}\nOptions:\n"
    "{options}\nReference answer: {reference}\nStudent's answer: {answer}\n"
    'Reply with JSON only: {{"score": a number from 0 (wrong) to 1 (fully right)}}'
)


@dataclass
class SoftAccuracy:
    """A judge grades the answer block against the reference (for open-ended answers)."""

    settings: RewardSettings
    needs_judge: ClassVar[bool] = True  # checked before training starts
    name: str = "soft_accuracy"
    rollouts: tuple[str, ...] = ()

    def __call__(self, completions, rows) -> list[float]:
        prompts = []
        for c, r in zip(completions, rows, strict=True):
            found = ANSWER.findall(c)
            prompts.append(SOFT_PROMPT.format(question=r["question"],
                                              options=lettered(r.get("options")),
                                              reference=r["answer"],
                                              answer=found[-1] if found else c))
        return self.settings.judge().scores(prompts)


register_factory("soft_accuracy", SoftAccuracy)
