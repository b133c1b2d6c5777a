"""The one place that reads an option letter out of text.

Every consumer uses it: catalogs (an annotation's answer), teachers (a free-text
reply), the merger's trace checks and the trainer's rewards (the `<answer>` block).
So they agree on every spelling:

- accepted: `B`, `(B)`, `(b)`, `B.`, `B)`, `B: text`, `B. text`, `**B**`, `Answer: B`,
  `Option B`, or the exact text of one option;
- in a free-text reply (teachers, the probe: `extract_letter`) also one `<answer>` block,
  `the correct option is B`, `答案：B`, `\\boxed{B}`, `**B. text**`, a line that is only
  a letter above or below an explanation, a first line that is `B)` and its option's
  text, and a reply that is one JSON object (`{"answer": "B"}`);
- a hedge is no answer: `B or C`, `B and C`, `B, C`, `B/C`, `B C D`, two `<answer>`
  blocks, two different bold or boxed letters or letter lines, an answer line naming two
  letters.

A bare lower-case letter is not an answer ("a dog" is not option A); in parentheses, or
alone after an answer line's `Answer:`, it is.
"""

from __future__ import annotations

import functools
import json
import re
import string
from dataclasses import dataclass
from typing import Any

LETTERS = string.ascii_uppercase

# letter forms at the start of a short answer; group 1: "(x)" any case, group 2: bare upper case
_LEAD = re.compile(r"^\(([A-Za-z])\)|^([A-Z])(?![A-Za-z0-9'])")
_PREFIX = re.compile(r"^(?:(?:the\s+)?(?:final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*)+",
                     re.IGNORECASE)
# after the leading letter: another standalone letter (a hedge) unless option text follows
_HEDGE = re.compile(r"^\s*(?:(?:,|/|&|\bor\b|\band\b)\s*)?\(?[A-Z]\)?(?![A-Za-z0-9'])")
_JOINED = re.compile(r"^\s*(?:(?:,|/|&|\bor\b|\band\b)\s*\(?[A-Z]\)?(?![A-Za-z0-9'])|\([A-Z]\))")
_TEXT_MARK = re.compile(r"^\s*[.):：]")
_WORD_AFTER = re.compile(r"^\s+[a-z]")
_BARE = re.compile(r"^\s*\**\s*(?:\(([A-Za-z])\)|\(?([A-Z])\)?)\s*[.):]?\s*\**\s*$")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(r"(?:\banswer\b|\b(?:correct|right|best)\s+(?:option|choice)\b|答案)"
                          r"\s*(?:is\s*)?\**[:：]?\**\s*(.+?)[ \t]*$",  # the answer may be
                          re.IGNORECASE | re.MULTILINE)  # bold, or below a heading "### Answer"
_LOWER = re.compile(r"\s*\**\s*([a-z])\s*[.)]?\s*\**\s*")  # "answer: b", the whole line
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")  # one level of {} inside: \text{B}
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}")
# a letter and then its option's text, nothing else: "C) green", "**C. green**"
_ECHO = re.compile(r"\s*\**\s*\(?([A-Z])\)?\s*[.):：-]?\s*(.*?)\s*\**\s*")
THINK_END = re.compile(r"</think>|◁/think▷")  # Qwen3 and DeepSeek-R1; Kimi-VL-Thinking
_THINK_START = re.compile(r"\s*(?:<think>|◁think▷)")


def after_thinking(text: str) -> str:
    """The reply a thinking model gave after its thinking: the text after its last closing
    think tag; nothing when the thinking never closed (cut at max_tokens); all of it when
    there is no thinking. A letter or a JSON object the model tried while it thought is
    not its answer (vLLM without a reasoning parser returns the thinking in the reply; a
    template that opens the block leaves only the closing tag)."""
    parts = THINK_END.split(text)
    if len(parts) > 1:
        return parts[-1]
    return "" if _THINK_START.match(text) else text


def unfenced(text: str) -> str:
    """The inside of a reply written as one Markdown code block (```json, ```xml or a bare
    fence), as chat-tuned models wrap a structured reply; any other reply as it is. Both
    stripped. A block cut off before its closing fence (max_tokens) still loses its
    opening line."""
    body = text.strip()
    if not body.startswith("```"):
        return body
    inside = body.split("\n", 1)[1] if "\n" in body else body[3:]  # the tag's line goes
    return inside.rsplit("```", 1)[0].strip() if "```" in inside else inside.strip()


@dataclass(frozen=True)
class Parsed:
    """A parse: the letter (None when there is none) and how it was read.

    how: letter, option_text, answer_tag, json, answer_line, boxed, bold, bare_letter,
    letter_echo, ambiguous, none (the audit trail teachers store; `ambiguous` marks hedges
    so reports can count them apart from silence).
    """

    letter: str | None
    how: str


def letter(index: int) -> str:
    """Option letter for a 0-based index (A, B, ...)."""
    return LETTERS[index]


def letterable(options: list[str] | None) -> bool:
    """Whether A-Z can letter every option (26 at most; none for an open-ended question):
    a prompt of more would run out of letters."""
    return options is None or len(options) <= len(LETTERS)


def lettered(options: list[str] | None) -> str:
    """Options as the lettered lines prompts show: "A. first\nB. second"."""
    return "\n".join(f"{letter(i)}. {o}" for i, o in enumerate(options or []))


def letter_index(answer: str | None, n_options: int) -> int | None:
    """0-based index of a stored answer that is exactly one valid letter, else None."""
    if answer is None or len(answer) != 1 or answer not in LETTERS:
        return None
    idx = LETTERS.index(answer)
    return idx if idx < n_options else None


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip("*").rstrip(".").split())


# option texts repeat across a dataset's rows ("yes", "two", "red"): normalised once each
_norm_option = functools.lru_cache(maxsize=1 << 16)(_norm)


def _valid(found: str, options: list[str] | None) -> bool:
    return options is None or LETTERS.index(found) < len(options)


def parse_letter(text: str, options: list[str] | None = None) -> Parsed:
    """The letter a short answer names ('B', '(B) text', 'Answer: B', an option's text).

    With `options`, the letter must be one of them, and text after the letter that is
    the option's own text is fine. Without options any letter counts.
    """
    body = _PREFIX.sub("", text.strip().strip("*").strip())
    if options:  # an option's own text first: "A dog" may be an option, not the letter A
        said = _norm(body)
        hits = [i for i, o in enumerate(options) if _norm_option(o) == said]
        if len(hits) == 1:
            return Parsed(LETTERS[hits[0]], "option_text")
    m = _LEAD.match(body)
    if m:
        found = (m.group(1) or m.group(2)).upper()
        rest = body[m.end():]
        echoed = options is not None and _valid(found, options) and \
            _norm(rest.lstrip(" .):：")) == _norm(options[LETTERS.index(found)])
        # after "(B)" text may follow ("(B) A red car"); only a joined letter is a hedge
        hedge = _JOINED if m.group(1) else _HEDGE
        if not echoed and not _TEXT_MARK.match(rest) and hedge.match(rest):
            return Parsed(None, "ambiguous")
        if m.group(2) in ("A", "I") and not echoed and _WORD_AFTER.match(rest):
            return Parsed(None, "none")  # "A dog barks", "I think so": English, not an answer
        return Parsed(found, "letter") if _valid(found, options) else Parsed(None, "none")
    return Parsed(None, "none")


def tagged_letter(completion: str, options: list[str] | None = None) -> str | None:
    """The letter in the completion's one `<answer>` block; None for zero or several blocks."""
    blocks = _ANSWER_TAG.findall(completion)
    if len(blocks) != 1:
        return None
    return parse_letter(blocks[0], options).letter


def extract_letter(text: str, options: list[str]) -> Parsed:
    """The letter a free-text reply chose (teachers, the probe), read in this order:
    - its one `<answer>` block, as the trainer reads it;
    - the answer field of a reply that is one JSON object;
    - its last answer line ("Answer: (B) blue", "the correct option is B", "答案：B");
    - a `\\boxed{B}`, as models trained on maths end;
    - a bold letter ("**B**", "**B. blue**");
    - a line that is only a letter ("B", "(b)", "Option B"), above or below an
      explanation; two such lines with different letters are a hedge;
    - a first line that is a letter and its option's text ("B) blue", then an explanation);
    - a reply (or answer line) that is an option's text.
    Two different letters in one of these forms are a hedge; of a thinking model's reply,
    only what follows its thinking counts."""
    text = after_thinking(text)
    if len(blocks := _ANSWER_TAG.findall(text)) == 1:
        parsed = parse_letter(blocks[0], options)
        if parsed.letter is not None or parsed.how == "ambiguous":
            return Parsed(parsed.letter, "answer_tag" if parsed.letter else "ambiguous")
    if (said := _json_answer(text)) is not None:
        parsed = parse_letter(said, options)
        return Parsed(parsed.letter, "json" if parsed.letter else parsed.how)
    lines = list(_ANSWER_LINE.finditer(text))
    for line in reversed(lines):  # the last that names a letter ("...is the correct option
        said = line.group(1)      # because" after it names none)
        parsed = parse_letter(said, options)
        if parsed.how == "letter":
            return Parsed(parsed.letter, "answer_line")
        if parsed.letter is not None or parsed.how == "ambiguous":
            return parsed
        colon = any(c in text[line.start():line.start(1)] for c in ":：")
        if colon and (m := _LOWER.fullmatch(said)) and _valid(found := m.group(1).upper(),
                                                              options):
            return Parsed(found, "answer_line")  # "Answer: b"; not "the answer is a" (cut)
    boxed = {f for m in _BOXED.finditer(text)
             if (f := _echoed(_TEXT_CMD.sub(r"\1", m.group(1)), options, bare=True))}
    for how, found in (("boxed", boxed),
                       ("bold", {f for m in _BOLD.finditer(text)
                                 if (f := _echoed(m.group(1), options, bare=True))})):
        if len(found) > 1:
            return Parsed(None, "ambiguous")
        if len(found) == 1 and _valid(one := found.pop(), options):
            return Parsed(one, how)
    bare = {found for line in text.split("\n")
            if (m := _BARE.match(_PREFIX.sub("", line.strip())))
            and _valid(found := (m.group(1) or m.group(2)).upper(), options)}
    if len(bare) == 1:  # a line that is only a letter ("B", "(b)", "Option B"), before or
        return Parsed(bare.pop(), "bare_letter")  # after the model's explanation
    if len(bare) > 1:
        return Parsed(None, "ambiguous")
    first = text.strip().split("\n", 1)[0]
    if found := _echoed(first, options, bare=False):
        return Parsed(found, "letter_echo")
    normed = [_norm_option(o) for o in options]
    for candidate in [text, *reversed([m.group(1) for m in lines])]:
        said = _norm(candidate)
        hits = [i for i, o in enumerate(normed) if o == said]
        if len(hits) == 1:
            return Parsed(LETTERS[hits[0]], "option_text")
    return Parsed(None, "none")


def _json_answer(text: str) -> str | None:
    """The answer field of a reply that is one JSON object and nothing else (`{"answer":
    "B"}`, also fenced in ```json): the habit of models tuned for structured output,
    asked for a letter. Its first text field among answer, choice, option and letter,
    whatever their case; None for any other reply."""
    body = unfenced(text)
    if not body.startswith("{"):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    fields = {str(k).lower(): v for k, v in obj.items()} if isinstance(obj, dict) else {}
    for key in ("answer", "choice", "option", "letter"):
        if isinstance(fields.get(key), str):
            return fields[key]
    return None


def _echoed(text: str, options: list[str], *, bare: bool) -> str | None:
    """The letter of `text` when it is a valid letter followed by exactly its option's text
    ("C) green"), or, with `bare`, the letter alone ("C", "(C)", "C.")."""
    m = _ECHO.fullmatch(text)
    if m is None or not _valid(found := m.group(1), options):
        return None
    rest = m.group(2)
    if bare and not rest:
        return found
    return found if rest and _norm(rest) == _norm_option(options[LETTERS.index(found)]) else None


def normalise_answer(answer: Any, options: list[str]) -> str | None:
    """An annotation's answer as an option letter when it names one; else its stripped text.

    Accepts 'B', 'B.', '(B)', 'B. text', an int index, or the exact text of one option. A
    letter outside the options, or a hedge, is returned as written so validation rejects it.
    """
    if answer is None:
        return None
    if isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, int):
        return letter(answer) if 0 <= answer < min(len(options), 26) else str(answer)
    text = str(answer).strip()
    if not options:
        return text
    if len(text) == 1 and text in LETTERS and text.lower() not in map(_norm_option, options):
        return text  # the common case, a bare letter: parse_letter would give it back as is
    # the letter is authoritative even when the echoed option text differs
    return parse_letter(text, options).letter or _lower_letter(text, options) or text


_KEY_LETTER = re.compile(r"^[(\[]?([a-z])[)\]]?\.?$")


def _lower_letter(text: str, options: list[str]) -> str | None:
    """A bare letter an annotation wrote in lower case or brackets ('b', 'option b', '[B]'),
    when no option's text is that letter: a file's own answer key, not a model's prose, so
    a lone 'a' here is a letter, not the English article."""
    m = _KEY_LETTER.match(_PREFIX.sub("", text).strip().lower())
    if m is None or m.group(1) in map(_norm_option, options):
        return None
    found = m.group(1).upper()
    return found if _valid(found, options) else None
