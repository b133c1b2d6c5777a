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

from avcurate.filters.rules import all_pass, columns_of, parse_rules
from avcurate.pipeline.context import StageContext
from avcurate.pipeline.schema import with_columns
from avcurate.pipeline.stage import BaseStage, Outcome, register
from avcurate.pipeline.store import RunStore, parquet_rows, write_parquet_atomic

DEFAULT_SUBSET_RULES = ["video_dependency >= 0.7 and audio_dependency >= 0.7"]


def subset_dir(stage_dir, name: str):
    return stage_dir / f"subset-{name}"


@register
@dataclass
class Subset(BaseStage):
    """Mark (and write separately) a named subset, e.g. the audio-visual one; rejects nothing."""

    name = "subset"
    version = "1"

    subset: str = "audio_visual"
    rules: list[str] = field(default_factory=lambda: list(DEFAULT_SUBSET_RULES))

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.subset):
            raise ValueError(f"subset name {self.subset!r} must be lower-case letters, digits, _")
        if isinstance(self.rules, str):
            self.rules = [self.rules]
        self._state["rules"] = parse_rules(self.rules)
        self.requires = columns_of(self._state["rules"])
        self.adds = {f"subset_{self.subset}": pa.bool_()}

    def prepare(self, ctx: StageContext, inputs: list) -> None:
        self._state["dir"] = subset_dir(ctx.stage_dir, self.subset)

    def process(self, table: pa.Table, ctx: StageContext) -> Outcome:
        inside = all_pass(table, self._state["rules"])
        table = with_columns(table, {f"subset_{self.subset}": pa.array(inside, pa.bool_())})
        out = subset_dir(ctx.stage_dir, self.subset)
        write_parquet_atomic(table.filter(pa.array(inside)), RunStore.shard_path(out, ctx.shard_index))
        return Outcome(kept=table, rejected=table.slice(0, 0))

    def manifest_extra(self) -> dict:
        out = self._state["dir"]
        return {"subsets": {self.subset: {"dir": f"{out.parent.name}/{out.name}",
                                          "rows": parquet_rows(RunStore.shards(out)),
                                          "rules": self.rules}}}
