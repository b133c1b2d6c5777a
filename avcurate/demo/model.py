"""The demo model: answers avcurate's own prompts from what it perceives in the media.

It is not a language model. It recognises which of avcurate's prompts it was sent (the
judge's rubric, the taxonomy, a teacher, the merger, the probe), reads the question and
options out of it, looks at the frames and listens to the audio (`perception`), and
answers in the shape that prompt asks for. So its scores and answers are *computed*
(an answer key that names the wrong colour gets a low accuracy; a question whose options
differ by pitch needs the audio), which makes the demo's funnel real, but it knows
nothing beyond coloured squares and tones. Everything it writes names it as the demo
model, so its labels are never mistaken for a real judge's.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from avcurate.demo.perception import PITCH_WORDS, Percept, perceive
from avcurate.media.synth import COLORS

MODEL_NAME = "avcurate-demo-model"
SIGNATURE = "(avcurate demo model: looks at colours, listens to pitch; not a real judge)"
# Cues that tell avcurate's packaged prompts apart; a custom prompt gets a plain reply.
PROBE_CUE = "Reply with just the letter of your choice."
VISUAL_WORDS = {"colour", "color", "square", "moves", "moving", "slides", "left", "right"}
AUDIO_WORDS = {"tone", "pitch", "sound", "hear", "heard", "plays", "audio"}
# classify: the first rule that holds for the question's words picks the first category
# of the prompt's taxonomy whose name contains the rule's words.
CATEGORY_RULES = [
    (lambda q: {"how", "many"} <= q, "counting"),
    (lambda q: {"which", "square"} <= q and bool(q & {"sound", "tone"}) and "color" not in q
     and "colour" not in q, "synchronization"),
    (lambda q: bool(q & {"colour", "color"}), "attributes"),
    (lambda q: bool(q & {"pitch", "tone", "sound"}), "sound event"),
]


def options_in(prompt: str) -> list[tuple[str, str]]:
    return re.findall(r"^([A-Z])\. (.+)$", prompt, re.MULTILINE)


def question_in(prompt: str) -> str:
    m = re.search(r"Question:\s*(.*?)\n+\s*Options:", prompt, re.DOTALL)
    return m.group(1).strip() if m else prompt


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def fits(text: str, p: Percept) -> bool:
    """Whether an option (or an open answer) agrees with what was seen and heard."""
    words = _words(text)
    colours, pitches = words & set(COLORS), words & set(PITCH_WORDS)
    return not ((p.colour and colours and p.colour not in colours)
                or (p.pitch and pitches and p.pitch not in pitches))


def named_in_question(question: str, options: list[tuple[str, str]]) -> list[str]:
    """Options whose words the question itself gives away (answerable without media)."""
    q = _words(question)
    return [x for x, text in options if _words(text) & set(COLORS) and _words(text) <= q]


def known(question: str, options: list[tuple[str, str]]) -> list[str]:
    """What the model knows without any media: a square has four sides."""
    if "sides" in question.lower():
        return [x for x, text in options if "four" in _words(text)]
    return named_in_question(question, options)


@dataclass
class Scores:
    video: int
    audio: int
    logic: int
    accuracy: int
    why: dict[str, str]

    def json(self) -> str:
        dims = {"video_dependency": self.video, "audio_dependency": self.audio,
                "question_logic": self.logic, "answer_accuracy": self.accuracy}
        rationale = {f"{d}_rationale": self.why[d] + " " + SIGNATURE for d in dims}
        return json.dumps(dims | rationale)


def score(prompt: str, p: Percept) -> Scores:
    """The judge: dependencies from what tells the options apart, accuracy and logic from
    whether the answer key (and only it) agrees with the media."""
    question, options = question_in(prompt), options_in(prompt)
    key = (re.search(r"Answer key:\s*(.+)", prompt) or [None, ""])[1].strip()
    texts = " ".join(t for _, t in options) if options else key
    q = _words(question)
    by_colour, by_pitch = bool(_words(texts) & set(COLORS)), bool(_words(texts) & set(PITCH_WORDS))
    video = 9 if by_colour else 4 if q & VISUAL_WORDS else 1
    audio = 9 if by_pitch else 3 if q & AUDIO_WORDS else 1
    if options:
        agree = [x for x, t in options if fits(t, p)] if (by_colour or by_pitch) \
            else known(question, options) or [x for x, _ in options]
        logic = 9 if len(agree) == 1 else 5
        right = key[:1] in agree
        accuracy = (10 if len(agree) == 1 else 6) if right else 1
    else:
        logic, right = 8, fits(key, p)
        accuracy = 10 if right else 1
    saw = p.describe()
    why = {"video_dependency": "The options differ by colour." if by_colour
           else "The options do not depend on the picture.",
           "audio_dependency": "The options differ by pitch." if by_pitch
           else "The options do not depend on the sound.",
           "question_logic": "One option fits the clip." if logic >= 8 else
           "More than one option fits the clip.",
           "answer_accuracy": f"The clip shows {saw}; the key "
           + ("agrees." if right else "does not agree.")}
    return Scores(video, audio, logic, accuracy, why)


def classify(prompt: str) -> str:
    categories = re.findall(r"^- (.+?):", prompt, re.MULTILINE)
    q = _words(question_in(prompt))
    for holds, part in CATEGORY_RULES:
        if holds(q):
            match = [c for c in categories if part in c.lower()]
            if match:
                return json.dumps({"category": match[0]})
    return json.dumps({"category": categories[0] if categories else "none"})


def teacher_pick(kind: str, options: list[tuple[str, str]], p: Percept) -> tuple[str, str | None]:
    """(what the teacher perceived, the option it picks or None when its sense cannot tell)."""
    seen = (p.colour if kind == "visual" else p.pitch) or "nothing"
    matching = [x for x, text in options if seen in _words(text)]
    return seen, matching[0] if len(matching) == 1 else None


def teacher_reply(kind: str, seen: str, pick: str | None, options: list[tuple[str, str]],
                  p: Percept, final: str | None = None) -> str:
    """A teacher's three labelled parts; an undecided teacher guesses the first option."""
    if not options:
        return f"{final or 'Answer: none'} (no options to choose from) {SIGNATURE}"
    choice = pick or options[0][0]
    text = dict(options).get(choice, "")
    if kind == "visual":
        label = "Visual Description"
        what = f"The frames show a {seen} square sliding {p.motion or ''} across a grey gradient."
    else:
        label = "Audio Description"
        what = f"I hear a steady {seen}-pitched tone for the whole clip."
    reason = (f"Only option {choice} fits what is {'seen' if kind == 'visual' else 'heard'}; "
              "the others do not." if pick else
              f"What I {'see' if kind == 'visual' else 'hear'} does not decide between the "
              f"options, so I guess {choice}.")
    return (f"{label}: {what} {SIGNATURE}\nReasoning: {reason}\n"
            f"{final or f'Answer: ({choice}) {text}'}")


def merge_trace(prompt: str) -> tuple[str, str]:
    """(reasoning, answer letter) written from the correct option the merger is given."""
    truth = re.search(r"Correct option: ([A-Z])", prompt).group(1)
    think = ("Looking at the clip, I see a coloured square moving across the frames, and at the "
             "same time I hear a steady tone. The visual cue and the sound point the same way: "
             f"together they rule out the other options, so option {truth} is the one that fits.")
    return think, truth


def probe(prompt: str, p: Percept, sample: int) -> str:
    """The policy under probe: it rules out options that contradict what it sees and hears,
    takes an option the question gives away, and guesses among the rest."""
    question, options = question_in(prompt), options_in(prompt)
    candidates = known(question, options) or [x for x, t in options if fits(t, p)] \
        or [x for x, _ in options]
    rng = random.Random(f"{question}|{p.colour}|{p.pitch}|{sample}")
    return f"Answer: {rng.choice(candidates)}"


class DemoModel:
    """Dispatches a request to the answer for the prompt it recognises."""

    name = MODEL_NAME

    def answer(self, prompt: str, images: list[bytes], audios: list[bytes],
               videos: list[bytes] = (), sample: int = 0) -> str:
        p = perceive(images, audios)
        if PROBE_CUE in prompt:
            return probe(prompt, p, sample)
        if "Correct option:" in prompt:
            think, answer = merge_trace(prompt)
            return f"<think>{think}</think><answer>{answer}</answer>"
        for kind in ("visual", "audio"):
            if f"{kind.title()} Description:" in prompt:
                options = options_in(prompt)
                seen, pick = teacher_pick(kind, options, p)
                return teacher_reply(kind, seen, pick, options, p)
        if "Taxonomy:" in prompt:
            return classify(prompt)
        if "four scales" in prompt:
            return score(prompt, p).json()
        return f"I only answer avcurate's own prompts. {SIGNATURE}"
