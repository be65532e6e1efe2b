"""The method interface: a method is a named set of parameters plus a controller coroutine.

A controller solves one problem: it gets a :class:`Context` (the shared engine session, the
prompt's token ids, decoding settings, a seed and the problem's :class:`~reasonexit.engine.Usage`
ledger) and returns an :class:`Outcome` (the completion token ids handed to the user, why it
stopped, and method-specific records). Methods that run other methods inside them (e.g. First
Finish Search over DEER branches) call the inner method's :meth:`Method.solve` with a
:meth:`Context.derive` of their own context; the shared ledger makes the accounting add up.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..engine import EngineSession, Usage
from ..errors import UserError


@dataclass
class Decoding:
    """Sampling settings shared by all methods (temperature 0 means greedy)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0


@dataclass
class Context:
    """Everything a controller needs to solve one problem."""

    session: EngineSession
    prompt_ids: list[int]
    decoding: Decoding
    usage: Usage
    kind: str = "math"
    seed: int = 0
    request_prefix: str = "p"
    #: The problem's gold answer when known (for records such as pass@n; never for decisions).
    gold: str | None = None

    def sampling(self, **overrides: Any):
        """vLLM ``SamplingParams`` for this context's decoding settings and seed."""
        from vllm import SamplingParams

        dec = self.decoding
        args: dict[str, Any] = dict(
            temperature=dec.temperature,
            top_p=dec.top_p if dec.temperature > 0 else 1.0,
            max_tokens=self.room(dec.max_tokens),
            seed=self.seed,
            stop_token_ids=self.session.eos_ids,
            skip_special_tokens=False,
            detokenize=False,
        )
        args.update(overrides)
        return SamplingParams(**args)

    def room(self, max_tokens: int, used: int = 0) -> int:
        """``max_tokens`` capped so prompt + ``used`` + new tokens fit in the context."""
        left = self.session.max_model_len - len(self.prompt_ids) - used
        return max(1, min(max_tokens, left))

    def derive(self, seed: int, prefix: str) -> Context:
        """A context for a sub-controller: same prompt and ledger, its own seed and request ids."""
        return dataclasses.replace(self, seed=seed, request_prefix=f"{self.request_prefix}.{prefix}")

    def request_id(self, what: str) -> str:
        """A unique request id that names the problem and the purpose of the request."""
        return self.session.new_request_id(f"{self.request_prefix}.{what}")


@dataclass
class Outcome:
    """What a controller returns: the user's completion, why it stopped, and records."""

    token_ids: list[int]
    exit_reason: str
    info: dict[str, Any] = field(default_factory=dict)
    finished: bool = True


class Method(ABC):
    """A named early-exit (or baseline) method with typed parameters.

    A method whose ``Params`` have the fields ``inner`` (a method name) and ``inner_options`` (a
    dict) runs another method inside it: :attr:`inner` is built from them here, and
    :func:`parse_params` hands it every option the outer method does not take itself.
    """

    name: ClassVar[str]
    Params: ClassVar[type]

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()
        #: The method run inside this one (``None`` for methods that nest nothing).
        self.inner: Method | None = None
        if _nests(type(self.params)):
            self.inner = make_method(self.params.inner, dict(self.params.inner_options or {}))

    def describe(self) -> dict[str, Any]:
        """Parameters as a JSON-ready dict (stored in every result row)."""
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self.params).items()}

    @abstractmethod
    async def solve(self, ctx: Context) -> Outcome:
        """Solve one problem on the shared engine."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _nests(params_cls: type) -> bool:
    """True when a ``Params`` class names an inner method (fields ``inner`` and ``inner_options``)."""
    if not dataclasses.is_dataclass(params_cls):
        return False
    names = {f.name for f in dataclasses.fields(params_cls)}
    return {"inner", "inner_options"} <= names


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method selectable by name."""
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of all registered methods."""
    from . import _load_all

    _load_all()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    from . import _load_all

    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose from: {', '.join(sorted(_REGISTRY))}") from None


def make_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """Build a method from its name and options (values may be strings from the command line)."""
    cls = method_class(name)
    params = parse_params(cls, options or {})
    return cls(params)


def option_names(cls: type[Method]) -> list[str]:
    """Option names of a method, as the CLI spells them (``--snake-case``)."""
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(cls.Params)]


def parse_params(cls: type[Method], options: dict[str, Any]):
    """Turn an options dict into the method's ``Params``; unknown or ill-typed options are user errors.

    For a method that nests another (see :class:`Method`), options it does not take are forwarded
    to the inner method, checked there, and stored in ``inner_options`` with all of the inner
    method's settings (so ``--method ffs --inner budget --max-thinking-tokens 32`` works).
    """
    hints = typing.get_type_hints(cls.Params)
    known = {f.name for f in dataclasses.fields(cls.Params)}
    nests = _nests(cls.Params)
    kwargs: dict[str, Any] = {}
    forward: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = raw_key.lstrip("-").replace("-", "_")
        if key not in known:
            if nests:
                forward[key] = value
                continue
            opts = ", ".join(option_names(cls)) or "none"
            raise UserError(f"unknown option --{key.replace('_', '-')} for method {cls.name} (options: {opts})")
        kwargs[key] = _convert(value, hints[key], key)
    if nests:
        inner_name = kwargs.get("inner", _field_default(cls.Params, "inner"))
        inner_cls = method_class(inner_name)
        try:
            inner_params = parse_params(inner_cls, {**(kwargs.get("inner_options") or {}), **forward})
        except UserError as exc:
            raise UserError(f"{exc} [{inner_name} runs inside {cls.name}]") from None
        kwargs["inner_options"] = dataclasses.asdict(inner_params)
    try:
        params = cls.Params(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad options for method {cls.name}: {exc}") from None
    check = getattr(params, "validate", None)
    if check is not None:
        check()
    return params


def _field_default(params_cls: type, name: str) -> Any:
    """The default value of one field of a ``Params`` dataclass."""
    f = next(f for f in dataclasses.fields(params_cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a command-line string (or a Python value) to the annotated type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if (origin is dict or tp is dict) and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UserError(f"--{key.replace('_', '-')} expects a JSON object, got {value!r}")
        return parsed
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"--{key.replace('_', '-')} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if origin in (tuple, list):
        # Only command-line text is split and trimmed; Python values (e.g. "\n\n") are kept as given.
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        elem = args[0] if args else str
        items = [_convert(v, elem, key) for v in items]
        return tuple(items) if origin is tuple else items
    if not isinstance(value, str):
        return value
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float):
            return tp(value)
        if tp is str:
            return value.encode().decode("unicode_escape") if "\\n" in value else value
    except ValueError:
        raise UserError(f"--{key.replace('_', '-')} expects {tp.__name__}, got {value!r}") from None
    return value
