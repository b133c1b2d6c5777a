"""The `avcurate` command line. Thin: parse, build a recipe or config, run it, print.

Stage commands and `train` are generated from the options their stages and config
declare (`cli/generate.py`), so a default, a range and a help text live in one place.
"""

from __future__ import annotations

from avcurate.cli import run_commands  # noqa: F401  (registers demo, run, ingest, status)
from avcurate.cli.common import app
from avcurate.cli.stage_commands import register_all
from avcurate.cli.train_command import register as register_train

register_all()  # in workflow order: validate, score, classify, teach, merge-traces, filters
register_train()
from avcurate.cli import tool_commands  # noqa: E402,F401  (stats, query, export, listings)
from avcurate.cli.audit_commands import register_agree  # noqa: E402  (and spotcheck)

register_agree()


def main() -> None:
    app()


__all__ = ["app", "main"]
