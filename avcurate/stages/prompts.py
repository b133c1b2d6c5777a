"""Prompt templates are data files next to the stages that use them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def load_prompt(path: str, package: str, default: str) -> str:
    """A prompt template: the file given, or the packaged `package/prompts/default`."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    return resources.files(package).joinpath("prompts", default).read_text("utf-8")


def render(template: str, **values: str) -> str:
    """Fill `{{name}}` markers; plain braces (JSON examples in prompts) are left alone."""
    for k, v in values.items():
        template = template.replace("{{" + k + "}}", v)
    return template
