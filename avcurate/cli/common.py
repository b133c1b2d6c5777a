"""What every command shares: the app, consoles, one-line errors, run summaries."""

from __future__ import annotations

import errno
import inspect
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from avcurate.audits.sample import AuditError
from avcurate.cli.help_layout import WidthAwareHelp
from avcurate.core.kvcache import CacheDamaged
from avcurate.core.lock import RunInUse
from avcurate.core.options import OptionError
from avcurate.core.outputs import OutputError
from avcurate.core.store import ManifestError, RunStore, damaged_parquet
from avcurate.hub.licenses import LicenseError
from avcurate.hub.options import ExportError
from avcurate.pipeline.recipe import RecipeError, StageSpec
from avcurate.pipeline.registry import create
from avcurate.pipeline.runner import AlreadyDone, MissingColumns, RunError, extend_run
from avcurate.reports.benchmark_hints import benchmark_warnings
from avcurate.reports.media_hints import archived_media
from avcurate.reports.tables import (
    emptied_stage,
    reasons_table,
    stage_rows,
    summary_table,
    unlettered_answers,
)
from avcurate.stages.base import StageError

app = typer.Typer(
    help="Curate audio-visual QA data for omni-modal RL: ingest, validate, score, balance, "
         "trace, export, train. Start with `avcurate demo --out demo_out`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
)
out = Console()
err = Console(stderr=True)

RunDir = Annotated[Path, typer.Argument(  # metavar: errors name it as --help shows it
    metavar="RUN_DIR", help="A run folder (made by `avcurate run` or `ingest`).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Force = Annotated[bool, typer.Option(
    "--force", help="If the run folder was made with a different recipe, recompute from the "
                    "first stage that differs instead of stopping.")]

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

USER_ERRORS = (RunError, RecipeError, StageError, OptionError, RunInUse, FileNotFoundError,
               OutputError, ManifestError, AuditError, ExportError, LicenseError, CacheDamaged)


def reflow(doc: str) -> str:
    """A docstring as help text: each paragraph's hard-wrapped lines joined into one.

    Typer's rich help joins the lines of a command's first paragraph but prints the
    later ones with the docstring's own line breaks, so at any terminal width but the
    source's they came out ragged ("...the colour of" / "the frames..."). Lines that
    start a list item or are indented (examples) keep their break."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(re.sub(r"\n(?![ \t]|[-*] )", " ", p) for p in paragraphs)


def reflow_help(typer_app: typer.Typer) -> None:
    """Every registered command's help laid out for the terminal's width (`help_layout`)
    and, where it comes from its docstring, reflowed (see `reflow`); called once all
    commands are registered."""
    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer fills in its own class
            info.cls = WidthAwareHelp
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = reflow(info.callback.__doc__)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2."""
    print_error(message)
    raise typer.Exit(2)


def print_error(message: str) -> None:
    """`error: message` on stderr, printed as written (no markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False,
              emoji=False)  # "openai:m: ..." is a model name, not an emoji code


def guard(fn, *args: Any, **kwargs: Any) -> Any:
    """Turn the errors users can cause into one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        fail(str(exc))


def damage_in_runs(exc: BaseException, args: list[str]) -> str | None:
    """One line naming the damaged Parquet file(s) of the run folders in `args`, when
    `exc` is Arrow's or DuckDB's failure to read Parquet and such a file is there; else
    None (the error is not damage, and its traceback stays). Every command that reads
    shards would otherwise need its own handler around each of its ~25 reads."""
    import pyarrow as pa

    duckdb = sys.modules.get("duckdb")  # imported by the command that failed, if it used it
    if not (isinstance(exc, pa.ArrowInvalid) or duckdb and isinstance(exc, duckdb.Error)):
        return None
    runs = {Path(a).resolve() for a in args if (Path(a) / "manifest.json").is_file()}
    bad = [(run, path) for run in sorted(runs) for path in damaged_parquet(run)]
    if not bad:
        return None
    run, first = bad[0]
    stage = first.relative_to(run).parts[0]
    redo = (f"redo its stage (avcurate reset {shlex.quote(str(run))} --from {stage}, then run "
            "it again)" if re.fullmatch(r"(0[1-9]|[1-9]\d)-.+", stage)
            else "ingest again into a new run folder" if stage.startswith("00-")
            else "run the command that wrote it again")
    more = f" and {len(bad) - 1} more file(s)" if len(bad) > 1 else ""
    return (f"{first}{more} cannot be read as Parquet (cut short or changed outside avcurate, "
            f"which writes every file whole): {redo}, or restore it from a copy")


MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO})


def machine_error(exc: BaseException) -> str | None:
    """One line for an OSError the machine causes, not avcurate or the data (a full disk,
    a quota, a read-only or forbidden path, a failing disk), wherever in a command it is
    raised; else None.
    Every write is atomic and a stage is recorded only once complete, so the same command
    resumes once the cause is fixed."""
    if not isinstance(exc, OSError) or exc.errno not in MACHINE_ERRNOS:
        return None
    # a copy's or a rename's error names both files (shutil's copy names the source
    # first): a full disk, a quota or a read-only filesystem is the destination's
    files = [exc.filename2] if exc.filename2 and exc.errno != errno.EACCES else \
        [f for f in (exc.filename, exc.filename2) if f]
    where = f": {' -> '.join(map(str, files))}" if files else ""
    return (f"{os.strerror(exc.errno)}{where}; fix that and run the same command again (what "
            "finished is kept, and nothing was left half-written)")


def print_lines(lines: list[str]) -> None:
    """Lines of rich markup on stdout; indented ones are commands for the user to copy,
    printed unwrapped (a line the terminal folds still copies whole, one Rich broke at
    80 columns does not)."""
    for line in lines:
        command = line.startswith("  ")
        out.print(line, soft_wrap=command, highlight=not command)


def print_notes(notes: list[str]) -> None:
    """An export's notes (what the user should know about it), one line each."""
    for note in notes:
        out.print(f"[yellow]note:[/] {escape(note)}")


def print_summary(run_dir: Path, title: str) -> None:
    """The run's table, after a command ran stages (their counts as recorded when each
    completed; `avcurate status` recounts from the shards)."""
    store = RunStore(run_dir)
    rows = stage_rows(store, recorded=True)
    out.print(summary_table(rows, title))
    if any(r["rejects_by_reason"] for r in rows):
        out.print(reasons_table(rows))
    print_warnings(store, rows)


def print_warnings(store: RunStore, rows: list[dict[str, Any]]) -> None:
    """What the run's counts suggest went wrong in its setting up (after a command that ran
    stages, and in `avcurate status`): a stage that kept nothing, clips left in their
    archives, a probe whose answers often named no letter, benchmark records and videos
    decontamination could not use."""
    for warning in (emptied_stage(store, rows), archived_media(store, rows),
                    unlettered_answers(store), *benchmark_warnings(store)):
        if warning is not None:
            out.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True,
                      highlight=False)


def check_specs(specs: list[StageSpec]) -> None:
    """Build every stage once so a bad option stops the command before any row is touched."""
    for spec in specs:
        guard(create, spec.name, spec.options)


def confirm_redo(run_dir: Path, specs: list[StageSpec], yes: bool, diffs: list[str]) -> None:
    """A `--redo` also removes the stages made after the redone ones (a redone dedup takes
    every later stage with it): name them and ask first, as `avcurate reset` does. Settings
    other than the stage was done with are named too: the options not given are the
    command's defaults, not the run's (a `balance --redo` after a recipe's max_ratio 1.2
    ran at 3)."""
    from avcurate.pipeline.runner import redo_plan

    own, later = guard(redo_plan, run_dir, specs)
    changed = (f"; with other settings than {', '.join(own)} was done with: "
               f"{'; '.join(diffs)}" if diffs else "")
    if later:
        ask_before_removing(f"--redo removes {', '.join(own)} and the {len(later)} later "
                            f"stage(s) made from it: {', '.join(later)} (caches kept: running "
                            f"them again re-sends nothing already answered){changed}", yes)
    elif changed:
        out.print(f"--redo runs {', '.join(own)} again{changed}", markup=False)


def confirm_force(yes: bool) -> Callable[[str, list[str]], None]:
    """For a Runner: `--force` names the done stages it removes without making them again
    (those after the recipe's last) and asks first."""
    def confirm(first: str, dropped: list[str]) -> None:
        ask_before_removing(f"--force recomputes from {first} on, and removes the "
                            f"{len(dropped)} later stage(s) this recipe does not make again: "
                            f"{', '.join(dropped)} (caches kept)", yes)
    return confirm


def ask_before_removing(what: str, yes: bool) -> None:
    """Print what a command is about to remove; unless `yes`, stop (exit 1) on anything but
    a yes, which with no terminal to answer is what a script gets."""
    out.print(what, markup=False)
    if not yes and not typer.confirm("Remove them?", default=False):
        raise typer.Exit(1)


def require_run(run_dir: Path) -> None:
    if not (store := RunStore(run_dir)).exists():
        fail(store.not_a_run())


def as_commands(fn: Callable[..., Any], run_dir: Path, *args: Any, **kwargs: Any) -> Any:
    """`fn(run_dir, ...)` for a stage command: a missing column is said as the commands
    to run on `run_dir` first, not as stages to add to a recipe the user never wrote."""
    try:
        return fn(run_dir, *args, **kwargs)
    except MissingColumns as exc:
        raise RunError(exc.for_commands(run_dir)) from None


def run_more(run_dir: Path, specs: list[StageSpec], force: bool, quiet: bool,
             workers: int | None = None, redo: bool = False, yes: bool = False,
             append: bool = False) -> bool:
    """Append stages to a run (or resume them) and print the summary; False when the stages
    were already done with these settings (nothing ran)."""
    require_run(run_dir)
    check_specs(specs)
    if workers is not None and workers < 1:
        fail(f"--workers must be at least 1, not {workers}")
    try:
        guard(as_commands, extend_run, run_dir, specs, redo=redo, append=append, force=force,
              workers=workers, show_progress=not quiet,
              confirm_redo=lambda diffs: confirm_redo(run_dir, specs, yes, diffs))
    except AlreadyDone as exc:
        print_summary(run_dir, f"Run {run_dir}")
        out.print(str(exc), markup=False)
        return False
    print_summary(run_dir, f"Run {run_dir}")
    return True
