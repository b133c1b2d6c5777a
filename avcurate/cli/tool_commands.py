"""Commands that look at, export or list things: stats, query, export, sources, stages, version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from avcurate import __version__
from avcurate.catalogs import CATALOGS
from avcurate.cli.common import RunDir, app, damage_in_runs, err, fail, guard, out, print_notes
from avcurate.core.outputs import OutputError, check_output, write_output
from avcurate.pipeline.registry import available
from avcurate.reports.tables import (
    agreement_tables,
    category_table,
    probe_table,
    reasons_table,
    result_table,
    scores_table,
    sources_table,
    summary_table,
)


@app.command()
def stats(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report "
                                                   "with charts.")] = None,
) -> None:
    """Funnel, reject reasons, categories before/after balancing, score quantiles, sources,
    what the probe measured, what decontamination caught, and the latest judge agreement
    audit."""
    from avcurate.reports import html as html_report
    from avcurate.reports.stats import collect

    if html is not None:
        guard(check_output, html, "--html", generator=html_report.GENERATOR)
    data = guard(collect, run_dir)
    if html is not None:
        guard(write_output, html, html_report.render(data).encode("utf-8"))
    if as_json:
        out.print_json(json.dumps(data, default=str))
        return
    if data["notice"]:
        out.print(f"[bold yellow]Demo model:[/] {data['notice']}")
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
    if data.get("probe", {}).get("rows"):
        out.print(probe_table(data["probe"]))
    if data.get("decontamination"):
        from avcurate.reports.decontam import decontam_table

        out.print(decontam_table(data["decontamination"]))
    for table in agreement_tables(data.get("audit") or {}):
        out.print(table)
    if data.get("traces"):
        from avcurate.reports.traces import format_report

        out.print(format_report(data["traces"]))
    if html is not None:
        out.print(f"HTML report written to {html}", markup=False, soft_wrap=True)


@app.command()
def query(
    run_dir: RunDir,
    sql: Annotated[str, typer.Argument(help="SQL over the views: samples (newest stage's kept "
                                            "rows), rejects, one per stage, subset_<name>.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the result to .csv or "
                                                                ".parquet instead; '-': every "
                                                                "row as CSV on stdout.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
    overwrite: Annotated[bool, typer.Option(help="Replace the --out file if it exists.")]
    = False,
) -> None:
    """Read-only DuckDB SQL over a run, e.g. "SELECT category, count(*) FROM samples GROUP BY 1".

    One SELECT statement; only the run folder's files can be read.
    """
    import duckdb

    from avcurate.reports.query import (
        STDOUT,
        QueryError,
        check_export,
        connect,
        export,
        select,
        views,
    )

    con = guard(connect, run_dir)
    if limit < 0:
        fail(f"--limit must be at least 0, not {limit}")
    if out_file is not None:
        try:
            check_export(out_file, overwrite)
        except (QueryError, OutputError) as exc:
            fail(str(exc))
    try:
        rel = select(con, sql)
        if out_file is not None:
            n = guard(export, rel, out_file)
            where = "stdout" if out_file == STDOUT else out_file
            (err if out_file == STDOUT else out).print(  # a path kept whole, to copy
                f"{n:,} row{'' if n == 1 else 's'} written to {where}", markup=False,
                soft_wrap=True)
            return
        rows = rel.limit(limit).fetchall()
        [(total,)] = rel.aggregate("count(*)").fetchall()
    except duckdb.PermissionException:
        fail("queries may read only the run's own files (the views: "
             f"{', '.join(views(con))})")
    except (duckdb.Error, QueryError) as exc:
        names = views(con)
        fail(f"{_duckdb_message(exc, names)} (views: {', '.join(names)})")
    out.print(result_table(rel.columns, rows, out.width))
    if total > limit:
        out.print(f"[dim]{limit} of {total:,} rows shown (--limit, or --out FILE for all)[/]")


@app.command()
def export(
    run_dir: RunDir,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Hub-layout "
                                                              "dataset.")],
    val_fraction: Annotated[float, typer.Option(help="Share of rows in the validation split "
                                                     "(by hash, per category).")] = 0.05,
    split_by: Annotated[str, typer.Option(help="video: every question about a clip on the "
                                               "same side, so no clip is in both splits "
                                               "(the split is then about --val-fraction); "
                                               "id: each row by itself (exactly "
                                               "--val-fraction).")] = "video",
    shard_mb: Annotated[int, typer.Option(help="Largest Parquet shard, MB.")] = 500,
    copy_media: Annotated[bool, typer.Option(help="Copy media under videos/ and audios/.")]
    = False,
    hardlink: Annotated[bool, typer.Option(help="With --copy-media: hard-link instead of "
                                                "copying where possible.")] = False,
    media_features: Annotated[bool, typer.Option(help="Type video/audio as datasets.Video() / "
                                                      "Audio() columns (decoding them needs "
                                                      "torchcodec).")] = False,
    all_columns: Annotated[bool, typer.Option(help="Export every column, not just the "
                                                   "training ones.")] = False,
    license: Annotated[str, typer.Option(help="Hub license id for the card (cc-by-4.0, "
                                              "apache-2.0, ...; 'other' with --license-name "
                                              "and --license-link).")] = "unknown",
    license_name: Annotated[str | None, typer.Option(help="With --license other: a short "
                                                          "slug naming the terms.")] = None,
    license_link: Annotated[str | None, typer.Option(help="With --license other: URL of the "
                                                          "terms.")] = None,
    pretty_name: Annotated[str | None, typer.Option(help="Dataset name on the card (default: "
                                                         "the run folder's name).")] = None,
    language: Annotated[str, typer.Option(help="Language codes of the questions, "
                                               "comma-separated.")] = "en",
    push_to_hub: Annotated[bool, typer.Option("--push", help="Upload to the Hub (token from "
                                                             "HF_TOKEN or `hf auth login`).")]
    = False,
    repo_id: Annotated[str | None, typer.Option(help="ORG/NAME on the Hub: where --push uploads, "
                                                         "and the name the card's load "
                                                         "example uses.")] = None,
    private: Annotated[bool, typer.Option(help="With --push: create a private repo.")] = False,
    revision: Annotated[str | None, typer.Option(help="With --push: branch to push to "
                                                      "(created if missing).")] = None,
    create_pr: Annotated[bool, typer.Option(help="With --push: open a pull request instead "
                                                 "of committing to the branch.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Write into a non-empty folder that is not a "
                                                 "previous avcurate export (its other files are "
                                                 "left alone).")] = False,
) -> None:
    """Write the run's final rows as a Hugging Face dataset (data/*.parquet + README card).

    The export owns only the files it wrote (listed in OUT/.avcurate-export.json): a
    re-export replaces them and removes those no longer part of it, nothing else. The card
    declares configs, features, license and size; --push uploads it (large exports the
    resumable way: re-run the same command to finish an interrupted push).
    """
    from avcurate.core.lock import RunInUse, run_lock
    from avcurate.hub.export import export_run
    from avcurate.hub.options import export_options
    from avcurate.hub.push import PushError, check_push, push

    if push_to_hub and not repo_id:
        fail("--push needs --repo-id ORG/NAME")
    if not push_to_hub and (revision or create_pr or private):
        fail("--revision, --create-pr and --private go with --push")
    if hardlink and not copy_media:
        fail("--hardlink goes with --copy-media (without it no media file is placed)")
    copy = ("hardlink" if hardlink else "copy") if copy_media else None
    # the options (the repo id's form among them) before the token: a typo comes first
    opts = guard(export_options, val_fraction=val_fraction, split_by=split_by,
                 max_shard_bytes=shard_mb * 1024**2,
                 copy_media=copy, media_features=media_features, all_columns=all_columns,
                 license=license, license_name=license_name, license_link=license_link,
                 pretty_name=pretty_name, language=language, repo_id=repo_id)
    if push_to_hub:
        if not copy_media:
            fail("--push needs --copy-media: without it the video/audio paths point outside "
                 "the export, to files the Hub would not get")
        try:
            check_push(revision, create_pr)
        except PushError as exc:
            fail(str(exc))
    try:
        result = export_run(run_dir, out_dir, opts, overwrite=overwrite)
    except RunInUse as exc:
        fail(str(exc))
    except (ValueError, FileNotFoundError) as exc:  # Arrow's read errors are ValueErrors too
        fail(damage_in_runs(exc, [str(run_dir)]) or str(exc))
    for config, splits in result.configs.items():
        out.print(f"config [bold]{escape(config)}[/]: "
                  + ", ".join(f"{k} {v:,}" for k, v in splits.items()))
    out.print(f"exported to {result.out} ({len(result.columns)} columns"
              + (f", {result.media_copied} media files" if copy else "")
              + f", export {result.fingerprint})", markup=False, soft_wrap=True)
    print_notes(result.notes)
    out.print(f"load it with: datasets.load_dataset({str(result.out)!r})", markup=False,
              soft_wrap=True)
    if push_to_hub:
        try:
            with run_lock(result.out, what="export folder"):  # no re-export mid-upload
                pushed = push(result.out, repo_id, private=private, revision=revision,
                              create_pr=create_pr)
        except (PushError, RunInUse) as exc:
            fail(str(exc))
        how = "resumable upload; re-run to finish if interrupted" if pushed.large else "one commit"
        out.print(f"pushed {pushed.files} files ({pushed.bytes / 1024**2:,.1f} MB, {how}) "
                  f"to {pushed.repo_url}" + (f"/tree/{revision}" if revision else ""))
        if pushed.pr_url:
            out.print(f"pull request: {pushed.pr_url}")


def _duckdb_message(exc: Exception, names: list[str]) -> str:
    """DuckDB's first line, and its hint if it gave one ('Did you mean "samples"?',
    'Candidate bindings: "reject_reason"'), on one line: the hint is the part that says
    what to type instead. A table it suggests that is not one of the run's views
    (`sqlite_master` for `validate` in a run without that stage) is left out."""
    first, *rest = str(exc).splitlines()
    hints = [line.strip() for line in rest if line.strip().startswith("Candidate bindings")
             or (line.strip().startswith("Did you mean") and _suggests(line, names))]
    return " ".join([first, *hints])


def _suggests(hint: str, names: list[str]) -> bool:
    """Whether a 'Did you mean "X"?' names one of `names`."""
    return any(f'"{name}"' in hint for name in names)


def _listing(rows: list[tuple[str, str]]) -> None:
    """Names in one column, their descriptions wrapped beside them (a long name such as
    teacher_filter once pushed its line out of step with the others)."""
    from rich.table import Table

    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for name, text in rows:
        table.add_row(name, text)
    out.print(table)


@app.command()
def sources() -> None:
    """List the annotation formats avcurate can ingest (README: Datasets)."""
    _listing([(c.name, escape(c.description) + (f" [dim](options: {', '.join(c.options)})[/]"
                                                if c.options else ""))
              for c in CATALOGS.values()])
    out.print("Every source also takes tag (names the file in sample ids), strip_prefix "
              "(the folder its authors wrote before each media path, dropped) and "
              "follow_links (read media through links under media_root that lead out of "
              "it; a Hugging Face cache snapshot's links to its blobs are always read). "
              "annotations may be a glob; {annotations_dir} in media_root is each file's "
              "folder.", markup=False)


@app.command()
def stages() -> None:
    """List the stages a recipe can use (built-in and plugins)."""
    rows = []
    for name, cls in sorted(available().items()):
        doc = (getattr(cls, "__doc__", None) or "").strip().splitlines()  # first line only
        text = escape(doc[0]) if doc and isinstance(cls, type) else ""
        origin = "" if isinstance(cls, type) else f"[dim](plugin {escape(cls.value)})[/]"
        rows.append((name, " ".join(filter(None, [text, origin]))))
    _listing(rows)


@app.command(name="version")
def version_cmd() -> None:
    """Print the version."""
    out.print(__version__)

