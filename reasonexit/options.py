"""Options declared once: dataclass fields with help text, turned into CLI flags, help and checks.

Every user-facing setting of reasonexit (a method's parameters, the engine, decoding, an
evaluation run) is a dataclass field declared with :func:`opt`, which carries its help text
(TRL's ``GRPOConfig`` is the model). From those declarations come the ``reasonexit`` flags and
their ``--help``, ``reasonexit methods NAME``, the API's keyword checks and the conversion of
strings (command line) and YAML values, through the one converter :func:`convert`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from typing import Any

from .errors import UserError

MISSING = dataclasses.MISSING


def opt(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, flag: str | None = None) -> Any:
    """A dataclass field with help text (``flag`` overrides the ``--kebab-case`` flag name)."""
    meta = {"help": help}
    if flag:
        meta["flag"] = flag
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def help_of(f: dataclasses.Field) -> str:
    """The help text of a field ('' if it was declared without)."""
    return str(f.metadata.get("help", ""))


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (``MISSING`` when it has none)."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def type_name(tp: Any) -> str:
    """A short readable name of an annotation, for help output."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(inner) + (" | none" if type(None) in args else "")
    if origin is typing.Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin in (tuple, list):
        return f"list of {type_name(args[0]) if args else 'str'} (comma-separated)"
    if origin is dict or tp is dict:
        return "JSON object"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a command-line string (or a YAML / Python value) to the annotated type ``tp``.

    ``name`` is the option's flag or key, used in the one-line :class:`UserError` for a bad value.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if (origin is dict or tp is dict) and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UserError(f"{name} expects a JSON object, got {value!r}")
        return parsed
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} expects a mapping, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], name)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{name} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if origin in (tuple, list):
        # only command-line text is split and trimmed; Python and YAML values (e.g. "\n\n") stay as given
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise UserError(f"{name} expects a list, got {value!r}")
        elem = args[0] if args else str
        items = [convert(v, elem, name) for v in items]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        low = str(value).lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name} expects true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise UserError(f"{name} expects {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except ValueError:
            raise UserError(f"{name} expects {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise UserError(f"{name} expects int, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{name} expects text, got {value!r}")
        return value.encode().decode("unicode_escape") if "\\n" in value else value
    return value


def fields_of(cls: type, skip: Iterable[str] = ()) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of a dataclass with their resolved type hints, minus ``skip``."""
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip and f.init]


def add_arguments(group: Any, cls: type, *, skip: Iterable[str] = (), dest_prefix: str = "") -> None:
    """Add one flag per field of ``cls`` to an argparse parser or group; values stay strings until
    :func:`collect` converts them, so the CLI and YAML share :func:`convert`."""
    for f, tp in fields_of(cls, skip):
        default = default_of(f)
        shown = "" if default is MISSING else f" (default: {_show(default)})"
        kwargs: dict[str, Any] = dict(
            dest=dest_prefix + f.name,
            default=argparse.SUPPRESS,
            help=f"{help_of(f)} [{type_name(tp)}]{shown}".replace("%", "%%"),
        )
        if tp is bool or typing.get_args(tp) == (bool, type(None)):
            kwargs["nargs"] = "?"
            kwargs["const"] = "true"
            kwargs["metavar"] = "BOOL"
        else:
            kwargs["metavar"] = f.name.upper()
        group.add_argument(flag_of(f), **kwargs)


def collect(cls: type, values: dict[str, Any], *, skip: Iterable[str] = (), dest_prefix: str = "") -> dict[str, Any]:
    """Converted keyword arguments for ``cls`` from flag values given (by :func:`add_arguments` dests)."""
    out: dict[str, Any] = {}
    for f, tp in fields_of(cls, skip):
        key = dest_prefix + f.name
        if key in values:
            out[f.name] = convert(values[key], tp, flag_of(f))
    return out


def build(cls: type, kwargs: dict[str, Any], what: str) -> Any:
    """``cls(**kwargs)`` after converting each value; unknown keys and bad values are one-line errors."""
    known = {f.name: (f, tp) for f, tp in fields_of(cls)}
    converted = {}
    for key, value in kwargs.items():
        if key not in known:
            raise UserError(f"unknown {what} option {key!r}; known: {', '.join(sorted(known))}")
        f, tp = known[key]
        converted[key] = convert(value, tp, flag_of(f))
    return cls(**converted)


def describe(cls: type, skip: Iterable[str] = ()) -> list[str]:
    """Lines ``--flag TYPE (default X): help`` for every field of ``cls``."""
    lines = []
    for f, tp in fields_of(cls, skip):
        default = default_of(f)
        shown = "" if default is MISSING else f" (default {_show(default)})"
        lines.append(f"{flag_of(f)} [{type_name(tp)}]{shown}: {help_of(f)}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, str):
        return repr(value)
    return str(value)
