"""The subset stage: mark a named subset of the kept rows, without rejecting anything.

OmniVideo-R1 trains its second RL stage on the rows with strong audio-visual
dependency (video_dependency >= 0.7 and audio_dependency >= 0.7). Rather than
a second run, one run yields both training sets: every row passes through,
gains a boolean `subset_<name>` column, and the rows in the subset are also
written to `NN-subset/subset-<name>/part-NNNNN.parquet` (the export picks that
folder up as its own config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from avcurate.core.arrow_values import from_numpy
from avcurate.core.options import option
from avcurate.core.schema import with_columns
from avcurate.core.store import RunStore, parquet_rows, write_parquet_atomic
from avcurate.filters.rules import Comparison, RuleError, all_pass, columns_of, parse_rules
from avcurate.stages.base import BaseStage, ShardResult, StageError
from avcurate.stages.context import StageContext

DEFAULT_SUBSET_RULES = ["video_dependency >= 0.7 and audio_dependency >= 0.7"]


def subset_dir(stage_dir, name: str):
    return stage_dir / f"subset-{name}"


@dataclass
class Subset(BaseStage):
    """Mark (and write separately) a named subset, e.g. the audio-visual one; rejects nothing."""

    name = "subset"
    version = "1"
    parallel_shards = 4  # Arrow work that releases the GIL: shards read/written side by side
    global_decision = False  # prepare only names the subset's folder

    subset: str = option("audio_visual", flag="--name",
                         help="Subset name (a separate split of the run).")
    rules: list[str] = option(default_factory=lambda: list(DEFAULT_SUBSET_RULES), flag="--rule",
                              help="Rules rows of the subset pass, repeatable (default "
                                   "'video_dependency >= 0.7 and audio_dependency >= 0.7').")

    _parsed: list[Comparison] = field(default_factory=list, init=False, repr=False, compare=False)
    _dir: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not re.fullmatch(r"[a-z0-9_]+", self.subset):
            raise StageError(f"stage 'subset': name {self.subset!r} must be lower-case letters, "
                             "digits and _")
        try:
            self._parsed = parse_rules(self.rules)
        except RuleError as exc:
            raise StageError(f"stage 'subset': {exc}") from None
        self.requires = self.numeric = columns_of(self._parsed)
        self.adds = {f"subset_{self.subset}": pa.bool_()}

    def prepare(self, ctx: StageContext, inputs: list) -> None:
        self._dir = str(subset_dir(ctx.stage_dir, self.subset))

    def process(self, table: pa.Table, ctx: StageContext, shard: int) -> ShardResult:
        inside = from_numpy(all_pass(table, self._parsed))
        table = with_columns(table, {f"subset_{self.subset}": inside})
        out = subset_dir(ctx.stage_dir, self.subset)
        write_parquet_atomic(table.filter(inside), RunStore.shard_path(out, shard))
        return ShardResult(kept=table, rejected=table.slice(0, 0))

    def summary(self) -> dict:
        from pathlib import Path

        out = Path(self._dir)
        return {"subsets": {self.subset: {"dir": f"{out.parent.name}/{out.name}",
                                          "rows": parquet_rows(RunStore.shards(out)),
                                          "rules": self.rules}}}
