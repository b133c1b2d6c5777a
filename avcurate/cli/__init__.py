"""The `avcurate` command line. Thin: parse, build a recipe or config, run it, print.

Stage commands and `train` are generated from the options their stages and config
declare (`cli/generate.py`), so a default, a range and a help text live in one place.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys

import typer

# The command line imports ~90 modules of ours and the libraries under them, and nothing
# they build is garbage: the garbage collector is paused while they import (~120 passes
# over the growing heap otherwise), then what they built is frozen out of collections,
# which also spares the interpreter's exit walking and freeing it (~0.1 s of a 0.35 s
# `avcurate status`). DuckDB's bindings print "leaked instances" warnings at exit for
# objects of theirs left uncollected, so if DuckDB was imported before the freeze, all is
# unfrozen before exit (the commands import it after, and their DuckDB objects are not
# frozen).
gc.disable()

from avcurate.cli import run_commands  # noqa: E402,F401  (registers demo, run, ingest, status)
from avcurate.cli.common import (  # noqa: E402
    app,
    damage_in_runs,
    err,
    machine_error,
    print_error,
    reflow_help,
)
from avcurate.cli.stage_commands import register_all  # noqa: E402
from avcurate.cli.train_command import register as register_train  # noqa: E402

register_all()  # in workflow order: validate, score, classify, teach, merge-traces, filters
register_train()
from avcurate.cli import tool_commands  # noqa: E402,F401  (stats, query, export, listings)
from avcurate.cli.audit_commands import register_agree  # noqa: E402  (and spotcheck)
from avcurate.core.store import use_jemalloc  # noqa: E402

register_agree()
reflow_help(app)  # after every command is registered
_DUCKDB_FROZEN = "duckdb" in sys.modules  # only when imported before us (a host program)
gc.freeze()
gc.enable()


INTERRUPTED = 130  # typer's exit status after Ctrl-C (it turns KeyboardInterrupt into it)
_stopped_by = ["Ctrl-C"]  # or the SIGTERM that `_stop_on_sigterm` took as one


def main() -> None:
    """The console script: a process of its own, so Arrow's memory pool and the handling
    of SIGTERM are ours to pick.

    Typer runs the command without its own exit handling (`standalone_mode=False`) so that a
    mistake its parser finds (`--max-ratio abc`, a missing option, a misspelt command) is
    one line like every other bad value, instead of a usage line, a hint and a boxed
    message."""
    use_jemalloc()
    _stop_on_sigterm()
    try:
        status = app(standalone_mode=False, prog_name="avcurate")  # an Exit's code, or None
    except typer.TyperException as exc:  # the base of its parser's errors (typer >= 0.29)
        sys.exit(_usage_error(exc))
    except typer.Abort:  # a confirmation refused, or its prompt closed
        err.print("Aborted!", highlight=False)
        sys.exit(1)
    except Exception as exc:
        if (line := damage_in_runs(exc, sys.argv[1:]) or machine_error(exc)) is None:
            raise
        print_error(line)
        sys.exit(2)
    if status == INTERRUPTED:  # typer stops silently; say what the stop left behind
        err.print(f"[bold yellow]stopped[/] by {_stopped_by[0]}. What finished is kept "
                  "and nothing was left half-written: the same command again goes on "
                  "from where it stopped.", soft_wrap=True, highlight=False)
        if _stopped_by[0] == "SIGTERM":
            sys.exit(128 + signal.SIGTERM)  # the status a shell gives a SIGTERM'd command
    sys.exit(status if isinstance(status, int) else 0)


def _usage_error(exc: typer.TyperException) -> int:
    """Print a parser's error as one line naming the command's help; its exit code.
    With no arguments at all, the help itself was printed: nothing more is said."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print_error(" ".join(exc.format_message().split()).rstrip(".") + where)
    return exc.exit_code


def _stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a batch scheduler's time limit, `docker stop`) stops the command as
    Ctrl-C does: a KeyboardInterrupt in the main thread, so the same clean-up runs (pools
    shut down, a Ray started here stopped, the lock released) and the same line is printed,
    instead of the process vanishing. While child processes start, `interrupts_held`
    holds it as it holds Ctrl-C. A process forked from this one (ingest's workers) is
    ended at once, as by default: its parent sees it go. So is a rank under torchrun,
    whose agent stops the ranks with SIGTERM when one fails: a rank waiting in a
    collective for the failed one would never reach a Python handler."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return
    main_pid = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _stopped_by[0] = "SIGTERM"
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)


def _unfreeze_for_duckdb() -> None:
    """Give DuckDB's objects back to the collector before the interpreter exits (see above).

    Only when DuckDB was imported before the freeze: the commands import it later, so
    none of its objects are frozen, and unfreezing everything would make the exit walk
    and free the whole heap (~0.1 s of a filter run).
    """
    if _DUCKDB_FROZEN:
        gc.unfreeze()


atexit.register(_unfreeze_for_duckdb)

__all__ = ["app", "main"]
