"""The `avcurate` command line. Thin: parse, build a recipe, run it, print."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console

from avcurate import __version__
from avcurate.catalogs import CATALOGS
from avcurate.pipeline.recipe import Recipe, RecipeError, SourceSpec, StageSpec
from avcurate.pipeline.report import (
    category_table,
    reasons_table,
    result_table,
    scores_table,
    sources_table,
    stage_rows,
    summary_table,
)
from avcurate.pipeline.runner import RunError, Runner, extend_run
from avcurate.pipeline.stage import StageError, available
from avcurate.pipeline.store import RunStore

app = typer.Typer(
    help="Curate audio-visual QA data for omni-modal RL: ingest, validate, score, balance, "
         "trace, export, train. Start with `avcurate demo --out demo_out`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(help="A run folder (made by `avcurate run` or `ingest`).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Force = Annotated[bool, typer.Option(
    "--force", help="If the run folder was made with a different recipe, recompute from the "
                    "first stage that differs instead of stopping.")]


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _print_summary(run_dir: Path, title: str) -> None:
    rows = stage_rows(RunStore(run_dir))
    out.print(summary_table(rows, title))
    if any(r["rejects_by_reason"] for r in rows):
        out.print(reasons_table(rows))


def _guard(fn, *args, **kwargs):
    """Turn the errors users can cause into one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (RunError, RecipeError, StageError, FileNotFoundError) as exc:
        fail(str(exc))


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML: sources + ordered stages.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create or resume.")],
    force: Force = False,
    quiet: Quiet = False,
    executor: Annotated[str, typer.Option(help="local (default) or ray (Ray Data: tasks for "
                                               "row-local stages, actor pools for model "
                                               "stages).")] = "local",
    address: Annotated[str | None, typer.Option(help="With --executor ray: cluster address "
                                                     "(auto, ray://host:10001); default: start "
                                                     "a local Ray.")] = None,
    ray_actors: Annotated[int, typer.Option(help="With --executor ray: actors per model "
                                                 "stage.")] = 2,
    ray_cpus_per_task: Annotated[float, typer.Option(help="With --executor ray: CPUs per "
                                                          "decoding task.")] = 1.0,
) -> None:
    """Run a recipe into a run folder. Re-running resumes: finished shards are skipped."""
    rec = _guard(Recipe.load, recipe)
    if executor == "ray":
        from avcurate.pipeline.ray_runner import RayRunner

        runner = _guard(RayRunner, rec, out_dir, force=force, show_progress=not quiet,
                        address=address, actors=ray_actors, cpus_per_task=ray_cpus_per_task)
    elif executor == "local":
        runner = Runner(rec, out_dir, force=force, show_progress=not quiet)
    else:
        fail(f"--executor must be local or ray, not {executor!r}")
    _guard(runner.run)
    _print_summary(out_dir, f"Run {out_dir}")
    if rec.export is not None:
        from avcurate.hub.export import export_run

        opts = {k: v for k, v in rec.export.items() if k != "out"}
        try:
            result = export_run(out_dir, rec.export["out"], **opts)
        except (ValueError, TypeError) as exc:
            fail(f"[export]: {exc}")
        out.print(f"exported to {result.out}: " + "; ".join(
            f"{c} " + ", ".join(f"{k} {v:,}" for k, v in s.items())
            for c, s in result.configs.items()))
    out.print(f"Inspect it with: [bold]avcurate status {out_dir}[/]")


@app.command()
def status(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Counts per stage (in = kept + rejected) and rejected rows grouped by reason."""
    store = RunStore(run_dir)
    rows = _guard(stage_rows, store)
    if as_json:
        out.print_json(json.dumps({"run": str(run_dir), "stages": rows}))
        return
    out.print(summary_table(rows, f"Run {run_dir}"))
    if any(r["rejects_by_reason"] for r in rows):
        out.print(reasons_table(rows))
    if any(r["balanced"] is False for r in rows):
        raise typer.Exit(1)


def _parse_columns(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--column takes SAMPLE_COLUMN=FILE_COLUMN, got {pair!r}")
        k, v = pair.split("=", 1)
        mapping[k.strip()] = v.strip()
    return mapping


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="Annotation format; see `avcurate sources`.")],
    annotations: Annotated[Path, typer.Option(help="Annotation file (JSON, JSONL or Parquet).")],
    media_root: Annotated[Path, typer.Option(help="Folder the media paths are relative to; "
                                                  "paths escaping it are rejected.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    column: Annotated[list[str] | None, typer.Option(
        help="For jsonl/parquet: SAMPLE_COLUMN=FILE_COLUMN, repeatable "
             "(id, video, audio, question, options, answer, duration_s).")] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard (the unit of resume).")] = 256,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Normalise one annotation file into the sample table (stage 00-ingest)."""
    if source not in CATALOGS:
        fail(f"unknown source {source!r}; available: {', '.join(CATALOGS)}")
    options = {"columns": _parse_columns(column)} if column else {}
    spec = SourceSpec(source, str(annotations.resolve()), str(media_root.resolve()), options)
    rec = Recipe([spec], [], shard_size=shard_size)
    _guard(Runner(rec, out_dir, force=force, show_progress=not quiet).run)
    _print_summary(out_dir, f"Ingested into {out_dir}")
    out.print(f"Next: [bold]avcurate validate {out_dir}[/]")


@app.command()
def validate(
    run_dir: RunDir,
    silence_db: Annotated[float, typer.Option(help="RMS level (dBFS) below which audio "
                                                   "counts as silent.")] = -60.0,
    min_duration: Annotated[float, typer.Option(help="Shortest allowed clip, seconds.")] = 1.0,
    max_duration: Annotated[float, typer.Option(help="Longest allowed clip, seconds "
                                                     "(0 = no limit).")] = 0.0,
    require_audio: Annotated[bool, typer.Option(help="Reject samples without an audio "
                                                     "track.")] = True,
    workers: Annotated[int | None, typer.Option(help="Processes for probing media.")] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Structural checks: missing/corrupt/truncated media, no or silent audio, bad annotations."""
    spec = StageSpec("validate", {"silence_db": silence_db, "min_duration_s": min_duration,
                                  "max_duration_s": max_duration, "require_audio": require_audio})
    _run_more(run_dir, spec, workers, force, quiet)


def _run_more(run_dir: Path, spec: StageSpec, workers: int | None, force: bool,
              quiet: bool) -> None:
    if not RunStore(run_dir).exists():
        fail(f"{run_dir} is not a run folder; make one with `avcurate ingest` or `avcurate run`")
    if workers is not None:
        _set_workers(run_dir, workers)
    _guard(extend_run, run_dir, spec, force=force, show_progress=not quiet)
    _print_summary(run_dir, f"Run {run_dir}")


def _set_workers(run_dir: Path, workers: int) -> None:
    store = RunStore(run_dir)
    manifest = store.load_manifest()
    manifest["recipe"].setdefault("run", {})["workers"] = workers
    store.save_manifest(manifest)


def _model_options(backend, model, base_url, concurrency, rpm, timeout, max_attempts,
                   no_cache) -> dict:
    return {"backend": backend, "model": model, "base_url": base_url or "",
            "concurrency": concurrency, "rpm": rpm, "timeout": timeout,
            "max_attempts": max_attempts, "cache": not no_cache}


Backend = Annotated[str, typer.Option(help="openai (any OpenAI-compatible server, e.g. `vllm "
                                            "serve`), gemini, transformers (local folder), vllm.")]
Model = Annotated[str, typer.Option(help="Model name (or local folder for transformers).")]
BaseUrl = Annotated[str | None, typer.Option(help="Server URL, e.g. http://localhost:8000/v1.")]
Concurrency = Annotated[int, typer.Option(help="Requests in flight at once.")]
Rpm = Annotated[float, typer.Option(help="At most this many requests per minute (0 = no limit).")]
Timeout = Annotated[float, typer.Option(help="Seconds before a request times out.")]
Attempts = Annotated[int, typer.Option(help="Tries per request (errors and bad answers).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Ignore and do not fill the response "
                                                          "cache.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the number of calls, an input "
                                                        "token estimate and an example request; "
                                                        "call nothing.")]


def _model_stage(run_dir: Path | None, spec: StageSpec, dry: bool, force: bool, quiet: bool,
                 ingest: dict | None) -> None:
    if ingest is not None:
        if run_dir is not None:
            fail("give either RUN_DIR or --source/--annotations/--media-root/--out, not both")
        missing = [k for k in ("annotations", "media_root", "out") if not ingest.get(k)]
        if missing:
            fail(f"--source needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
        columns = {"columns": _parse_columns(ingest["column"])} if ingest["column"] else {}
        src = SourceSpec(ingest["source"], str(Path(ingest["annotations"]).resolve()),
                         str(Path(ingest["media_root"]).resolve()), columns)
        run_dir = ingest["out"]
        _guard(Runner(Recipe([src], [StageSpec("validate")]), run_dir, force=force,
                      show_progress=not quiet).run)
    if run_dir is None:
        fail("give a RUN_DIR, or --source/--annotations/--media-root/--out to start one")
    if dry:
        from avcurate.curation.dry_run import dry_run

        out.print(_guard(dry_run, run_dir, spec), highlight=False, soft_wrap=True)
        return
    _run_more(run_dir, spec, None, force, quiet)
    entry = RunStore(run_dir).load_manifest()["stages"][-1]
    usage = entry.get("usage", {})
    out.print(f"{spec.name}: {usage.get('calls', 0)} calls, {usage.get('cached', 0)} cached, "
              f"{usage.get('retries', 0)} retries, {usage.get('prompt_tokens', 0):,} prompt + "
              f"{usage.get('completion_tokens', 0):,} completion tokens")


IngestSource = Annotated[str | None, typer.Option("--source", help="Start a run: annotation "
                                                                   "format (see `sources`).")]
IngestPath = Annotated[Path | None, typer.Option(help="With --source: the annotation file.")]
IngestMedia = Annotated[Path | None, typer.Option(help="With --source: the media root.")]
IngestOut = Annotated[Path | None, typer.Option("--out", "-o", help="With --source: the run "
                                                                    "folder to create.")]
IngestColumn = Annotated[list[str] | None, typer.Option(help="With jsonl/parquet: "
                                                             "SAMPLE_COLUMN=FILE_COLUMN.")]


@app.command()
def score(
    run_dir: Annotated[Path | None, typer.Argument(help="An existing run to score.")] = None,
    source: IngestSource = None, annotations: IngestPath = None, media_root: IngestMedia = None,
    out_dir: IngestOut = None, column: IngestColumn = None,
    backend: Backend = "openai", model: Model = "", base_url: BaseUrl = None,
    concurrency: Concurrency = 16, rpm: Rpm = 0.0, timeout: Timeout = 120.0,
    max_attempts: Attempts = 4, no_cache: NoCache = False,
    prompt: Annotated[Path | None, typer.Option(help="Rubric prompt file (default: the "
                                                     "packaged one).")] = None,
    media: Annotated[str, typer.Option(help="What the judge sees: frames+audio, video or "
                                            "none.")] = "frames+audio",
    frames: Annotated[int, typer.Option(help="Evenly spaced frames (frames+audio).")] = 8,
    audio_seconds: Annotated[float, typer.Option(help="Seconds of audio (frames+audio).")] = 30.0,
    weights: Annotated[str, typer.Option(help="Composite weights for video, audio, logic, "
                                              "accuracy.")] = "0.25,0.25,0.25,0.25",
    dry_run: DryRun = False, force: Force = False, quiet: Quiet = False,
) -> None:
    """Score samples on 4 dimensions with a multimodal judge (OmniVideo-R1 used Gemini-2.5-Pro).

    Either score an existing RUN_DIR, or give --source/--annotations/--media-root/--out to
    ingest + validate + score in one go.
    """
    try:
        w = [float(x) for x in weights.split(",")]
    except ValueError:
        fail(f"--weights takes four comma-separated numbers, got {weights!r}")
    options = _model_options(backend, model, base_url, concurrency, rpm, timeout, max_attempts,
                             no_cache) | {"prompt": str(prompt) if prompt else "", "media": media,
                                          "frames": frames, "audio_seconds": audio_seconds,
                                          "weights": w}
    ingest = None if source is None else {"source": source, "annotations": annotations,
                                          "media_root": media_root, "out": out_dir,
                                          "column": column}
    _model_stage(run_dir, StageSpec("score", options), dry_run, force, quiet, ingest)


@app.command()
def classify(
    run_dir: RunDir,
    backend: Backend = "openai", model: Model = "", base_url: BaseUrl = None,
    concurrency: Concurrency = 16, rpm: Rpm = 0.0, timeout: Timeout = 120.0,
    max_attempts: Attempts = 4, no_cache: NoCache = False,
    taxonomy: Annotated[Path | None, typer.Option(help="Taxonomy TOML ([[category]] name, "
                                                       "definition); default: 16 categories.")]
    = None,
    prompt: Annotated[Path | None, typer.Option(help="Prompt file (default: packaged).")] = None,
    dry_run: DryRun = False, force: Force = False, quiet: Quiet = False,
) -> None:
    """Sort questions into the taxonomy with a text LLM (OmniVideo-R1 used Qwen3-32B)."""
    options = _model_options(backend, model, base_url, concurrency, rpm, timeout, max_attempts,
                             no_cache) | {"taxonomy": str(taxonomy) if taxonomy else "",
                                          "prompt": str(prompt) if prompt else ""}
    _model_stage(run_dir, StageSpec("classify", options), dry_run, force, quiet, None)


@app.command()
def teach(
    run_dir: RunDir,
    visual_backend: Backend = "openai", visual_model: Model = "",
    visual_base_url: BaseUrl = None,
    visual_concurrency: Concurrency = 16,
    audio_backend: Backend = "openai", audio_model: Model = "", audio_base_url: BaseUrl = None,
    audio_concurrency: Concurrency = 16,
    frames: Annotated[int, typer.Option(help="Evenly spaced frames for the visual teacher.")] = 8,
    audio_seconds: Annotated[float, typer.Option(help="Seconds of audio for the audio "
                                                      "teacher.")] = 10.0,
    require: Annotated[str, typer.Option(help="Keep rows where both teachers (AVRT), either, or "
                                              "any (keep all) answered correctly.")] = "both",
    timeout: Timeout = 120.0, max_attempts: Attempts = 4, no_cache: NoCache = False,
    visual_prompt: Annotated[Path | None, typer.Option(help="Visual teacher prompt file.")] = None,
    audio_prompt: Annotated[Path | None, typer.Option(help="Audio teacher prompt file.")] = None,
    force: Force = False, quiet: Quiet = False,
) -> None:
    """AVRT's single-modality teachers: a vision model on frames, an audio model on the clip.

    AVRT used Kimi-VL-Thinking (vision) and Audio Flamingo 3 think (audio), e.g. each served
    by `vllm serve` and reached with --*-backend openai --*-base-url http://HOST:PORT/v1.
    """
    visual = _model_options(visual_backend, visual_model, visual_base_url, visual_concurrency, 0,
                            timeout, max_attempts, no_cache) | {
        "frames": frames, "prompt": str(visual_prompt) if visual_prompt else ""}
    audio = _model_options(audio_backend, audio_model, audio_base_url, audio_concurrency, 0,
                           timeout, max_attempts, no_cache) | {
        "audio_seconds": audio_seconds, "prompt": str(audio_prompt) if audio_prompt else ""}
    specs = [StageSpec("visual_teacher", visual), StageSpec("audio_teacher", audio),
             StageSpec("teacher_filter", {"require": require})]
    if not RunStore(run_dir).exists():
        fail(f"{run_dir} is not a run folder; make one with `avcurate ingest` or `avcurate run`")
    _guard(extend_run, run_dir, specs, force=force, show_progress=not quiet)
    _print_summary(run_dir, f"Run {run_dir}")


@app.command(name="merge-traces")
def merge_traces(
    run_dir: RunDir,
    backend: Backend = "openai", model: Model = "", base_url: BaseUrl = None,
    concurrency: Concurrency = 16, rpm: Rpm = 0.0, timeout: Timeout = 120.0,
    max_attempts: Annotated[int, typer.Option(help="Rounds per trace: a failing trace is sent "
                                                   "back with the failed check.")] = 3,
    min_tokens: Annotated[int, typer.Option(help="Shortest allowed reasoning, tokens.")] = 30,
    max_tokens: Annotated[int, typer.Option(help="Longest allowed reasoning, tokens.")] = 600,
    no_cache: NoCache = False,
    prompt: Annotated[Path | None, typer.Option(help="Merger prompt file.")] = None,
    dry_run: DryRun = False, force: Force = False, quiet: Quiet = False,
) -> None:
    """Merge the teachers' reasoning into <think>…</think><answer>X</answer> traces (AVRT used
    Qwen2.5-14B-Instruct), check every trace, and print the trace report."""
    from avcurate.merger.report import format_report, trace_report

    options = _model_options(backend, model, base_url, concurrency, rpm, timeout, max_attempts,
                             no_cache) | {"min_tokens": min_tokens, "max_tokens_trace": max_tokens,
                                          "prompt": str(prompt) if prompt else ""}
    _model_stage(run_dir, StageSpec("merge", options), dry_run, force, quiet, None)
    if not dry_run and (report := trace_report(run_dir)) is not None:
        out.print(format_report(report))


@app.command()
def threshold(
    run_dir: RunDir,
    rule: Annotated[list[str] | None, typer.Option(
        help="A rule 'column op number [and ...]', repeatable. Default (OmniVideo-R1, scores "
             "in [0, 1]): 'answer_accuracy == 1', 'question_logic >= 0.8', "
             "'composite_score >= 0.7'.")] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Keep rows passing every rule; rejects name the first rule a row failed."""
    options = {"rules": rule} if rule else {}
    _run_more(run_dir, StageSpec("threshold", options), None, force, quiet)


@app.command()
def balance(
    run_dir: RunDir,
    max_ratio: Annotated[float, typer.Option(help="Largest category at most this times the "
                                                  "second largest.")] = 3.0,
    min_count: Annotated[int, typer.Option(help="Drop categories with fewer rows "
                                                "(long tail).")] = 10,
    cascade: Annotated[bool, typer.Option(help="Cap every category at max-ratio times the "
                                               "next one down.")] = False,
    max_per_category: Annotated[int, typer.Option(help="Cap every category (0 = no cap).")] = 0,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Prune long-tail categories and cap the largest; prints the category table before/after."""
    spec = StageSpec("balance", {"min_count": min_count, "max_ratio": max_ratio,
                                 "cascade": cascade, "max_per_category": max_per_category})
    _run_more(run_dir, spec, None, force, quiet)
    entry = RunStore(run_dir).load_manifest()["stages"][-1]
    out.print(category_table(entry["categories_before"], entry["categories_after"]))


@app.command()
def subset(
    run_dir: RunDir,
    name: Annotated[str, typer.Option(help="Subset name (a separate split of the run).")] =
    "audio_visual",
    rule: Annotated[list[str] | None, typer.Option(
        help="Rules rows of the subset pass (default 'video_dependency >= 0.7 and "
             "audio_dependency >= 0.7').")] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Mark a named subset (default: the audio-visual one) without rejecting anything."""
    options = {"subset": name} | ({"rules": rule} if rule else {})
    _run_more(run_dir, StageSpec("subset", options), None, force, quiet)


@app.command()
def dedup(run_dir: RunDir, force: Force = False, quiet: Quiet = False) -> None:
    """Reject exact duplicates (same media, normalised question and options)."""
    _run_more(run_dir, StageSpec("dedup"), None, force, quiet)


@app.command()
def stats(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report "
                                                   "with charts.")] = None,
) -> None:
    """Funnel, reject reasons, categories before/after balancing, score quantiles, sources."""
    from avcurate.reports import html as html_report
    from avcurate.reports.stats import collect

    data = _guard(collect, run_dir)
    if html is not None:
        html.write_text(html_report.render(data), encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(data, default=str))
        return
    out.print(summary_table(data["stages"], f"Run {run_dir}"))
    if any(r["rejects_by_reason"] for r in data["stages"]):
        out.print(reasons_table(data["stages"]))
    cats = data["categories"]
    if "before" in cats:
        out.print(category_table(cats["before"], cats["after"]))
    elif cats:
        out.print(category_table(cats["samples"], None))
    if data["scores"]:
        out.print(scores_table(data["scores"]))
    out.print(sources_table(data["sources"]))
    if data.get("traces"):
        from avcurate.merger.report import format_report

        out.print(format_report(data["traces"]))
    if html is not None:
        out.print(f"HTML report written to {html}")


@app.command()
def query(
    run_dir: RunDir,
    sql: Annotated[str, typer.Argument(help="SQL over the views: samples (newest stage's kept "
                                            "rows), rejects, one per stage, subset_<name>.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the result to .csv or "
                                                                ".parquet instead.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
) -> None:
    """DuckDB SQL over a run, e.g. "SELECT category, count(*) FROM samples GROUP BY 1"."""
    from avcurate.reports.query import connect, export, views

    con = _guard(connect, run_dir)
    try:
        if out_file is not None:
            n = export(con, sql, out_file)
            out.print(f"{n:,} rows written to {out_file}")
            return
        result = con.sql(sql)
    except (duckdb.Error, ValueError) as exc:
        fail(f"{exc}\nviews: {', '.join(views(con))}")
    if result is None:
        return
    out.print(result_table(result.columns, result.limit(limit).fetchall()))
    total = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
    if total > limit:
        out.print(f"[dim]{limit} of {total:,} rows shown (--limit, or --out FILE for all)[/]")


@app.command()
def export(
    run_dir: RunDir,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Hub-layout "
                                                              "dataset.")],
    val_fraction: Annotated[float, typer.Option(help="Share of rows in the validation split "
                                                     "(by id hash, per category).")] = 0.05,
    shard_mb: Annotated[int, typer.Option(help="Largest Parquet shard, MB.")] = 500,
    copy_media: Annotated[bool, typer.Option(help="Copy media under videos/ and audios/.")]
    = False,
    hardlink: Annotated[bool, typer.Option(help="With --copy-media: hard-link instead of "
                                                "copying where possible.")] = False,
    all_columns: Annotated[bool, typer.Option(help="Export every column, not just the "
                                                   "training ones.")] = False,
    license: Annotated[str, typer.Option(help="License id for the card (e.g. cc-by-4.0).")]
    = "other",
    push_to_hub: Annotated[bool, typer.Option("--push", help="Upload to the Hub (token from "
                                                             "HF_TOKEN).")] = False,
    repo_id: Annotated[str | None, typer.Option(help="With --push: ORG/NAME.")] = None,
    private: Annotated[bool, typer.Option(help="With --push: create a private repo.")] = False,
) -> None:
    """Write the run's final rows as a Hugging Face dataset (data/*.parquet + README card)."""
    from avcurate.hub.export import export_run
    from avcurate.hub.push import PushError, push

    if push_to_hub and not repo_id:
        fail("--push needs --repo-id ORG/NAME")
    copy = ("hardlink" if hardlink else "copy") if copy_media else None
    try:
        result = export_run(run_dir, out_dir, val_fraction=val_fraction,
                            max_shard_bytes=shard_mb * 1024**2, copy_media=copy,
                            all_columns=all_columns, license=license)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for config, splits in result.configs.items():
        out.print(f"config [bold]{config}[/]: " + ", ".join(f"{k} {v:,}" for k, v in splits.items()))
    out.print(f"exported to {result.out} ({len(result.columns)} columns"
              + (f", {result.media_copied} media files" if copy else "") + ")")
    out.print(f"load it with: datasets.load_dataset({str(result.out)!r})")
    if push_to_hub:
        try:
            url = push(result.out, repo_id, private=private)
        except PushError as exc:
            fail(str(exc))
        out.print(f"pushed to {url}")


@app.command()
def train(
    data: Annotated[str | None, typer.Option(help="An avcurate export folder (or Parquet with "
                                                  "question/options/answer).")] = None,
    model: Annotated[str | None, typer.Option(help="Local model folder (the policy).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML with any of the options below "
                                                     "(a [train] table or top-level keys).")]
    = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Checkpoints, metrics.jsonl and "
                                                              "the final model.")] = None,
    algo: Annotated[str | None, typer.Option(help="gspo (default), gspo_token or grpo.")] = None,
    policy: Annotated[str | None, typer.Option(help="text (causal LM, default) or omni "
                                                    "(Qwen2.5-Omni thinker: frames + audio).")]
    = None,
    rewards: Annotated[str | None, typer.Option(help="Comma-separated reward names, e.g. "
                                                     "format,accuracy (or module:function).")]
    = None,
    reward_weights: Annotated[str | None, typer.Option(help="Comma-separated weights.")] = None,
    num_generations: Annotated[int | None, typer.Option(help="Completions per prompt (G).")]
    = None,
    prompts_per_step: Annotated[int | None, typer.Option(help="Prompts per generation step.")]
    = None,
    steps: Annotated[int | None, typer.Option(help="Generation steps.")] = None,
    steps_per_generation: Annotated[int | None, typer.Option(
        help="Optimizer steps (minibatches) per generation; GSPO's clipping only acts when > 1.")]
    = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")]
    = None,
    lr: Annotated[float | None, typer.Option(help="AdamW learning rate (5% warmup, then "
                                                  "cosine).")] = None,
    beta: Annotated[float | None, typer.Option(help="KL weight to the reference model "
                                                    "(OmniVideo-R1: 0.03).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest completion.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
) -> None:
    """Train a policy with GSPO/GRPO on an export. Multi-GPU: torchrun -m avcurate.trainer."""
    from avcurate.trainer.config import TrainConfig
    from avcurate.trainer.loop import train as run_training

    overrides = {
        "data": data, "model": model, "out": out_dir, "algo": algo, "policy": policy,
        "rewards": [x.strip() for x in rewards.split(",")] if rewards else None,
        "reward_weights": [float(x) for x in reward_weights.split(",")] if reward_weights
        else None,
        "num_generations": num_generations, "prompts_per_step": prompts_per_step,
        "steps": steps, "steps_per_generation": steps_per_generation, "grad_accum": grad_accum,
        "lr": lr, "beta": beta, "max_new_tokens": max_new_tokens, "temperature": temperature,
        "save_every": save_every, "seed": seed}
    try:
        cfg = TrainConfig.load(config or "", **overrides)
        history = run_training(cfg)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if history:
        last = history[-1]
        out.print(f"trained to step {last['step']}: reward mean {last['reward_mean']:.3f}, "
                  f"{last['tokens_per_s']:.0f} tokens/s; model in {Path(cfg.out) / 'final'}")


@app.command()
def sources() -> None:
    """List the annotation formats avcurate can ingest."""
    for c in CATALOGS.values():
        out.print(f"[bold]{c.name:<12}[/] {c.description}")


@app.command()
def stages() -> None:
    """List the stages a recipe can use (built-in and plugins)."""
    for name, cls in sorted(available().items()):
        doc = (getattr(cls, "__doc__", None) or "").strip().splitlines()
        origin = "" if isinstance(cls, type) else f"  [dim](plugin {cls.value})[/]"
        out.print(f"[bold]{name:<12}[/] {doc[0] if doc and isinstance(cls, type) else ''}{origin}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo data and "
                                                              "its run.")] = Path("demo_out"),
    quiet: Quiet = False,
) -> None:
    """Make a small synthetic dataset with real media, ingest and validate it, and explain."""
    from avcurate.demo import make_demo, next_steps

    recipe_path = make_demo(out_dir)
    run_dir = out_dir / "run"
    rec = _guard(Recipe.load, recipe_path)
    _guard(Runner(rec, run_dir, show_progress=not quiet).run)
    rows = stage_rows(RunStore(run_dir))
    out.print(summary_table(rows, f"Demo run {run_dir}"))
    out.print(reasons_table(rows))
    out.print(next_steps(out_dir, run_dir))


@app.command(name="version")
def version_cmd() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    try:
        app()
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - surfaced by Recipe.load
        err.print(f"error: {exc}")
        sys.exit(2)
