"""Prompt templates are data files next to the stages that use them."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from avcurate.stages.errors import StageError

MARKER = re.compile(r"\{\{(\w+)\}\}")


def load_prompt(path: str, package: str, default: str, stage: str) -> str:
    """A prompt template: the file given, or the packaged `package/prompts/default`.

    A user's file is checked against the packaged one when the stage is built, before any
    row: a marker the stage does not fill (a typo) would reach the model verbatim, and a
    prompt without the question would have every row answered blind.
    """
    packaged = resources.files(package).joinpath("prompts", default).read_text("utf-8")
    if not path:
        return packaged
    where = f"stage {stage!r}: prompt file {path}"
    try:
        text = read_user_text(path, where)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    fills = sorted(set(MARKER.findall(packaged)))
    unknown = sorted(set(MARKER.findall(text)) - set(fills))
    if unknown or "question" not in MARKER.findall(text):
        what = (f"has {', '.join(_marks(unknown))}, which the stage does not fill" if unknown
                else "never places the question ({{question}})")
        raise StageError(f"{where} {what}; the stage fills {', '.join(_marks(fills))}")
    return text


def read_user_text(path: str, where: str) -> str:
    """A file the user named for a stage (a prompt, a taxonomy), whole; one line (a
    ValueError starting with `where`) when it is missing, a folder or not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} cannot be read as UTF-8 text "
                         f"({getattr(exc, 'strerror', None) or exc})") from None


def _marks(names: list[str]) -> list[str]:
    return ["{{" + n + "}}" for n in names]


def render(template: str, **values: str) -> str:
    """Fill `{{name}}` markers; plain braces (JSON examples in prompts) are left alone."""
    for k, v in values.items():
        template = template.replace("{{" + k + "}}", v)
    return template
