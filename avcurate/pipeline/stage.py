"""The Stage protocol, the outcome of a stage, and the stage registry.

A stage sees the sample table one shard at a time (`process`) and returns the
rows it keeps (with its columns added) and the rows it rejects (with a reason).
Stages that need the whole table first (duplicate ids, balancing) compute
their decision in `prepare`, which receives every input shard, so all stages
share one execution model and one resume rule.

Built-in stages register with `@register`; third-party packages expose theirs
through the `avcurate.stages` entry-point group, e.g. in their pyproject:

    [project.entry-points."avcurate.stages"]
    my_stage = "my_pkg.stages:MyStage"
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from avcurate.pipeline.schema import REJECT_FIELDS, add_reject_columns

if TYPE_CHECKING:
    from avcurate.pipeline.context import StageContext

ENTRY_POINT_GROUP = "avcurate.stages"
BUILTIN_MODULES = (
    "avcurate.filters.validate",
    "avcurate.filters.threshold",
    "avcurate.filters.balance",
    "avcurate.filters.subset",
    "avcurate.filters.dedup",
    "avcurate.curation.score",
    "avcurate.curation.classify",
    "avcurate.teachers.teacher",
    "avcurate.merger.merge",
)


class StageError(Exception):
    """A stage cannot be built or run as configured (bad option, missing column)."""


@dataclass
class Outcome:
    """What a stage returns for one shard: kept rows and rejected rows."""

    kept: pa.Table
    rejected: pa.Table

    @classmethod
    def split(
        cls, table: pa.Table, stage: str, reasons: Sequence[str | None],
        details: Sequence[str | None] | None = None,
    ) -> Outcome:
        """Split `table` by per-row reasons: None keeps the row, a string rejects it."""
        if len(reasons) != table.num_rows:
            raise StageError(f"{stage}: {len(reasons)} decisions for {table.num_rows} rows")
        details = list(details) if details is not None else [None] * table.num_rows
        keep = pa.array([r is None for r in reasons], pa.bool_())
        kept = table.filter(keep)
        rejected = table.filter(pa.compute.invert(keep))
        bad = [i for i, r in enumerate(reasons) if r is not None]
        return cls(
            kept=kept,
            rejected=add_reject_columns(
                rejected, stage, [reasons[i] for i in bad], [details[i] or "" for i in bad]
            ),
        )


@runtime_checkable
class Stage(Protocol):
    """What the runner needs from a stage.

    name:      registry name, also the stage folder's suffix (`01-validate`).
    requires:  columns that must exist before the stage runs.
    adds:      columns the stage adds (name -> Arrow type).
    version:   bump when the stage's logic changes, so fingerprints change.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    adds: ClassVar[dict[str, pa.DataType]]
    version: ClassVar[str]

    def options(self) -> dict[str, Any]: ...

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None: ...

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome: ...


@dataclass
class BaseStage:
    """Convenience base: options are the dataclass fields; no-op `prepare`."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[dict[str, pa.DataType]] = {}
    version: ClassVar[str] = "1"
    _state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        return None

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:  # pragma: no cover
        raise NotImplementedError


def fingerprint(stage: Stage, parent: str = "") -> str:
    """Stable hash of a stage's identity: name, version, options, and its parent's fingerprint."""
    payload = json.dumps(
        {"name": stage.name, "version": stage.version, "options": stage.options(), "parent": parent},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_BUILTINS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator that makes a built-in stage available by its `name`."""
    if not cls.name:
        raise StageError(f"{cls.__qualname__} has no name")
    _BUILTINS[cls.name] = cls
    return cls


def available() -> dict[str, type | Any]:
    """All stages by name: built-ins, then plugins (entry points) that do not shadow them."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    stages: dict[str, Any] = dict(_BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in stages:
            stages[ep.name] = ep
    return stages


def create(name: str, options: dict[str, Any] | None = None) -> Stage:
    """Instantiate the stage `name` with `options`, with a clear error for typos."""
    stages = available()
    if name not in stages:
        raise StageError(f"unknown stage {name!r}; available: {', '.join(sorted(stages))}")
    cls = stages[name]
    if not isinstance(cls, type):  # an entry point, loaded on first use
        cls = cls.load()
    known = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) \
        else None
    unknown = set(options or {}) - known if known is not None else set()
    if unknown:
        raise StageError(
            f"stage {name!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"it takes: {', '.join(sorted(known)) or 'no options'}"
        )
    try:
        stage = cls(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise StageError(f"stage {name!r}: {exc}") from exc
    if not isinstance(stage, Stage):
        raise StageError(f"{cls!r} does not implement the Stage protocol")
    return stage


def output_schema(stage: Stage, input_schema: pa.Schema) -> pa.Schema:
    """Kept-row schema: the input columns, then the stage's added columns."""
    fields = [f for f in input_schema if f.name not in stage.adds]
    fields += [pa.field(n, t) for n, t in stage.adds.items()]
    return pa.schema(fields)


def reject_schema(kept_schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(kept_schema) + REJECT_FIELDS)
