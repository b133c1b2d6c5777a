"""A command's `--help` laid out for the width it is printed at.

Typer draws a command's options as a table: option, its `--no-` form, type, help. On a
terminal narrower than that table needs (`train`'s long names and `--no-` forms alone
take ~60 columns; decontaminate's `NAME[@FORMAT]=ANNOTATIONS[:MEDIA_ROOT]` is one
40-column word), rich squeezes it and cuts what does not fit with "…": option names
(`--steps-per-generat…`) and words of the help. At 80 columns, the width of a default
macOS or GNOME terminal and of `--help | less`, six commands lost text that way. So
each command's rich help is first laid out unseen at the terminal's width; if that cut
anything, the help is click's plain layout instead, which puts a long option on a line
of its own and wraps the help under it. The command list (`avcurate --help`) stays
typer's at every width: its two-column panel wraps without cutting.

The help texts are written for rich (a literal bracket escaped as `\\[`), so the plain
layout shows each as rich would print it, markup resolved.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import typer.core
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperOption

CUT = "…"


def as_printed(text: str) -> str:
    """`text` as rich prints it: escapes resolved, markup tags gone."""
    return Text.from_markup(text).plain


def _keep_breaks(paragraph: str) -> str:
    """A paragraph with list items or indented lines, marked for click not to rewrap
    (`\\b`); other paragraphs are rewrapped to the width."""
    lines = paragraph.split("\n")
    listed = any(line[:1].isspace() or line[:2] in ("- ", "* ") for line in lines[1:])
    return "\b\n" + paragraph if listed else paragraph


class WidthAwareHelp(TyperCommand):
    """Typer's rich help where it fits the terminal, click's plain layout where not."""

    # The context and formatter are click's, or the copy of click that typer >= 0.20
    # carries, hence `Any`.

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self._rich_fits(ctx, formatter):
            super().format_help(ctx, formatter)
            return
        self.format_usage(ctx, formatter)
        self._plain_text(formatter)
        self._plain_params(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def _rich_fits(self, ctx: Any, formatter: Any) -> bool:
        """Whether typer's help, laid out at this width, cuts nothing: no more "…" than
        the texts hold. Typer prints it straight to stdout, hence the redirect; the
        layout's width is the terminal's either way (rich reads it from the process)."""
        trial = io.StringIO()
        with contextlib.redirect_stdout(trial):
            super().format_help(ctx, formatter)
        texts = [self.help or "", *(f"{getattr(p, 'help', '')} {p.opts}" for p in self.params)]
        return trial.getvalue().count(CUT) <= sum(t.count(CUT) for t in texts)

    def _plain_text(self, formatter: Any) -> None:
        if self.help:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text("\n\n".join(
                    _keep_breaks(p) for p in as_printed(self.help).split("\n\n")))

    def _plain_params(self, ctx: Any, formatter: Any) -> None:
        """Arguments, then options: their names and types as typer gives them (plain
        text: `<list[str]>`), their help as rich would print it. Typer escapes the
        brackets it adds to the help ("[required]") only when it knows the markup is rich
        (typer >= 0.20 asks the context; earlier ones always did)."""
        ctx.ensure_object(dict)
        if isinstance(ctx.obj, dict) and hasattr(typer.core, "MARKUP_MODE_KEY"):
            ctx.obj.setdefault(typer.core.MARKUP_MODE_KEY, "rich")
        for title, kind in (("Arguments", TyperArgument), ("Options", TyperOption)):
            records = [(name, as_printed(text)) for param in self.get_params(ctx)
                       if isinstance(param, kind) and (record := param.get_help_record(ctx))
                       for name, text in [record]]
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)
