"""The classify stage: an LLM sorts each question into a taxonomy (OmniVideo-R1 used Qwen3-32B).

The taxonomy is data (`catalogs/taxonomy.toml`, 16 categories; `taxonomy = FILE`
replaces it). A name outside the taxonomy is retried, then rejected as
`unclassifiable`; an explicit "none" is rejected as `no_category`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from avcurate.curation.model_stage import ModelStage, load_prompt, render
from avcurate.models import InvalidAnswer, ModelResponse
from avcurate.models.request import Message, ModelRequest, TextPart
from avcurate.pipeline.schema import lettered
from avcurate.pipeline.stage import register

NONE = "none"


def load_taxonomy(path: str = "") -> dict[str, str]:
    """Category name -> definition, from `path` or the packaged default."""
    text = Path(path).read_text("utf-8") if path else \
        resources.files("avcurate.catalogs").joinpath("taxonomy.toml").read_text("utf-8")
    data = tomllib.loads(text)
    cats = {c["name"].strip(): c.get("definition", "").strip() for c in data.get("category", [])}
    if not cats:
        raise ValueError(f"taxonomy {path or '(default)'} has no [[category]] entries")
    return cats


@register
@dataclass
class Classify(ModelStage):
    """Put each question into one category of the taxonomy (text-only LLM)."""

    name = "classify"
    requires = ("id", "question", "options")
    adds = {"category": pa.string(), "classifier_model": pa.string()}
    version = "1"

    prompt: str = ""
    taxonomy: str = ""
    max_tokens: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        self._state["taxonomy"] = load_taxonomy(self.taxonomy)
        self._state["lookup"] = {n.lower(): n for n in self._state["taxonomy"]}
        self._state["template"] = load_prompt(self.prompt, "classify.md")

    def build(self, row: dict[str, Any], media: None) -> ModelRequest:
        cats = "\n".join(f"- {n}: {d}" for n, d in self._state["taxonomy"].items())
        text = render(self._state["template"], categories=cats, question=row["question"] or "",
                      options=lettered(row["options"]) or "(open-ended question)")
        schema = {"type": "object", "required": ["category"], "properties": {"category": {
            "type": "string", "enum": [*self._state["taxonomy"], NONE]}}}
        return ModelRequest((Message("user", (TextPart(text),)),), temperature=self.temperature,
                            max_tokens=self.max_tokens, json_schema=schema)

    def validate(self, response: ModelResponse) -> dict[str, Any]:
        answer = response.json
        if not isinstance(answer, dict) or not isinstance(answer.get("category"), str):
            raise InvalidAnswer("unclassifiable", f"no category in {response.text[:120]!r}")
        name = answer["category"].strip().lower()
        if name == NONE:
            return {"category": None, "classifier_model": f"{self.backend}:{self.model}"}
        if name not in self._state["lookup"]:
            raise InvalidAnswer("unclassifiable", f"{answer['category']!r} is not in the taxonomy")
        return {"category": self._state["lookup"][name],
                "classifier_model": f"{self.backend}:{self.model}"}

    def process(self, table, ctx):
        outcome = super().process(table, ctx)
        # an explicit "none" is a valid answer that rejects the row
        cats = outcome.kept.column("category").to_pylist()
        if all(c is not None for c in cats):
            return outcome
        reasons = [None if c is not None else "no_category" for c in cats]
        again = type(outcome).split(outcome.kept, self.name, reasons,
                                    ["the model found no fitting category" if r else None
                                     for r in reasons])
        rejected = pa.concat_tables([outcome.rejected, again.rejected], promote_options="default")
        return type(outcome)(kept=again.kept, rejected=rejected)
