"""The Stage protocol: what every stage declares and what the runners call, in order.

A runner, local or Ray, drives a stage like this:

    stage.check()                     # optional: when the run is planned (libraries, keys)
    stage.prepare(ctx, inputs)        # once, on the driver: global decisions (balance, dedup)
    stage.setup(ctx)                  # once per process that processes shards (opens clients)
    stage.process(table, ctx, shard)  # per shard: kept rows + rejected rows (+ call usage)
    stage.teardown()                  # after that process's last shard
    stage.stop(exc)                   # optional: a shard processed alongside failed
    stage.summary()                   # on the driver: what goes into the manifest

and reads its declarations: `requires`/`adds` (columns, checked before any work),
`resources` (CPU-bound work or model calls: the Ray runner picks tasks or an actor pool
from it), `version` (bump when results change) and its options (dataclass fields made
with `core.options.option`, checked when the stage is built).

Third-party stages subclass `BaseStage` and register through the `avcurate.stages`
entry-point group (see `pipeline/registry.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from avcurate.core.arrow_values import scalar, strings
from avcurate.core.options import OptionError, absolute_path, check_fields, declared, identity
from avcurate.core.schema import REJECT_FIELDS, add_reject_columns
from avcurate.stages.errors import StageError

if TYPE_CHECKING:
    from avcurate.stages.context import StageContext


class Resources(StrEnum):
    """What a stage's shards spend: CPU (decoding, rules) or model calls (a remote server)."""

    CPU = "cpu"
    MODEL = "model"


@dataclass
class ShardResult:
    """What a stage returns for one shard: kept rows, rejected rows, and model-call counts."""

    kept: pa.Table
    rejected: pa.Table
    usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def split(
        cls, table: pa.Table, stage: str, reasons: Sequence[str | None] | pa.Array,
        details: Sequence[str | None] | pa.Array | None = None,
        usage: dict[str, int] | None = None,
    ) -> ShardResult:
        """Split `table` by per-row reasons: None keeps the row, a string rejects it.

        Reasons and details may be Python lists or Arrow string arrays; arrays keep the
        split vectorised (a million rows without a Python loop over them).
        """
        reasons = strings(reasons)
        if len(reasons) != table.num_rows:
            raise StageError(f"{stage}: {len(reasons)} decisions for {table.num_rows} rows")
        keep = pc.is_null(reasons)
        bad = pc.invert(keep)
        rejected = table.filter(bad)
        details = pa.nulls(table.num_rows, pa.string()) if details is None else strings(details)
        return cls(
            kept=table.filter(keep),
            rejected=add_reject_columns(rejected, stage, reasons.filter(bad),
                                        pc.fill_null(details.filter(bad), scalar(""))),
            usage=usage or {},
        )


@runtime_checkable
class Stage(Protocol):
    """What the runners need from a stage (see the module docstring for the call order)."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    adds: ClassVar[dict[str, pa.DataType]]
    version: ClassVar[str]
    resources: ClassVar[Resources]

    def options(self) -> dict[str, Any]: ...

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None: ...

    def setup(self, ctx: StageContext) -> None: ...

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult: ...

    def teardown(self) -> None: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass
class BaseStage:
    """Base for stages: options are the dataclass fields, checked on construction; no-op hooks.

    Subclasses keep their working state in typed fields declared with
    `field(init=False, repr=False, compare=False)`, never in an untyped dict.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    # Of `requires`, the columns the stage compares with numbers (a threshold's rules): the
    # plan refuses one that holds text, before any row is read or any stage removed.
    numeric: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[dict[str, pa.DataType]] = {}
    version: ClassVar[str] = "1"
    resources: ClassVar[Resources] = Resources.CPU
    # Shards the local runner may process at once in threads of one process. More than one
    # only for stages whose `process` is thread-safe and mostly waits (model calls): the next
    # shard's decoding and request building then overlap the requests still in flight.
    parallel_shards: ClassVar[int] = 1
    # Whether `prepare` decides over all the stage's input rows (duplicate ids, dedup,
    # balance), so the stage before must be complete first. None: decided from whether
    # the stage overrides `prepare` (an unknown prepare is assumed to read its inputs).
    # The Ray runner fuses a stage that does not into one pass with the stage before.
    global_decision: ClassVar[bool | None] = None

    def __post_init__(self) -> None:
        try:
            check_fields(self, f"stage {self.name!r}")
        except OptionError as exc:
            raise StageError(str(exc)) from None

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def content(self) -> dict[str, str]:
        """Hashes of the text of files the options name that change results (a prompt, a
        taxonomy): a file edited since the stage ran makes the stage differ, as a changed
        option does. Empty by default."""
        return {}

    @classmethod
    def resolve_paths(cls, options: dict[str, Any], base: Path) -> dict[str, Any]:
        """A recipe's options for this stage with its relative file paths (options declared
        with `path=True`) made absolute against `base`, the recipe's folder: every path in a
        recipe is relative to the recipe, wherever the command is run from."""
        paths = {f.name for f in declared(cls) if f.metadata.get("path")}
        return {k: absolute_path(v, base) if k in paths and isinstance(v, str) and v else v
                for k, v in options.items()}

    def prepare(self, ctx: StageContext, inputs: list[Path]) -> None:
        return None

    def check(self) -> None:
        """Raise StageError when this environment cannot run the stage (a library or key
        missing); the runner calls it for every stage before the run touches a row."""
        return None

    def setup(self, ctx: StageContext) -> None:
        return None

    def process(self, table: pa.Table, ctx: StageContext, shard: int
                ) -> ShardResult:  # pragma: no cover
        raise NotImplementedError

    def teardown(self) -> None:
        return None

    def stop(self, exc: BaseException) -> None:
        """A shard processed alongside failed for good: make the running ones end soon."""
        return None

    def summary(self) -> dict[str, Any]:
        return {}


def fingerprint(stage: Stage, parent: str = "") -> str:
    """Stable hash of what a stage computes: name, version, result-changing options, parent.

    Operational options (timeouts, concurrency, rate limits) are left out, so changing
    them never makes a finished stage look different.
    """
    options = identity(stage) if dataclasses.is_dataclass(stage) else stage.options()
    body = with_content({"name": stage.name, "version": stage.version, "options": options,
                         "parent": parent}, stage)
    payload = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stage_content(stage: Stage) -> dict[str, str]:
    """`stage.content()`, or nothing for a plugin stage written without it."""
    content = getattr(stage, "content", None)
    return content() if callable(content) else {}


def with_content(body: dict[str, Any], stage: Stage) -> dict[str, Any]:
    """`body` (what a stage's or an audit's hash is made of) with the stage's file hashes
    under "content", or as it is when the stage reads no such file: hashes made before
    file texts were counted stay the same."""
    content = stage_content(stage)
    return body | {"content": content} if content else body


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def output_schema(stage: Stage, input_schema: pa.Schema) -> pa.Schema:
    """Kept-row schema: the input columns, then the stage's added columns."""
    fields = [f for f in input_schema if f.name not in stage.adds]
    fields += [pa.field(n, t) for n, t in stage.adds.items()]
    return pa.schema(fields)


def reject_schema(kept_schema: pa.Schema) -> pa.Schema:
    return pa.schema(list(kept_schema) + REJECT_FIELDS)
