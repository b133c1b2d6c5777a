"""`avcurate run RECIPE --out RUN --dry-run`: what running the recipe in that folder would do,
checked as a real run checks it, with nothing run.

The same checks as a run, in the same order (options, inputs of each stage, annotation files,
keys and libraries of the stages with work left, the server of the stage that would start,
a recipe that differs from the run's), so a plan that prints is a run that starts. Then each
stage's state in the folder, and for the first stage left to run, when it calls a model and
its input is there, the stage's own estimate (`pipeline/dry_run.py`: calls, cached answers,
input tokens, an example request).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from avcurate.core.store import FINGERPRINT, RunStore
from avcurate.pipeline.dry_run import dry_run
from avcurate.pipeline.recipe import Recipe
from avcurate.pipeline.runner import Runner, done_entries
from avcurate.stages.model_stage import ModelStage


@dataclass
class PlannedStage:
    folder: str
    state: str  # done / resumes / runs / recomputed / removed
    detail: str = ""  # kept rows, finished shards, the model it calls


@dataclass
class Plan:
    stages: list[PlannedStage]
    estimate: str | None  # the first stage left to run, when it calls a model


def plan_run(recipe: Recipe, run_dir: Path | str, *, force: bool = False) -> Plan:
    """The plan, or the RunError / StageError a real run would stop with."""
    runner = Runner(recipe, run_dir, force=force, show_progress=False)
    stages, planned = runner.preflight()
    store = runner.store
    manifest = store.load_manifest() if store.exists() else {"stages": []}
    done = done_entries(manifest)
    kept = runner.kept_prefix(manifest, planned) if done else 0
    out: list[PlannedStage] = []
    for index, entry in enumerate(planned):
        folder = store.stage_dir(index, entry["name"]).name
        stage = stages[index - 1][0] if index else None
        model = f"{stage.backend}:{stage.model}" if isinstance(stage, ModelStage) else ""
        if index < kept:
            out.append(PlannedStage(folder, "done", f"kept {done[index]['kept']:,}"))
        elif index < len(done):
            out.append(PlannedStage(folder, "recomputed (--force)", model))
        else:
            out.append(PlannedStage(folder, *_unfinished(store, folder, entry["fingerprint"],
                                                         model)))
    if kept < min(len(done), len(planned)):  # --force: what the recipe does not make again
        out += [PlannedStage(e["dir"], "removed (--force)") for e in done[len(planned):]]
    first = kept if kept == len(done) and 0 < kept < len(planned) else None
    estimate = None
    if first is not None and isinstance(stages[first - 1][0], ModelStage):
        estimate = dry_run(store.root, recipe.stages[first - 1])
    return Plan(out, estimate)


def _unfinished(store: RunStore, folder: str, fp: str, model: str) -> tuple[str, str]:
    """A stage not done yet: it resumes the shards a stopped run of the same settings left,
    or runs from the start."""
    path = store.root / folder
    marker = path / FINGERPRINT
    finished = len(store.shards(path)) if marker.is_file() and marker.read_text() == fp else 0
    if finished:
        return "resumes", f"{finished:,} shard(s) already written" + (f"; {model}" if model else "")
    return "runs", model
