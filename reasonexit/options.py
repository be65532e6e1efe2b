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
import enum
import json
import types
import typing
from collections.abc import Iterable
from typing import Any

from .errors import UserError

MISSING = dataclasses.MISSING


def opt(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Any = MISSING,
    flag: str | None = None,
    repeat: bool = False,
) -> Any:
    """A dataclass field with help text (``flag`` overrides the ``--kebab-case`` flag name).

    ``repeat`` (a list or tuple field): the flag is given once per item (``--grid A --grid B``)
    instead of one comma-separated value, for items that hold commas themselves.
    """
    meta: dict[str, Any] = {"help": help}
    if flag:
        meta["flag"] = flag
    if repeat:
        meta["repeat"] = True
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class OptionError(UserError):
    """A setting given a value it cannot take, raised where its options dataclass checks itself
    (``__post_init__``).

    The message names the setting as a Python keyword (``max_in_flight must be >= 1, got 0``);
    :attr:`flag_message` names it as the command line does (``--max-in-flight must be >= 1``), and
    :attr:`name` is the field, for a caller that reports which input was wrong.
    """

    def __init__(self, name: str, value: Any, rule: str, flag_rule: str | None = None) -> None:
        self.name = name
        self.value = value
        self.flag_message = f"--{name.replace('_', '-')} must {flag_rule or rule}"
        super().__init__(f"{name} must {rule}, got {value!r}")


def check_at_least(name: str, value: Any, low: int, rule: str | None = None) -> None:
    """Raise an :class:`OptionError` unless ``value`` is an integer >= ``low`` (``rule``: the
    keyword message's wording, default ``be >= low``; the flag message always says ``be >= low``)."""
    if not isinstance(value, int) or value < low:
        raise OptionError(name, value, rule or f"be >= {low}", f"be >= {low}")


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


def convert(value: Any, tp: Any, name: str, *, typed: bool = False) -> Any:
    """Convert a command-line string (or a YAML / Python value) to the annotated type ``tp``.

    ``name`` is the option's flag or key, used in the one-line :class:`UserError` for a bad value.
    With ``typed`` (YAML recipes, whose values already carry a type) text is not read as a number,
    a boolean, a list or ``none``, and escapes in text are left alone; only a float takes a numeric
    string, because PyYAML reads ``1e-6`` (no dot) as text.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if (origin is dict or tp is dict) and isinstance(value, str) and not typed:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UserError(f"{name} must be a JSON object, got {value!r}")
        return parsed
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (not typed and isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(value, inner[0], name, typed=typed)
        for member in inner:  # the first member that takes the value
            try:
                return convert(value, member, name, typed=typed)
            except UserError:
                continue
        raise UserError(f"{name} must be {type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args or (isinstance(value, bool) and not any(a is value for a in args)):
            raise UserError(f"{name} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        # only command-line text is split and trimmed; Python and YAML values (e.g. "\n\n") stay as given
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) and not typed else value
        if not isinstance(items, list | tuple):
            raise UserError(f"{name} must be a list, got {value!r}")
        elem = args[0] if args else (str if not typed else Any)
        items = [convert(v, elem, name, typed=typed) for v in items]
        return tuple(items) if (origin or tp) is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        low = str(value).lower()
        if not typed and low in ("1", "true", "yes", "on"):
            return True
        if not typed and low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float):
        wrong = isinstance(value, bool) or not isinstance(value, int | float | str)
        if typed and tp is int:  # a typed value: an int is an int (not "8", not 8.0)
            wrong = wrong or not isinstance(value, int)
        if wrong:
            raise UserError(f"{name} must be {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except ValueError:
            raise UserError(f"{name} must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise UserError(f"{name} must be int, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be text, got {value!r}")
        if typed:
            return value
        return value.encode().decode("unicode_escape") if "\\n" in value else value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or value == member.name:
                return member if not typed else value
        raise UserError(f"{name} must be one of {', '.join(str(m.value) for m in tp)}, got {value!r}")
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
        if f.metadata.get("repeat"):
            kwargs["action"] = "append"
            kwargs["help"] = kwargs["help"].replace(" (comma-separated)", " (repeat the flag)")
            kwargs["metavar"] = f.name.upper()
        elif tp is bool or typing.get_args(tp) == (bool, type(None)):
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


def describe(cls: type, skip: Iterable[str] = (), key_prefix: str | None = None) -> list[str]:
    """Lines ``--flag [TYPE] (default X): help`` for every field of ``cls``; with ``key_prefix``
    (YAML keys, e.g. ``"dataset."``) the field is named ``key_prefix + name`` instead of its flag."""
    lines = []
    for f, tp in fields_of(cls, skip):
        default = default_of(f)
        shown = "" if default is MISSING else f" (default {_show(default)})"
        shown_type = type_name(tp).replace(" (comma-separated)", "") if key_prefix is not None else type_name(tp)
        name = flag_of(f) if key_prefix is None else key_prefix + f.name
        lines.append(f"{name} [{shown_type}]{shown}: {help_of(f)}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, str):
        return repr(value)
    return str(value)
