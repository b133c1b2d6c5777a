"""The `avcurate` command line. Thin: parse, build a recipe or config, run it, print.

Stage commands and `train` are generated from the options their stages and config
declare (`cli/generate.py`), so a default, a range and a help text live in one place.
"""

from __future__ import annotations

import atexit
import gc

# The command line imports ~90 modules of ours and the libraries under them; the garbage
# collector walked the growing heap ~120 times meanwhile (35-40 ms of a 0.3 s start-up,
# one full pass alone ~20 ms) while nothing imported is garbage. So it is paused for the
# imports, and what they built is then frozen out of later collections (else the first one
# after the pause walks all of it, ~15 ms). Frozen objects are never collected, so they are
# unfrozen at exit: DuckDB's bindings print "leaked instances" warnings for those left.
gc.disable()

from avcurate.cli import run_commands  # noqa: E402,F401  (registers demo, run, ingest, status)
from avcurate.cli.common import app  # noqa: E402
from avcurate.cli.stage_commands import register_all  # noqa: E402
from avcurate.cli.train_command import register as register_train  # noqa: E402

register_all()  # in workflow order: validate, score, classify, teach, merge-traces, filters
register_train()
from avcurate.cli import tool_commands  # noqa: E402,F401  (stats, query, export, listings)
from avcurate.cli.audit_commands import register_agree  # noqa: E402  (and spotcheck)

register_agree()
gc.freeze()
atexit.register(gc.unfreeze)
gc.enable()


def main() -> None:
    app()


__all__ = ["app", "main"]
