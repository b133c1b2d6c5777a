"""OmniVideo-R1's query-intent reward: are the grounded spans right, and enough?

For every <time>S-E</time><caption>C</caption> pair the span is cut out of the
video (picture and sound) and a judge scores whether C describes it (r_cons =
mean over pairs); all spans joined in temporal order are judged for whether
they hold what is needed to answer the question (r_comp). The reward is
(r_cons + r_comp) / 2, and 0 without pairs. With the QI weights,
R_QI = format + accuracy + query_intent.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from avcurate.core.answers import lettered
from avcurate.media.cut import cut
from avcurate.media.errors import MediaError
from avcurate.models.request import VideoPart
from avcurate.trainer.rewards import RewardSettings, register_factory
from avcurate.trainer.rewards.formats import time_caption_pairs

CONSISTENCY = ("Here is a short clip cut from a video. Someone described it as:\n\"{caption}\"\n"
               "Judge how faithfully that description matches what is seen and heard in the "
               'clip. Reply with JSON only: {{"score": a number from 0 (unrelated) to 1 '
               "(exact)}}")
COMPLETENESS = ("Here are the parts of a video someone picked as the evidence for answering a "
                "question, joined in time order.\nQuestion: {question}\nOptions:\n{options}\n"
                "Judge whether these parts alone contain what is needed to answer it, without "
                'padding. Reply with JSON only: {{"score": a number from 0 (useless) to 1 '
                "(complete and focused)}}")

class _Clips:
    """The cuts of one batch of completions, in a folder of their own that is removed once
    the judge has scored them. They were kept in one shared `/tmp/avcurate-qi` for good:
    it grew with every training, another user's folder there made every cut fail (a
    reward of 0, silently), and a video replaced at the same path met its old cuts."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.made: dict[tuple[str, tuple], str | None] = {}

    def get(self, video: str, spans: list[tuple[float, float]]) -> str | None:
        """The clip of `spans` of `video`, cut once per batch; None when there is nothing
        to judge (a span outside the clip, an unreadable file)."""
        key = (video, tuple(spans))
        if key not in self.made:
            out = self.folder / f"{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.mp4"
            try:
                self.made[key] = str(cut(video, spans, out))
            except (ValueError, OSError, MediaError):
                self.made[key] = None
        return self.made[key]


@dataclass
class QueryIntent:
    """(r_cons + r_comp) / 2 over the completion's grounded spans, judged by the settings' judge."""

    settings: RewardSettings
    needs_judge: ClassVar[bool] = True  # checked before training starts
    name: str = "query_intent"
    rollouts: tuple[str, ...] = ()

    def __call__(self, completions, rows) -> list[float]:
        return query_intent_scores(completions, rows, self.settings.judge().scores)


def query_intent_scores(completions, rows, judge) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="avcurate-qi-") as folder:
        clips = _Clips(folder)
        prompts, media, owners = [], [], []
        for i, (c, r) in enumerate(zip(completions, rows, strict=True)):
            pairs = time_caption_pairs(c)
            if not pairs or not r.get("video"):
                continue
            for s, e, caption in pairs:
                if clip := clips.get(r["video"], [(s, e)]):
                    prompts.append(CONSISTENCY.format(caption=caption))
                    media.append([VideoPart(clip)])
                    owners.append((i, "cons"))
            if joined := clips.get(r["video"], [(s, e) for s, e, _ in pairs]):
                prompts.append(COMPLETENESS.format(question=r["question"],
                                                   options=lettered(r.get("options"))))
                media.append([VideoPart(joined)])
                owners.append((i, "comp"))
        scores = judge(prompts, media) if prompts else []
    cons: dict[int, list[float]] = {}
    comp: dict[int, float] = {}
    for (i, kind), s in zip(owners, scores, strict=True):
        if kind == "cons":
            cons.setdefault(i, []).append(s)
        else:
            comp[i] = s
    out = []
    for i, c in enumerate(completions):
        n_pairs = len(time_caption_pairs(c))
        if not n_pairs:
            out.append(0.0)
            continue
        r_cons = sum(cons.get(i, [])) / n_pairs  # a span that could not be cut scores 0
        out.append(0.5 * (r_cons + comp.get(i, 0.0)))
    return out


register_factory("query_intent", QueryIntent)
