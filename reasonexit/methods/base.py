"""The method interface: a method is a named set of parameters plus a controller coroutine.

A controller solves one problem: it gets a :class:`Context` (the shared engine session, the
prompt's token ids, decoding settings, a seed and the problem's :class:`~reasonexit.engine.Usage`
ledger) and returns an :class:`Outcome` (the completion token ids handed to the user, why it
stopped, and method-specific records). Methods that run other methods inside them (e.g. First
Finish Search over DEER branches) call the inner method's :meth:`Method.solve` with a
:meth:`Context.derive` of their own context; the shared ledger makes the accounting add up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from .. import step_rules
from ..engine import Completion, EngineSession, Usage
from ..errors import UserError, first_line
from ..options import check_at_least, convert, opt
from ..registry import Registry, register_in

#: Reflection words NoWait (arXiv 2506.08343) bars, as they open R1-style re-checks.
REFLECTION_WORDS: tuple[str, ...] = ("Wait", "wait", "Hmm", "hmm", "Alternatively", "alternatively")


@dataclass
class Decoding:
    """Sampling settings shared by all methods (temperature 0 means greedy)."""

    temperature: float = opt(0.0, help="sampling temperature; 0 means greedy")
    top_p: float = opt(1.0, help="nucleus sampling: keep the smallest token set with this much probability")
    max_tokens: int = opt(2048, help="cap on generated tokens per problem (thinking and answer)")
    seed: int = opt(0, help="seed of the engine and of every sampled request")
    top_k: int = opt(-1, help="sample from the k most likely tokens only (-1: no limit)")
    suppress_reflection: bool = opt(
        False,
        help="bar the reflection words (--reflection-words) from the trace and answer (NoWait), "
        "with vLLM's own bad_words (both model runners); probes and verifiers are not barred",
    )
    reflection_words: tuple[str, ...] = opt(
        REFLECTION_WORDS, help="the words --suppress-reflection bars (each also after a space)"
    )
    on_repetition: int = opt(
        0,
        help="end thinking, then answer, when its last N tokens repeat a block of at most N/2 tokens "
        "back to back (0: off; 64 is a fair start)",
    )
    on_pattern: str = opt("", help="end thinking, then answer, once the newest thinking matches this regex")
    wrap_up: str = opt(
        "",
        help="text written before the end-of-thinking marker when a safety exit or a thinking budget ends "
        "thinking, e.g. 'Considering the limited time, I have to give the answer now.'",
    )
    grace_tokens: int = opt(
        0, help="after a safety exit or budget fires, up to N more thinking tokens to finish the sentence"
    )

    def __post_init__(self) -> None:
        """Check the settings before any engine starts: ``max_tokens``, then the rest with vLLM's
        own ``SamplingParams`` validation (no engine needed); one-line :class:`UserError` s."""
        check_at_least("max_tokens", self.max_tokens, 1, rule="be an integer >= 1")
        check_at_least("on_repetition", self.on_repetition, 0)
        if 0 < self.on_repetition < 4:
            raise UserError("--on-repetition must be 0 (off) or at least 4 tokens")
        check_at_least("grace_tokens", self.grace_tokens, 0)
        if self.on_pattern:
            import re

            try:
                re.compile(self.on_pattern)
            except re.error as exc:
                raise UserError(f"--on-pattern is not a regular expression: {exc}") from None
        if self.suppress_reflection:
            words = self.barred_words
            if not words:
                raise UserError("--suppress-reflection needs at least one --reflection-words entry")
            # vLLM bars each word bare and after a space, and its GPU model runner (V2) holds at
            # most VLLM_MAX_NUM_BAD_WORDS sequences a request; the CPU runner has no such limit
            from vllm import envs

            if 2 * len(words) > envs.VLLM_MAX_NUM_BAD_WORDS:
                raise UserError(
                    f"--reflection-words: {len(words)} words make {2 * len(words)} barred sequences, "
                    f"more than vLLM's VLLM_MAX_NUM_BAD_WORDS ({envs.VLLM_MAX_NUM_BAD_WORDS})"
                )
        from vllm import SamplingParams

        try:
            SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)
        except Exception as exc:  # noqa: BLE001 - vLLM's VLLMValidationError is not a ValueError
            raise UserError(f"bad sampling settings: {first_line(exc)}") from None

    @property
    def barred_words(self) -> list[str]:
        """The reflection words ``--suppress-reflection`` bars (blank entries dropped)."""
        return [w.strip() for w in self.reflection_words if w.strip()]


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
    #: Where the completion's *final* tokens go as soon as they are final (a server streams them);
    #: ``None`` (evaluation) costs nothing. Called on the engine loop with new token ids, in order;
    #: over a solve, the calls add up to exactly the returned ``Outcome.token_ids`` (a controller
    #: that feeds nothing is streamed from its outcome when it returns). Sub-controllers
    #: (:meth:`derive`) get none: their tokens are not the user's until their parent says so.
    token_sink: Callable[[list[int]], None] | None = field(default=None, repr=False)
    #: Stop strings of the request (``reasonexit serve``'s ``stop``): they apply to the requests
    #: whose tokens the user gets (:meth:`output_sampling`), never to probes or verifier calls.
    stop: tuple[str, ...] = ()

    def sampling(self, **overrides: Any):
        """vLLM ``SamplingParams`` for this context's decoding settings and seed."""
        from vllm import SamplingParams

        dec = self.decoding
        args: dict[str, Any] = dict(
            temperature=dec.temperature,
            top_p=dec.top_p if dec.temperature > 0 else 1.0,
            top_k=dec.top_k if dec.temperature > 0 else -1,
            max_tokens=self.room(dec.max_tokens),
            seed=self.seed,
            stop_token_ids=self.session.eos_ids,
            skip_special_tokens=False,
            detokenize=False,
            skip_clone=True,  # built for one request: the engine need not deep-copy it
        )
        args.update(overrides)
        return SamplingParams(**args)

    def output_sampling(self, **overrides: Any):
        """:meth:`sampling` for a request whose tokens go to the user (a trace, an answer): the
        context's stop strings apply. vLLM checks them on the request's text and ends the request
        with the token that completes one; that token stays in the completion (reasonexit works in
        token ids), so the text keeps the stop string, as vLLM's ``include_stop_str_in_output``."""
        if self.stop:
            overrides = {"stop": list(self.stop), "detokenize": True, "include_stop_str_in_output": True, **overrides}
        if self.decoding.suppress_reflection:
            overrides = {"bad_words": self.decoding.barred_words, **overrides}
        return self.sampling(**overrides)

    def room(self, max_tokens: int, used: int = 0) -> int:
        """``max_tokens`` capped so prompt + ``used`` + new tokens fit in the context."""
        left = self.session.max_model_len - len(self.prompt_ids) - used
        return max(1, min(max_tokens, left))

    def derive(self, seed: int, prefix: str) -> Context:
        """A context for a sub-controller: same prompt and ledger, its own seed and request ids, no token sink."""
        return dataclasses.replace(self, seed=seed, request_prefix=f"{self.request_prefix}.{prefix}", token_sink=None)

    def emit(self, ids: Sequence[int]) -> None:
        """Hand final completion tokens to the token sink, if any."""
        if self.token_sink is not None and ids:
            self.token_sink(list(ids))

    async def complete(self, prompt_ids: Sequence[int], params: Any, request_id: str) -> Completion:
        """Run one request to its end (on this context's ledger), handing each token to the token
        sink as it is decoded: use it for a request whose every token goes to the user as is."""
        if self.token_sink is None:
            return await self.session.complete(prompt_ids, params, self.usage, request_id)
        ids: list[int] = []
        reason = None
        async with contextlib.aclosing(self.session.stream(prompt_ids, params, self.usage, request_id)) as st:
            async for d in st:
                ids.extend(d.token_ids)
                reason = d.finish_reason or reason
                self.emit(d.token_ids)
        return Completion(ids, None, reason)

    def request_id(self, what: str) -> str:
        """A unique request id that names the problem and the purpose of the request."""
        return self.session.new_request_id(f"{self.request_prefix}.{what}")


class ExitReason(StrEnum):
    """Why thinking (or the whole completion) ended; the values are the strings stored in rows."""

    CONFIDENT = "confident"  # a check decided to exit
    BUDGET = "budget"  # the thinking budget was spent
    EOS = "eos"  # the model ended by itself
    LENGTH = "length"  # the token limit stopped the model
    ERROR = "error"  # the problem's controller raised (the row's ``error`` says why)
    REPETITION = "repetition"  # a safety exit: the thinking looped (``--on-repetition``)
    PATTERN = "pattern"  # a safety exit: the thinking matched ``--on-pattern``

    @classmethod
    def from_finish(cls, finish_reason: str | None) -> ExitReason:
        """The reason for a request that ended on its own (vLLM ``finish_reason``)."""
        return cls.EOS if finish_reason == "stop" else cls.LENGTH


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
    #: True for methods that act on the thinking span (they fail on a model without one).
    needs_thinking: ClassVar[bool] = False

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()
        #: The method run inside this one (``None`` for methods that nest nothing).
        self.inner: Method | None = None
        if _nests(type(self.params)):
            self.inner = make_method(self.params.inner, dict(self.params.inner_options or {}))
        # Engines started from now on register the per-step rules this method needs.
        step_rules.require(self.step_rules())

    def step_rules(self) -> tuple[str, ...]:
        """Names of the per-step rules (:mod:`reasonexit.step_rules`) this method, and any inner one, uses."""
        return self.inner.step_rules() if self.inner is not None else ()

    def describe(self) -> dict[str, Any]:
        """Parameters as a JSON-ready dict (stored in every result row)."""
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self.params).items()}

    def check_model(self, has_thinking: bool) -> None:
        """Raise a :class:`UserError` before any engine starts if this method (or the one it runs
        inside itself) cannot work on the model (e.g. DEER on a model without thinking)."""
        if self.needs_thinking and not has_thinking:
            raise UserError(f"method {self.name} needs a reasoning model: this model has no thinking span")
        if self.inner is not None:
            self.inner.check_model(has_thinking)

    async def prepare(self, session: EngineSession) -> None:
        """Set up, before the first problem starts, what the method needs beside the engine (a
        verifier engine, say), so no problem's trace decodes on while it starts. Runs the inner
        method's ``prepare`` by default."""
        if self.inner is not None:
            await self.inner.prepare(session)

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


#: Methods by name: the built-in ones load on first use (see :mod:`reasonexit.methods`).
METHODS: Registry[type[Method]] = Registry("method")
#: Class decorator: make a method selectable by its ``name``.
register = register_in(METHODS)


def method_names() -> list[str]:
    """Names of all registered methods."""
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    """The method class registered under ``name``."""
    return METHODS.get(name)


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
        kwargs[key] = convert(value, hints[key], "--" + key.replace("_", "-"))
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
