"""Commands that make or run whole runs: run, ingest, status, demo."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from avcurate.catalogs import GLOB_RE
from avcurate.cli.common import (
    USER_ERRORS,
    Force,
    Quiet,
    RunDir,
    Yes,
    app,
    ask_before_removing,
    confirm_force,
    fail,
    guard,
    out,
    print_lines,
    print_notes,
    print_summary,
    print_warnings,
)
from avcurate.core.lock import RunInUse
from avcurate.core.store import RunStore
from avcurate.core.urls import URL_RE
from avcurate.pipeline.recipe import (
    ANNOTATIONS_DIR,
    Recipe,
    RecipeError,
    check_tags,
    source_specs,
)
from avcurate.pipeline.runner import Runner
from avcurate.reports.tables import reasons_table, stage_rows, summary_table

if TYPE_CHECKING:
    from avcurate.hub.options import ExportOptions


def parse_columns(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--column takes SAMPLE_COLUMN=FILE_COLUMN, got {pair!r}")
        k, v = pair.split("=", 1)
        mapping[k.strip()] = v.strip()
    return mapping


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML: sources + ordered stages.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create or resume.")],
    force: Force = False,
    yes: Yes = False,
    quiet: Quiet = False,
    executor: Annotated[str, typer.Option(help="local (default) or ray (consecutive stages "
                                               "fused into one pass per shard: Ray tasks for "
                                               "row-local chains, the run's actors for chains "
                                               "with a model stage).")] = "local",
    address: Annotated[str | None, typer.Option(help="With --executor ray: cluster address "
                                                     "(auto, ray://host:10001); default: start "
                                                     "a local Ray.")] = None,
    ray_actors: Annotated[int | None, typer.Option(help="With --executor ray: actors for the "
                                                        "model stages, started once per run "
                                                        "(default 2).")] = None,
    ray_cpus_per_task: Annotated[float | None, typer.Option(
        help="With --executor ray: CPUs per decoding task (default 1).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the recipe as a run would (options, files, keys, the run "
                          "folder) and print what each stage would do: done, resumed or run, "
                          "with the first model stage's calls and tokens; run nothing.")]
    = False,
) -> None:
    """Run a recipe into a run folder. Re-running resumes: finished shards are skipped."""
    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, not {executor!r}")
    ray_given = {"--address": address, "--ray-actors": ray_actors,
                 "--ray-cpus-per-task": ray_cpus_per_task}
    for flag, value in ray_given.items():
        if value is not None and executor != "ray":  # the run would go local, unasked
            fail(f"{flag} {value if isinstance(value, str) else f'{value:g}'} needs "
                 "--executor ray")
    ray_actors = 2 if ray_actors is None else ray_actors
    ray_cpus_per_task = 1.0 if ray_cpus_per_task is None else ray_cpus_per_task
    if ray_actors < 1 or not 0 < ray_cpus_per_task < float("inf"):
        fail("--ray-actors must be at least 1 and --ray-cpus-per-task above 0")
    rec = guard(Recipe.load, recipe)
    export_opts = _checked_export(rec, out_dir)
    if dry_run:
        _print_plan(rec, out_dir, force)
        return
    if executor == "ray":
        from avcurate.pipeline.ray_runner import RayRunner

        runner = _guarded(rec, RayRunner, rec, out_dir, force=force, show_progress=not quiet,
                       confirm_removal=confirm_force(yes), address=address, actors=ray_actors,
                       cpus_per_task=ray_cpus_per_task)
    else:
        runner = Runner(rec, out_dir, force=force, show_progress=not quiet,
                        confirm_removal=confirm_force(yes))
    _guarded(rec, runner.run)
    print_summary(out_dir, f"Run {out_dir}")
    if export_opts is not None:
        from avcurate.hub.export import export_run

        try:
            result = export_run(out_dir, rec.export["out"], export_opts)
        except (ValueError, TypeError, RunInUse) as exc:
            fail(rec.explain(f"[export]: {exc}"))
        out.print(f"exported to {result.out}: " + "; ".join(
            f"{c} " + ", ".join(f"{k} {v:,}" for k, v in s.items())
            for c, s in result.configs.items()), markup=False)
        print_notes(result.notes)
    out.print(f"Inspect it with: [bold]avcurate status {escape(shlex.quote(str(out_dir)))}[/]",
              soft_wrap=True)


def _guarded(rec: Recipe, fn, *args: Any, **kwargs: Any) -> Any:
    """`guard` for a recipe's run: the line also names the unset variables whose default
    it shows (a missing file at the recipe's default path is most often an `export`
    forgotten or misspelt)."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        fail(rec.explain(str(exc)))


def _checked_export(rec: Recipe, out_dir: Path) -> ExportOptions | None:
    """The recipe's [export] options, once they and its folder are checked: a bad option or a
    folder that cannot take the export (not empty and not an export, the run folder itself)
    stops the command before any row is read, not after the last stage."""
    if rec.export is None:
        return None
    from avcurate.hub.export import check_target
    from avcurate.hub.options import export_options

    try:
        opts = export_options(**{k: v for k, v in rec.export.items() if k != "out"})
    except (ValueError, TypeError) as exc:
        fail(rec.explain(f"[export]: {exc}"))
    _guarded(rec, check_target, out_dir, rec.export["out"], option="[export] out")
    return opts


def _print_plan(rec: Recipe, out_dir: Path, force: bool) -> None:
    """`run --dry-run`: the plan's table, then the first model stage's estimate."""
    from rich.table import Table
    from rich.text import Text  # paths and details as they are, never markup

    from avcurate.pipeline.plan import plan_run

    plan = _guarded(rec, plan_run, rec, out_dir, force=force)
    table = Table(title=Text(f"Plan for {out_dir}"), title_justify="left")
    for column in ("stage", "would be", "detail"):
        table.add_column(column)
    for stage in plan.stages:
        table.add_row(stage.folder, stage.state, Text(stage.detail))
    out.print(table)
    if plan.estimate is not None:
        out.print(plan.estimate, highlight=False, soft_wrap=True)
    if rec.export is not None:
        out.print(f"After the last stage: export to {rec.export['out']}", markup=False,
                  soft_wrap=True)
    out.print("Nothing was run (--dry-run).", markup=False)


@app.command()
def status(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts per stage (in = kept + rejected) and rejected rows grouped by reason."""
    rows = guard(stage_rows, RunStore(run_dir))
    if as_json:
        out.print_json(json.dumps({"run": str(run_dir), "stages": rows}))
        return
    out.print(summary_table(rows, f"Run {run_dir}"))
    if any(r["rejects_by_reason"] for r in rows):
        out.print(reasons_table(rows))
    print_warnings(RunStore(run_dir), rows)
    if any(r["balanced"] is False for r in rows):
        raise typer.Exit(1)


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="Annotation format; see `avcurate sources`.")],
    annotations: Annotated[Path, typer.Option(
        help="Annotation file (JSON, JSONL, Parquet or CSV), or a quoted glob of them "
             "('LLaVA-Video-178K/*/*_qa_processed.json'): one source per file.")],
    media_root: Annotated[Path, typer.Option(
        help="Folder the media paths are relative to; paths escaping it are rejected. "
             "{annotations_dir} is each annotation file's own folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    column: Annotated[list[str] | None, typer.Option(
        help="For jsonl/parquet/csv: SAMPLE_COLUMN=FILE_COLUMN, repeatable "
             "(id, video, audio, question, options, answer, duration_s); video/audio "
             "may be a path template such as video={videoID}.mp4; options=a0,a1,a2 reads "
             "one option per column.")] = None,
    explode: Annotated[str | None, typer.Option(
        help="For jsonl/parquet/csv: a field holding nested questions, or a key pattern "
             "such as 'task*'; one row per nested question.")] = None,
    answers: Annotated[str | None, typer.Option(
        help="For jsonl/parquet/csv: how answers name their option, for the whole file: "
             "index (position from 0), index1 (from 1) or text; default: an integer is an "
             "index from 0, text a letter or an option's text (a CSV of whole-number "
             "answers must say).")] = None,
    tag: Annotated[str | None, typer.Option(
        help="Names the file in sample ids (default: the file name without extension).")
    ] = None,
    strip_prefix: Annotated[str | None, typer.Option(
        help="The folder the file's authors wrote before each media path "
             "('/mnt/data/videos'): dropped, so the paths resolve under --media-root.")
    ] = None,
    follow_links: Annotated[bool, typer.Option(
        "--follow-links", help="Read media through links under --media-root that lead out of "
                               "it (yours, such as a farm of links to shared storage); "
                               "without it such a row is unsafe_path.")] = False,
    shard_size: Annotated[int, typer.Option(help="Rows per shard (the unit of resume).")] = 256,
    force: Force = False,
    yes: Yes = False,
    quiet: Quiet = False,
) -> None:
    """Normalise annotation files into the sample table (stage 00-ingest)."""
    if shard_size < 1:
        fail(f"--shard-size must be at least 1, not {shard_size}")
    options = ({"columns": parse_columns(column)} if column else {}) \
        | ({"explode": explode} if explode else {}) | ({"tag": tag} if tag else {}) \
        | ({"answers": answers} if answers else {}) \
        | ({"strip_prefix": strip_prefix} if strip_prefix is not None else {}) \
        | ({"follow_links": True} if follow_links else {})
    # paths resolved as before globs (symlinks too), so a run ingested by an earlier
    # version with the same arguments still matches its recorded recipe
    ann, root = str(annotations), str(media_root)
    ann = ann if GLOB_RE.search(ann) or URL_RE.match(ann) else str(annotations.resolve())
    root = root if ANNOTATIONS_DIR in root or URL_RE.match(root) else str(media_root.resolve())
    try:  # as a recipe's [[sources]] table is read: a glob, {annotations_dir}
        specs = source_specs({"name": source, "annotations": ann, "media_root": root}
                             | options, Path.cwd())
        check_tags(specs)
    except RecipeError as exc:
        fail(str(exc))
    rec = Recipe(specs, [], shard_size=shard_size)
    guard(Runner(rec, out_dir, force=force, show_progress=not quiet,
                 confirm_removal=confirm_force(yes)).run)
    print_summary(out_dir, f"Ingested into {out_dir}")
    out.print(f"Next: [bold]avcurate validate {escape(shlex.quote(str(out_dir)))}[/]",
              soft_wrap=True)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo data, its "
                                                              "run, report and export.")
                       ] = Path("demo_out"),
    backend: Annotated[str, typer.Option(help="openai (any OpenAI-compatible server) or "
                                              "gemini.")] = "openai",
    model: Annotated[str, typer.Option(help="Model for every model stage; default: the "
                                            "built-in demo model.")] = "",
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible server URL, e.g. "
                                               "http://localhost:8000/v1.")] = "",
    train: Annotated[bool, typer.Option(help="Also run a few GSPO steps of a tiny policy "
                                             "(needs torch: the train extra).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="If the folder holds a demo run made with other settings (another "
                        "--model) or moved from another folder, recompute from the first "
                        "stage that differs instead of stopping.")] = False,
    yes: Yes = False,
    quiet: Quiet = False,
) -> None:
    """Make ~40 real clips in three annotation formats and run every stage on them: validate,
    score, classify, threshold, probe, balance, subset, teachers, merge; then write the
    stats report and a Hub-layout export.

    With no --model, a built-in demo model answers on 127.0.0.1 (it looks at the colour of
    the frames and listens to the pitch of the tone; it is not a real judge). Re-running
    into the same folder resumes.
    """
    from avcurate.demo.tour import Endpoint, next_steps, run_tour

    endpoint = Endpoint(backend, model, base_url)
    try:
        endpoint.check()
        if train:
            _need_torch()
    except ValueError as exc:
        fail(str(exc))
    try:
        result = guard(run_tour, out_dir, endpoint, show_progress=not quiet, train=train,
                       force=force, confirm_removal=confirm_force(yes))
    except ValueError as exc:  # the export's or the trainer's refusal, as one line
        fail(str(exc))
    rows = stage_rows(RunStore(result.run_dir))
    out.print(summary_table(rows, f"Demo run {result.run_dir}"))
    out.print(reasons_table(rows))
    print_lines(next_steps(out_dir, result, endpoint))


def _need_torch() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ValueError("--train needs torch: pip install torch==2.13.0 (or 'avcurate[train]')")


@app.command()
def reset(
    run_dir: RunDir,
    from_stage: Annotated[str, typer.Option(
        "--from", help="The first stage to remove: its folder (03-balance), number (3) or name "
                       "(balance, when it occurs once).")],
    yes: Yes = False,
) -> None:
    """Remove a stage and every stage after it, so they can be run again.

    Only the stage folders and their manifest entries go; the response and media caches
    stay, so redoing a model stage re-sends nothing that was already answered.
    """
    from avcurate.pipeline.runner import reset_run, stage_index

    if not (store := RunStore(run_dir)).exists():
        fail(store.not_a_run())
    index = guard(stage_index, run_dir, from_stage)
    if index < 1:
        fail("ingest cannot be reset; start a new run folder instead")
    doomed = [p.name for p in RunStore(run_dir).stage_dirs(index)]
    if not doomed:
        fail(f"nothing to remove: {run_dir} has no stage {from_stage!r} or after it")
    ask_before_removing("removes: " + ", ".join(doomed), yes)
    removed = guard(reset_run, run_dir, index)
    out.print(f"removed {len(removed)} stage folder(s); caches kept. Run the stage command "
              "again to redo it.", markup=False)
