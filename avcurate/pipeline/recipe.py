"""Recipes: one or more sources plus an ordered list of stages, in TOML.

    [run]
    shard_size = 256     # rows per shard (the unit of resume)
    workers = 2          # processes for media decoding and for a large JSON file's rows
    media_timeout = 60   # seconds one file's probe or decode may take before its row is rejected

    [[sources]]
    name = "llava-video"
    annotations = "data/llava_video.json"   # relative to the recipe file
    media_root = "data/videos"

    [[stages]]
    name = "validate"
    silence_db = -60

String values may use `${NAME}` or `${NAME:-default}`: they are replaced from the
environment when the recipe is loaded, so one recipe can point at different
endpoints and data without edits (and API keys never need to be written in it).
An optional `[export]` table (out, val_fraction, copy_media, ...) exports the
final rows in the Hugging Face dataset layout at the end of `avcurate run`.

Every key of a `[[stages]]` table other than `name` is an option of that stage;
every key of a `[[sources]]` table other than name/annotations/media_root is an
option of that catalog (e.g. `columns = {question = "q"}` for jsonl/parquet, or
`tag = "train"` to name the file in sample ids); unknown ones are refused.
`annotations` may be a glob (one source per matching file, same options), and
`media_root = "{annotations_dir}/videos"` is relative to each file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avcurate.catalogs import GLOB_RE, annotation_files, check_source, source_tag
from avcurate.core.options import absolute_path, did_you_mean
from avcurate.core.urls import file_path, url_refusal
from avcurate.pipeline.registry import stage_class
from avcurate.stages.context import MEDIA_TIMEOUT_S
from avcurate.stages.errors import StageError


class RecipeError(ValueError):
    """A recipe that cannot be run as written."""


ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, taken: dict[str, str] | None = None) -> Any:
    """Replace ${NAME} / ${NAME:-default} in every string of a parsed recipe; each NAME
    that was not set and gave its default is recorded in `taken` (NAME -> default)."""
    if isinstance(value, dict):
        return {k: expand_env(v, taken) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, taken) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        found = os.environ.get(m.group(1))
        if found is None and m.group(2) is None:
            raise RecipeError(f"the recipe uses ${{{m.group(1)}}} but it is not set "
                              f"(or write ${{{m.group(1)}:-default}})")
        if found is None and taken is not None:
            taken[m.group(1)] = m.group(2)
        return found if found is not None else m.group(2)

    return ENV_RE.sub(sub, value)


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
    export: dict[str, Any] | None = None
    media_timeout: float = MEDIA_TIMEOUT_S
    # variables the recipe file named, not set, that gave their default (NAME -> the
    # forms the default may take in a message): not part of what the recipe is
    defaults: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False,
                                                 repr=False)

    def explain(self, message: str) -> str:
        """`message`, with the unset variables whose default it names (see `unset_note`)."""
        return message + unset_note(message, self.defaults)

    def extra_columns(self) -> dict[str, Any]:
        """Columns that jsonl/parquet sources pass through as-is (name -> Arrow type)."""
        from avcurate.core.schema import BASE_COLUMNS, arrow_type

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
        out = {
            "run": {"shard_size": self.shard_size, "workers": self.workers,
                    "media_timeout": self.media_timeout},
            "sources": [s.to_dict() for s in self.sources],
            "stages": [s.to_dict() for s in self.stages],
        }
        if self.export is not None:
            out["export"] = dict(self.export)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None, *,
                  stored: bool = False) -> Recipe:
        """Build a recipe; relative paths are resolved against `base` (the recipe's folder).
        `stored`: a run's own recipe (its manifest's), whose sources are files already
        matched, so a name with glob characters is never read as a pattern again."""
        _known(data, TOP_LEVEL, "the recipe")
        run = dict(data.get("run", {}))
        _known(run, ("shard_size", "workers", "media_timeout"), "[run]")
        sources = [f for s in _tables(data, "sources")
                   for f in source_specs(s, base, expand=not stored)]
        if not sources:
            raise RecipeError("a recipe needs at least one [[sources]] table")
        check_tags(sources)
        stages = []
        for s in _tables(data, "stages"):
            if "name" not in s:
                raise RecipeError("every [[stages]] table needs a name")
            options = {k: v for k, v in s.items() if k != "name"}
            stages.append(StageSpec(s["name"], _stage_paths(s["name"], options, base)))
        export = data.get("export")
        if export is not None:
            if not isinstance(export, dict) or "out" not in export:
                raise RecipeError("[export] needs at least out = \"FOLDER\"")
            export = dict(export)
            export["out"] = absolute_path(export["out"], base)
        recipe = cls(sources, stages, int(run.get("shard_size", 256)), int(run.get("workers", 2)),
                     export, _seconds(run.get("media_timeout", MEDIA_TIMEOUT_S)))
        if recipe.shard_size < 1 or recipe.workers < 1:
            raise RecipeError("shard_size and workers must be at least 1")
        return recipe

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        taken: dict[str, str] = {}
        try:
            data = expand_env(tomllib.loads(path.read_text(encoding="utf-8")), taken)
        except FileNotFoundError as exc:
            raise RecipeError(f"no recipe at {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path} is not valid TOML: {exc}") from exc
        base = path.resolve().parent
        defaults = {name: (value, absolute_path(value, base)) for name, value in taken.items()}
        try:
            recipe = cls.from_dict(data, base=base)
        except RecipeError as exc:
            raise RecipeError(f"{exc}{unset_note(str(exc), defaults)}") from None
        recipe.defaults = defaults
        return recipe


def unset_note(message: str, defaults: dict[str, tuple[str, ...]]) -> str:
    """A note naming each unset variable whose default (a path, URL or model id: it has a
    "/") stands whole in `message`, as written or resolved against the recipe's folder, or
    failing that, a folder default that starts a path in it: "annotations file
    .../data/AVQA/train_qa.json does not exist" most often means that AVQA_ANNOTATIONS was
    not exported (or was misspelt), which the message alone hides."""
    def named(form: str, after: str) -> bool:
        return "/" in form and re.search(
            rf"(?<![\w./-]){re.escape(form)}{after}", message) is not None

    names: list[str] = []
    for after in (r"(?![\w/-])(?!\.\w)", "/"):  # whole, else a folder of a path named
        names = names or [name for name, forms in defaults.items()
                          if any(named(form, after) for form in forms)]
    if not names:
        return ""
    listed = ", ".join(f"${name}" for name in names)
    return (f" ({listed} {'is' if len(names) == 1 else 'are'} not set: the recipe's "
            "default was used)")


TOP_LEVEL = ("run", "sources", "stages", "export")


def _known(table: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Refuse an unknown key (a typo such as [expor] is never silently ignored)."""
    for key in table:
        if key not in keys:
            raise RecipeError(f"{where} has an unknown key {key!r}{did_you_mean(key, keys)} "
                              f"(known: {', '.join(keys)})")


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RecipeError(f"'{key}' must be an array of tables ([[{key}]])")
    return value


def _stage_paths(name: str, options: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """A stage's file options (prompt, taxonomy, benchmarks) relative to the recipe, as its
    sources are; an unknown stage is left for the plan to name."""
    try:
        cls = stage_class(name)
    except StageError:
        return options
    resolve = getattr(cls, "resolve_paths", None)
    return resolve(options, base) if base is not None and resolve else options


ANNOTATIONS_DIR = "{annotations_dir}"


def local_paths(name: str, paths: dict[str, str]) -> dict[str, str]:
    """A source's paths (annotations, media_root, ...), a `file://` URL as the path it
    names; RecipeError for another URL, which would be read as a folder under this one."""
    paths = {key: file_path(value) for key, value in paths.items()}
    for key, value in paths.items():
        if why := url_refusal(key.replace("_", " "), value):
            raise RecipeError(f"source {name!r}: {why}")
    return paths


def source_specs(s: dict[str, Any], base: Path | None, expand: bool = True
                 ) -> list[SourceSpec]:
    """One [[sources]] table's sources: one per annotation file its `annotations` names, a
    path or a glob (`LLaVA-Video-178K/*/*_qa_processed.json`, `**` for any depth), each
    with the table's options; `{annotations_dir}` in `media_root` (or `audio_root`) is the
    folder of each file, as a release that keeps its clips beside each file needs."""
    missing = [k for k in ("name", "annotations", "media_root") if k not in s]
    if missing:
        raise RecipeError(f"a [[sources]] table is missing {', '.join(missing)}")
    if not all(isinstance(s[k], str) for k in ("name", "annotations", "media_root")):
        raise RecipeError("a [[sources]] table's name, annotations and media_root are text")
    s = s | local_paths(s["name"], {k: s[k] for k in ("annotations", "media_root", "audio_root")
                                    if isinstance(s.get(k), str)})
    options = {k: v for k, v in s.items() if k not in ("name", "annotations", "media_root")}
    try:
        check_source(s["name"], options)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    files = (_annotation_files(s["annotations"], base) if expand
             else [absolute_path(s["annotations"], base)])
    if len(files) > 1 and "tag" in options:
        raise RecipeError(f"{s['annotations']!r} matches {len(files)} files, which cannot "
                          "share one tag (it names a file in sample ids): drop the tag")
    tags: dict[str, str] = {}
    for f in files:
        if (other := tags.setdefault(source_tag(f, options), f)) != f:
            raise RecipeError(
                f"{s['annotations']!r} matches {other} and {f}, whose sample ids would be "
                "the same (ids name a file without its folder): give each its own "
                "[[sources]] table and tag")
    return [SourceSpec(s["name"], f, _root(s["media_root"], f, base),
                       _roots(options, f, base)) for f in files]


def _annotation_files(annotations: str, base: Path | None) -> list[str]:
    """The files `annotations` names: itself when it is a file or has no glob characters
    (a missing file is named when the sources are checked), else every file it matches,
    sorted (none is an error: a pattern matching nothing would ingest nothing)."""
    path = absolute_path(annotations, base)
    if not GLOB_RE.search(annotations):
        return [path]
    try:
        return annotation_files(path)
    except ValueError:
        raise RecipeError(f"no annotation file matches {annotations!r} (looked for {path})"
                          ) from None


def _root(root: str, annotations: str, base: Path | None) -> str:
    """A media or audio root, `{annotations_dir}` replaced by the annotation file's folder."""
    if ANNOTATIONS_DIR not in root:
        return absolute_path(root, base)
    return str(Path(root.replace(ANNOTATIONS_DIR, os.path.dirname(annotations))).resolve())


def _roots(options: dict[str, Any], annotations: str, base: Path | None) -> dict[str, Any]:
    if isinstance(options.get("audio_root"), str):
        return options | {"audio_root": _root(options["audio_root"], annotations, base)}
    return options


def check_tags(sources: list[SourceSpec]) -> None:
    """Two files of one source must not share an id tag (their ids would collide), and no
    file is read twice as one source (two tables, or a glob matching a file named before:
    its rows would come in twice, under the same ids)."""
    seen: dict[tuple[str, str], str] = {}
    files: set[tuple[str, str]] = set()
    for s in sources:
        if (s.name, s.annotations) in files:
            raise RecipeError(f"{s.annotations} is read twice as source {s.name!r} (two "
                              "[[sources]] tables, or a glob matching it again): its rows "
                              "would be ingested twice; name it once")
        files.add((s.name, s.annotations))
        key = (s.name, source_tag(s.annotations, s.options))
        other = seen.setdefault(key, s.annotations)
        if other != s.annotations:
            raise RecipeError(
                f"sources {other} and {s.annotations} ({s.name}) would give the same sample "
                f"ids ({s.name}:{key[1]}/...); set tag = \"...\" on one of them")


def _seconds(value: Any) -> float:
    """[run] media_timeout as seconds, above 0 and at most a day (a bool is not a number,
    and faulthandler's timer takes no more than its C type holds)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 < value <= 86400:
        raise RecipeError(f"[run] media_timeout must be a number of seconds above 0 and at "
                          f"most 86400, not {value!r}")
    return float(value)
