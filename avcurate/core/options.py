"""Options declared once: type, default, allowed range and help live on the dataclass field.

A stage's (or the trainer's) options are dataclass fields made with `option(...)`.
From that one declaration:

- `check_fields(obj)` refuses a bad value with one line before any work starts
  (wrong type, NaN/inf, out of range, not one of the choices);
- `check_keys(cls, keys, where)` refuses an unknown key and names the closest valid one
  (recipes and config files);
- the CLI generates its typer options (flag names, help, shown default) from the fields;
- `identity(obj)` leaves out the operational options (timeouts, concurrency, ...) that do
  not change results, so they are not part of a stage's fingerprint.

Pydantic would do the type checks too, but stages are plain dataclasses pickled to Ray
workers and compared in tests; a few dozen lines of checks keep them that way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any


class OptionError(ValueError):
    """An option value or key that cannot be used; the message is one line for the user."""


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING,
           min: float | None = None, max: float | None = None, gt: float | None = None,
           choices: Iterable[str] | None = None, flag: str | None = None,
           aliases: tuple[str, ...] = (), operational: bool = False, cli: bool = True,
           comma: bool = False, path: bool = False, absent: Any = MISSING) -> Any:
    """A dataclass field with its rules and help.

    min/max are inclusive bounds, gt an exclusive lower bound; `flag` is the CLI name when it
    is not `--field-name` (kept for flags users already know); `aliases` are extra,
    deprecated CLI names; `operational` options (timeouts, concurrency) do not change
    results and stay out of fingerprints; `cli=False` keeps an option recipe-only; a list
    option is repeatable on the command line unless `comma` (or a list of numbers), then
    it is one comma-separated value; a `path` option names a file, which a recipe gives
    relative to its own folder.

    `absent`, on an option added to a stage after runs were made with it, is the value that
    does what the stage did before: at that value the option is left out of the stage's
    fingerprint (a run made before still matches), and a recorded stage without it is read
    as having run with it (see `absent_options`).
    """
    metadata = {"help": help, "min": min, "max": max, "gt": gt,
                "choices": tuple(choices) if choices is not None else None, "flag": flag,
                "aliases": aliases, "operational": operational, "cli": cli, "comma": comma,
                "path": path}
    if absent is not MISSING:
        metadata["absent"] = absent
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def absolute_path(path: str, base: Path | None) -> str:
    """`path` as written in a file under `base` (a recipe): `~` expanded, relative to `base`
    (left relative when there is no file, as for a recipe built in code)."""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or base is None else (base / p).resolve())


def declared(cls_or_obj: Any) -> list[Field]:
    """The option fields of a dataclass (init fields made with `option`)."""
    return [f for f in dataclasses.fields(cls_or_obj) if f.init and "help" in f.metadata]


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (they are strings under PEP 563)."""
    return typing.get_type_hints(cls)


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """'; did you mean X?' for the closest known name, or '' (for one-line errors)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(cls: type, keys: Iterable[str], where: str) -> None:
    """Refuse keys that are not options of `cls`, naming the closest valid one."""
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in keys:
        if key not in known:
            raise OptionError(f"{where}: unknown option {key!r}{did_you_mean(key, known)} "
                              f"(options: {', '.join(sorted(known)) or 'none'})")


def check_fields(obj: Any, where: str) -> None:
    """Check (and normalise in place) every declared option of a dataclass instance."""
    hints = field_types(type(obj))
    for f in declared(obj):
        value = check_value(f.name, getattr(obj, f.name), hints[f.name], f.metadata, where)
        object.__setattr__(obj, f.name, value)


def check_value(name: str, value: Any, typ: Any, meta: dict, where: str) -> Any:
    """The value, converted where lossless (int -> float, str -> [str]); else OptionError."""
    def bad(problem: str) -> OptionError:
        return OptionError(f"{where}: {name} = {value!r} {problem}")

    base, optional = unwrap_optional(typ)
    if value is None:
        if optional:
            return None
        raise bad("is not allowed (a value is required)")
    origin = typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(base) or (Any,)
        items = [value] if isinstance(value, str) and item is str else value
        if not isinstance(items, list | tuple):
            raise bad(f"must be a list of {_type_name(item)}")
        return [check_value(f"{name}[{i}]", v, item, meta | {"choices": None}, where)
                for i, v in enumerate(items)]
    if base is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"must be {'an integer' if base is int else 'a number'}")
        if base is int and isinstance(value, float):
            if not value.is_integer():
                raise bad("must be an integer")
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise bad("must be a finite number")
        value = float(value) if base is float else value
        _check_range(value, meta, bad)
        return value
    if base is str:
        if not isinstance(value, str):
            raise bad("must be a string")
        if meta.get("choices") and value not in meta["choices"]:
            raise bad(f"must be one of {', '.join(meta['choices'])}")
        return value
    return value  # other types (dicts of column types, ...) are checked by their stage


def _check_range(value: float, meta: dict, bad) -> None:
    if meta.get("min") is not None and value < meta["min"]:
        raise bad(f"must be at least {meta['min']:g}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise bad(f"must be greater than {meta['gt']:g}")
    if meta.get("max") is not None and value > meta["max"]:
        raise bad(f"must be at most {meta['max']:g}")


def unwrap_optional(typ: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0], True
    return typ, False


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def settings(obj: Any) -> dict[str, Any]:
    """The options that define what a stage computes (operational ones left out)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if f.init and not f.metadata.get("operational")}


def identity(obj: Any) -> dict[str, Any]:
    """`settings` as hashed: an option added later is left out at its `absent` value, so
    the hash stays what it was before the option existed."""
    absent = {f.name: f.metadata["absent"] for f in dataclasses.fields(obj)
              if "absent" in f.metadata}
    return {k: v for k, v in settings(obj).items() if k not in absent or v != absent[k]}


def absent_options(cls: type, recorded: dict[str, Any]) -> dict[str, Any]:
    """The `absent` value of each option of `cls` that a stage's recorded options lack: it
    ran before the option existed, so with the behaviour that value stands for."""
    return {f.name: f.metadata["absent"] for f in dataclasses.fields(cls)
            if "absent" in f.metadata and f.name not in recorded}


def describe(f: Field) -> str:
    """Help text with the allowed range, for `--help`."""
    meta = f.metadata
    bits = []
    if meta.get("choices"):
        bits.append("one of " + ", ".join(meta["choices"]))
    if meta.get("min") is not None:
        bits.append(f">= {meta['min']:g}")
    if meta.get("gt") is not None:
        bits.append(f"> {meta['gt']:g}")
    if meta.get("max") is not None:
        bits.append(f"<= {meta['max']:g}")
    return meta["help"] + (f" ({'; '.join(bits)})" if bits else "")
