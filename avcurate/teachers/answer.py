"""Robust extraction of the chosen option from a teacher's free-text answer.

Reasoning models end their answers in many ways: `Answer: (D) Action movie`,
`Answer: D`, `**D**`, a bare `D.` or just the text of one option. The parse
that was used is returned with the letter so it can be audited later. Text
that names two different options (`Answer: A or B`) is ambiguous: no letter.
"""

from __future__ import annotations

import re

from avcurate.pipeline.schema import LETTERS

ANSWER_AT = re.compile(r"\banswer\b\s*(?:is\s*)?[:：]?[ \t]*(.+?)[ \t]*$",
                       re.IGNORECASE | re.MULTILINE)
# a letter in parentheses may be lower case; a bare one must be upper case ("a dog" is no answer)
LEADING_LETTER = re.compile(r"^\**\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))[\s.:)*]*(.*)$")
ALTERNATIVE = re.compile(r"\b(?:or|and)\b\s*\(?[A-Z]\)?(?![A-Za-z])|^/\s*\(?[A-Z]\b")
BOLD = re.compile(r"\*\*\s*\(?([A-Z])\)?[.):]?\s*\*\*")
BARE = re.compile(r"^\s*\(?([A-Z])\)?\s*[.):]?\s*$")
SECTION = r"(?:^|\n)\s*\**{name}\**\s*[:：]\s*(.*?)(?=\n\s*\**(?:{stops})\**\s*[:：]|\Z)"


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip("*").rstrip(".").split())


def _valid(letter: str, n_options: int) -> bool:
    return letter in LETTERS and LETTERS.index(letter) < n_options


def extract_answer(text: str, options: list[str]) -> tuple[str | None, str]:
    """(letter or None, parse used): answer_line, bold, bare_letter, option_text, ambiguous, none."""
    n = len(options)
    answer_lines = list(ANSWER_AT.finditer(text))
    if answer_lines:
        rest = answer_lines[-1].group(1)
        m = LEADING_LETTER.match(rest)
        if m:
            letter = (m.group(1) or m.group(2)).upper()
            if ALTERNATIVE.search(m.group(3)):
                return None, "ambiguous"
            if _valid(letter, n):
                return letter, "answer_line"
    bold = {m.group(1) for m in BOLD.finditer(text)}
    if len(bold) > 1:
        return None, "ambiguous"
    if len(bold) == 1 and _valid(next(iter(bold)), n):
        return bold.pop(), "bold"
    if (m := BARE.match(text)) and _valid(m.group(1), n):
        return m.group(1), "bare_letter"
    candidates = [text] + [m.group(1) for m in answer_lines]
    for candidate in reversed(candidates):
        hits = [i for i, o in enumerate(options) if _norm(o) == _norm(candidate)]
        if len(hits) == 1:
            return LETTERS[hits[0]], "option_text"
    return None, "none"


def section(text: str, name: str, stops: tuple[str, ...]) -> str:
    """The text after `Name:` up to the next of `stops:` (e.g. Visual Description / Reasoning)."""
    pattern = SECTION.format(name=re.escape(name), stops="|".join(map(re.escape, stops)))
    m = re.search(pattern, text, re.IGNORECASE | re.DOTALL)
    return m.group(1).strip() if m else ""
