"""Recipes: one or more sources plus an ordered list of stages, in TOML.

    [run]
    shard_size = 256     # rows per shard (the unit of resume)
    workers = 2          # processes for media decoding

    [[sources]]
    name = "llava-video"
    annotations = "data/llava_video.json"   # relative to the recipe file
    media_root = "data/videos"

    [[stages]]
    name = "validate"
    silence_db = -60

Every key of a `[[stages]]` table other than `name` is an option of that stage;
every key of a `[[sources]]` table other than name/annotations/media_root is an
option of that catalog (e.g. `columns = {question = "q"}` for jsonl/parquet).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe that cannot be run as written."""


@dataclass
class SourceSpec:
    name: str
    annotations: str
    media_root: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "annotations": self.annotations,
                "media_root": self.media_root, **self.options}


@dataclass
class StageSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass
class Recipe:
    sources: list[SourceSpec]
    stages: list[StageSpec] = field(default_factory=list)
    shard_size: int = 256
    workers: int = 2

    def extra_columns(self) -> dict[str, Any]:
        """Columns that jsonl/parquet sources pass through as-is (name -> Arrow type)."""
        from avcurate.pipeline.schema import BASE_COLUMNS, arrow_type

        extras: dict[str, Any] = {}
        for s in self.sources:
            for name, type_name in s.options.get("extra_columns", {}).items():
                if name in BASE_COLUMNS:
                    raise RecipeError(f"extra column {name!r} is already a sample-table column")
                try:
                    extras[name] = arrow_type(type_name)
                except ValueError as exc:
                    raise RecipeError(f"source {s.name!r}: {exc}") from exc
        return extras

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": {"shard_size": self.shard_size, "workers": self.workers},
            "sources": [s.to_dict() for s in self.sources],
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> Recipe:
        """Build a recipe; relative paths are resolved against `base` (the recipe's folder)."""
        run = dict(data.get("run", {}))
        unknown = set(run) - {"shard_size", "workers"}
        if unknown:
            raise RecipeError(f"[run] has unknown key(s): {', '.join(sorted(unknown))}")
        sources = [_source(s, base) for s in _tables(data, "sources")]
        if not sources:
            raise RecipeError("a recipe needs at least one [[sources]] table")
        stages = []
        for s in _tables(data, "stages"):
            if "name" not in s:
                raise RecipeError("every [[stages]] table needs a name")
            stages.append(StageSpec(s["name"], {k: v for k, v in s.items() if k != "name"}))
        recipe = cls(sources, stages, int(run.get("shard_size", 256)), int(run.get("workers", 2)))
        if recipe.shard_size < 1 or recipe.workers < 1:
            raise RecipeError("shard_size and workers must be at least 1")
        return recipe

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise RecipeError(f"no recipe at {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, base=path.resolve().parent)


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RecipeError(f"'{key}' must be an array of tables ([[{key}]])")
    return value


def _source(s: dict[str, Any], base: Path | None) -> SourceSpec:
    missing = [k for k in ("name", "annotations", "media_root") if k not in s]
    if missing:
        raise RecipeError(f"a [[sources]] table is missing {', '.join(missing)}")

    def resolve(p: str) -> str:
        path = Path(p).expanduser()
        return str(path if path.is_absolute() or base is None else (base / path).resolve())

    options = {k: v for k, v in s.items() if k not in ("name", "annotations", "media_root")}
    return SourceSpec(s["name"], resolve(s["annotations"]), resolve(s["media_root"]), options)
