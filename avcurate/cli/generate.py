"""Typer options generated from `option(...)` declarations, so a default lives in one place.

Every generated option defaults to None on the command line: only what the user typed
is passed on, and the declaration's default (shown in `--help`) applies otherwise.
Values are checked by the declaration when the stage or config is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape

from avcurate.core.options import OptionError, declared, default_of, describe, field_types, unwrap_optional


@dataclass(frozen=True)
class CliOption:
    """One generated command-line option and the field(s) it sets."""

    param: str                      # the Python parameter name in the command's signature
    fields: tuple[tuple[int, str], ...]  # (target index, field name) pairs it sets
    annotation: Any
    convert: Callable[[Any], Any]

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=self.annotation)


def _show(value: Any, flag: str) -> str:
    """A default as the user would type it (a flag's default is the flag itself)."""
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else "none"
    if value == "":
        return "none"
    return str(value)


def _comma_list(item: type, flag: str) -> Callable[[str], list]:
    def convert(text: str) -> list:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if item is str:
            return parts
        try:
            return [float(p) for p in parts]
        except ValueError:
            raise OptionError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    return convert


def cli_option(f: dataclasses.Field, typ: Any, flag: str, param: str,
               targets: tuple[tuple[int, str], ...], extra_help: str = "") -> CliOption:
    """The typer option for one declared field (bool flags get --x/--no-x)."""
    base, _ = unwrap_optional(typ)
    shown = _show(default_of(f), flag)
    # the default goes into the help text itself: click prints a string `show_default`
    # in parentheses ("[default: (16)]"), its convention for defaults computed at run time
    help_text = escape(f"{describe(f)}{extra_help} [default: {shown}]")
    names = [flag, *f.metadata.get("aliases", ())]
    convert: Callable[[Any], Any] = lambda v: v  # noqa: E731
    if base is bool:
        names = [f"{flag}/--no-{flag[2:]}", *names[1:]]
        kind: Any = bool | None
    elif typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        if item is str and not f.metadata.get("comma"):
            kind = list[str] | None
        else:
            kind, convert = str | None, _comma_list(item, flag)
    else:
        kind = base | None
    opt = typer.Option(*names, help=help_text, show_default=False)
    return CliOption(param, targets, Annotated[kind, opt], convert)


def options_for(classes: list[type], *, prefixes: list[str] | None = None,
                prefixed: Iterable[str] = (), skip: Iterable[str] = ()) -> list[CliOption]:
    """CLI options for one or more option classes (several stages in one command).

    A field in `prefixed` gets each class's prefix (`--visual-model`); any other field
    declared by several classes becomes one shared option that sets all of them.
    """
    prefixes = prefixes or [""] * len(classes)
    prefixed, skip = set(prefixed), set(skip)
    out: dict[str, CliOption] = {}
    owners: dict[str, list[int]] = {}
    found: dict[str, tuple[dataclasses.Field, Any]] = {}
    for k, cls in enumerate(classes):
        hints = field_types(cls)
        for f in declared(cls):
            if not f.metadata.get("cli", True) or f.name in skip:
                continue
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if f.name in prefixed and prefixes[k]:
                param = f"{prefixes[k]}_{f.name}"
                out[param] = cli_option(f, hints[f.name], f"--{prefixes[k]}-{flag[2:]}", param,
                                        ((k, f.name),))
                continue
            owners.setdefault(f.name, []).append(k)
            found.setdefault(f.name, (f, hints[f.name]))
    for name, ks in owners.items():
        f, typ = found[name]
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        out[name] = cli_option(f, typ, flag, name, tuple((k, name) for k in ks))
    return list(out.values())


def collect(options: list[CliOption], values: dict[str, Any], n_targets: int
            ) -> list[dict[str, Any]]:
    """The option values the user gave, per target class (converted where needed)."""
    per_target: list[dict[str, Any]] = [{} for _ in range(n_targets)]
    for o in options:
        value = values.get(o.param)
        if value is None:
            continue
        value = o.convert(value)
        for k, name in o.fields:
            per_target[k][name] = value
    return per_target


def with_signature(fn: Callable[..., Any], params: list[inspect.Parameter], doc: str
                   ) -> Callable[..., Any]:
    """Give a `**kwargs` command function the signature typer reads its options from."""
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__doc__ = doc
    return fn
