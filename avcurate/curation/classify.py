"""The classify stage: an LLM sorts each question into a taxonomy (OmniVideo-R1 used Qwen3-32B).

The taxonomy is data (`curation/taxonomy.toml`, 16 categories; `taxonomy = FILE`
replaces it). A name outside the taxonomy is retried, then rejected as
`unclassifiable`; an explicit "none" is rejected as `no_category`.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pyarrow as pa

from avcurate.core.answers import after_thinking, lettered
from avcurate.core.options import did_you_mean, option
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.stages.base import StageError, text_hash
from avcurate.stages.model_stage import Decline, History, ModelStage
from avcurate.stages.prompts import load_prompt, read_user_text, render

NONE = "none"


def load_taxonomy(path: str = "") -> dict[str, str]:
    """Category name -> definition, from `path` or the packaged default.

    A user's file is checked whole before any call: a nameless, blank, repeated or reserved
    category, or a misspelt key, would have every row classified against a broken list.
    """
    where = f"{path}" if path else "the packaged taxonomy"
    text = read_user_text(path, where) if path else \
        resources.files("avcurate.curation").joinpath("taxonomy.toml").read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from None
    entries = data.get("category", [])
    if not isinstance(entries, list) or not all(isinstance(c, dict) for c in entries):
        raise ValueError(f"{where}: categories are [[category]] tables (name, definition)")
    cats: dict[str, str] = {}
    for i, entry in enumerate(entries, 1):
        cats.update([_category(entry, i, where, cats)])
    if not cats:
        raise ValueError(f"{where} has no [[category]] entries")
    return cats


def _category(entry: dict[str, Any], i: int, where: str, seen: dict[str, str]
              ) -> tuple[str, str]:
    for key in entry:
        if key not in ("name", "definition"):
            raise ValueError(f"{where}: category {i} has an unknown key {key!r}"
                             f"{did_you_mean(key, ('name', 'definition'))}")
    name, definition = entry.get("name"), entry.get("definition", "")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: category {i} has no name")
    name = name.strip()
    if not isinstance(definition, str):
        raise ValueError(f"{where}: category {name!r}: definition must be text")
    if name in seen or name == NONE:
        why = "is listed twice" if name in seen else \
            f"is reserved (the model answers {NONE!r} for a question that fits no category)"
        raise ValueError(f"{where}: category {name!r} {why}")
    return name, definition.strip()


# "Category: ", "**Category:** ", "### Category" and its line break: what precedes the name
_CATEGORY_LABEL = re.compile(r"^[#*\s]*(?:the\s+)?category(?:\s+is)?\s*\**\s*[:：]?\s*\**\s*",
                             re.IGNORECASE)


def _loose(name: str) -> str:
    """A category name as a model may style it without the schema's enum ("**Audio Visual
    Counting.**", "audio_visual_counting"): lower case, words only. A taxonomy whose names
    are alike this way keeps only its exact names."""
    return " ".join(re.sub(r"[\W_]+", " ", name.lower()).split())


@dataclass
class Classify(ModelStage):
    """Put each question into one category of the taxonomy (text-only LLM)."""

    name = "classify"
    requires = ("id", "question", "options")
    adds = {"category": pa.string(), "classifier_model": pa.string()}
    version = "1"

    prompt: str = option("", path=True, help="Prompt file (default: the packaged one).")
    taxonomy: str = option("", path=True, help="Taxonomy TOML ([[category]] name, "
                           "definition); default: 16 categories.")
    max_tokens: int = option(64, min=1, help="Longest answer, tokens.")

    _taxonomy: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _template: str = field(default="", init=False, repr=False, compare=False)
    _lookup: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _loose: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self._taxonomy = load_taxonomy(self.taxonomy)
        except ValueError as exc:
            raise StageError(f"stage 'classify': taxonomy {exc}") from None
        self._lookup = {n.lower(): n for n in self._taxonomy}
        loose: dict[str, list[str]] = {}
        for n in self._taxonomy:
            loose.setdefault(_loose(n), []).append(n)
        self._loose = {k: names[0] for k, names in loose.items() if len(names) == 1}
        self._template = load_prompt(self.prompt, "avcurate.curation", "classify.md", self.name)

    def content(self) -> dict[str, str]:
        taxonomy = {"taxonomy": text_hash(json.dumps(self._taxonomy))} if self.taxonomy else {}
        return super().content() | taxonomy

    def build(self, row: dict[str, Any], media: None, history: History) -> ModelRequest:
        cats = "\n".join(f"- {n}: {d}" for n, d in self._taxonomy.items())
        text = render(self._template, categories=cats, question=row["question"] or "",
                      options=lettered(row["options"]) or "(open-ended question)")
        schema = {"type": "object", "required": ["category"], "properties": {"category": {
            "type": "string", "enum": [*self._taxonomy, NONE]}}}
        return ModelRequest((Message("user", (TextPart(text),)),), **self.sampling(),
                            json_schema=schema)

    def validate(self, response: ModelResponse, row: dict[str, Any]) -> dict[str, Any] | Decline:
        answer = response.json
        if isinstance(answer, dict) and isinstance(answer.get("category"), str):
            said = answer["category"]
        elif (said := self._named(response.text)) is None:
            raise InvalidAnswer("unclassifiable", f"no category in {response.text[:120]!r}")
        name = said.strip().lower()
        if _loose(name) == NONE:  # a valid answer that rejects the row
            return Decline("no_category", "the model found no fitting category")
        found = self._lookup.get(name) or self._loose.get(_loose(name))
        if found is None:
            raise InvalidAnswer("unclassifiable", f"{said!r} is not in the taxonomy")
        return {"category": found, "classifier_model": f"{self.backend}:{self.model}"}

    def _named(self, text: str) -> str | None:
        """A reply that is a category's name and nothing else ("Audio-visual counting.",
        "Category: speaker identification"), as a server without structured output or a
        small model that skipped the JSON gives it; None for anything longer."""
        body = _CATEGORY_LABEL.sub("", after_thinking(text).strip())
        key = _loose(body)
        return body if key == NONE or key in self._loose or body.lower() in self._lookup \
            else None
