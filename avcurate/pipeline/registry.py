"""Stages by name: the built-ins, then plugins from the `avcurate.stages` entry-point group.

A third-party package adds stages in its pyproject:

    [project.entry-points."avcurate.stages"]
    my_stage = "my_pkg.stages:MyStage"

`MyStage` subclasses `avcurate.stages.BaseStage` (options as `option(...)` fields).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from avcurate.core.options import OptionError, check_keys, did_you_mean
from avcurate.curation.classify import Classify
from avcurate.curation.probe import Probe
from avcurate.curation.score import Score
from avcurate.decontam.stage import Decontaminate
from avcurate.filters.balance import Balance
from avcurate.filters.dedup import Dedup
from avcurate.filters.subset import Subset
from avcurate.filters.threshold import Threshold
from avcurate.filters.validate import Validate
from avcurate.merger.merge import Merge
from avcurate.stages.base import Stage, StageError
from avcurate.teachers.teacher import AudioTeacher, TeacherFilter, VisualTeacher

ENTRY_POINT_GROUP = "avcurate.stages"
BUILTINS: dict[str, type] = {cls.name: cls for cls in (
    Validate, Threshold, Balance, Subset, Dedup, Score, Classify, Probe, VisualTeacher,
    AudioTeacher, TeacherFilter, Merge, Decontaminate)}
_EXTRA: dict[str, type] = {}
# the commands whose names are not their stages' (the others run the stage of their name)
COMMAND_STAGES = {"teach": ("visual_teacher", "audio_teacher", "teacher_filter"),
                  "merge-traces": ("merge",)}


def command_of(stage: str) -> str:
    """The `avcurate` command that runs a built-in stage: its own name, or the command
    that runs it with others (`teach` for the teachers)."""
    return next((command for command, stages in COMMAND_STAGES.items() if stage in stages),
                stage.replace("_", "-"))


def register(cls: type) -> type:
    """Make a stage class available by its `name` in this process (tests, notebooks)."""
    if not cls.name:
        raise StageError(f"{cls.__qualname__} has no name")
    _EXTRA[cls.name] = cls
    return cls


def available() -> dict[str, type | EntryPoint]:
    """All stages by name: built-ins, registered ones, then plugins that do not shadow them."""
    stages: dict[str, Any] = {**BUILTINS, **_EXTRA}
    for ep in _plugins(tuple((p, _mtime(p)) for p in sys.path)):
        stages.setdefault(ep.name, ep)
    return stages


@functools.lru_cache(maxsize=4)
def _plugins(path: tuple[tuple[str, int], ...]) -> tuple[EntryPoint, ...]:
    """The plugin entry points visible from `path` (sys.path and each folder's mtime).
    Reading every installed package's metadata takes ~8 ms, which a run paid once per
    stage; a folder added to sys.path, or a package installed into one (its mtime
    changes), makes a new key."""
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def _mtime(path: str) -> int:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return 0


def stage_class(name: str) -> type:
    """The class of stage `name` (loading a plugin on first use), with a clear error for typos."""
    stages = available()
    if name not in stages:
        if (command := name.replace("_", "-")) in COMMAND_STAGES:
            names = COMMAND_STAGES[command]
            what = (f"the stage {names[0]!r}" if len(names) == 1 else
                    f"the stages {', '.join(map(repr, names))}, each its own [[stages]] table")
            raise StageError(f"{name!r} is the command `avcurate {command}`; in a recipe it is "
                             f"{what}")
        raise StageError(f"unknown stage {name!r}{did_you_mean(name, stages)} "
                         f"(available: {', '.join(sorted(stages))})")
    cls = stages[name]
    if isinstance(cls, EntryPoint):
        try:
            cls = cls.load()
        except Exception as exc:  # a broken plugin is the user's to fix: say which and why
            raise StageError(f"plugin stage {name!r} ({cls.value}) cannot be loaded: {exc}") from None
    return cls


def create(name: str, options: dict[str, Any] | None = None) -> Stage:
    """Build stage `name` with `options`: unknown keys and bad values are one-line errors."""
    cls = stage_class(name)
    options = dict(options or {})
    if dataclasses.is_dataclass(cls):
        try:
            check_keys(cls, options, f"stage {name!r}")
        except OptionError as exc:
            raise StageError(str(exc)) from None
    try:
        stage = cls(**options)
    except (TypeError, ValueError, OptionError) as exc:
        raise StageError(f"stage {name!r}: {exc}") from None
    if not isinstance(stage, Stage):
        raise StageError(f"{cls!r} does not implement the Stage protocol")
    return stage
