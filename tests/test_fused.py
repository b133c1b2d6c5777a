"""Fused chains (the Ray runner's one pass per shard): which stages fuse, and a chain's
job writes what separate stages write, resuming a shard stage by stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
from helpers import run
from test_filters import row, scored_recipe

from avcurate.core.store import RunStore
from avcurate.pipeline.fused import ChainJob, Member, chains, decides_globally
from avcurate.pipeline.recipe import StageSpec
from avcurate.pipeline.registry import create
from avcurate.stages import BaseStage, ShardResult
from avcurate.stages.base import output_schema, reject_schema


def test_a_stage_that_decides_over_all_rows_starts_a_chain():
    names = ["validate", "dedup", "score", "classify", "threshold", "probe", "balance",
             "subset", "visual_teacher", "audio_teacher", "teacher_filter", "merge"]
    model = {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    stages = [create(n, model if n in {"score", "classify", "probe", "visual_teacher",
                                       "audio_teacher", "merge"} else {}) for n in names]
    grouped = [[names[i] for i in chain] for chain in chains(stages)]
    # a global stage heads its chain: its decision is made first, then applied per shard
    assert grouped == [["validate"], ["dedup", "score", "classify", "threshold", "probe"],
                       ["balance", "subset", "visual_teacher", "audio_teacher",
                        "teacher_filter", "merge"]]


@dataclasses.dataclass
class OwnPrepare(BaseStage):
    """A plug-in stage with its own prepare that does not say what it reads."""

    name = "own_prepare"

    def prepare(self, ctx, inputs):
        self.seen = len(inputs)

    def process(self, table, ctx, shard):
        return ShardResult(kept=table, rejected=table.slice(0, 0))


@dataclasses.dataclass
class Declared(OwnPrepare):
    name = "declared"
    global_decision = False


def test_an_unknown_prepare_is_assumed_to_read_all_rows():
    assert decides_globally(OwnPrepare()) and not decides_globally(Declared())
    assert chains([create("threshold", {}), OwnPrepare(), Declared()]) == [[0], [1, 2]]


def _members(run_dir: Path, names: list[str], schema) -> list[Member]:
    out = []
    for k, name in enumerate(names, start=1):
        stage = create(name, {})
        kept = output_schema(stage, schema)
        out.append(Member(stage, str(run_dir / f"0{k}-{name}"), kept, reject_schema(kept)))
        schema = kept
    return out


def test_chain_job_writes_what_separate_stages_write_and_resumes(tmp_path):
    rows = [row(f"r{i:02d}", "AB"[i % 2], comp=0.6 + (i % 4) / 10, vd=0.5 + (i % 3) / 4,
                ad=0.8) for i in range(24)]
    stages = [StageSpec("threshold"), StageSpec("subset")]
    run(scored_recipe(tmp_path, rows, stages, shard_size=8), tmp_path / "separate")
    fused = tmp_path / "fused"
    run(scored_recipe(tmp_path, rows, [], shard_size=8), fused)
    inputs = RunStore.shards(fused / "00-ingest")
    members = _members(fused, ["threshold", "subset"], pq.read_schema(inputs[0]))
    job = ChainJob(members, str(fused), workers=1)
    try:
        first = [job.shard(i, str(p)) for i, p in enumerate(inputs)]
        # a killed run left shard 1 done by threshold only: resumed, subset redone
        (fused / "02-subset" / RunStore.shard_path(Path(), 1)).unlink()
        again = job.shard(1, str(inputs[1]))
    finally:
        job.close()
    assert [[s.resumed for s in shard] for shard in first] == [[False, False]] * 3
    assert [s.resumed for s in again] == [True, False]
    assert [s.rows for s in again] == [8, first[1][1].rows]
    for stage in ("01-threshold", "02-subset"):
        for part in ("", "rejects/"):
            for a, b in zip(sorted((tmp_path / "separate" / stage).glob(part + "part-*")),
                            sorted((fused / stage).glob(part + "part-*")), strict=True):
                assert pq.read_table(a).equals(pq.read_table(b)), (stage, a.name)
    assert sorted(p.name for p in (fused / "02-subset/subset-audio_visual").iterdir()) == \
        sorted(p.name for p in (tmp_path / "separate/02-subset/subset-audio_visual").iterdir())
