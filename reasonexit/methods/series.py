"""Exit rules on the *series* of checks so far: the base of ``dynasor``, ``consistency`` and ``entropy``.

DEER decides at one transition from one probe. The rules here look back: Dynasor-CoT wants the
last few trial answers to agree, ES-CoT a long run of identical answers, EAT a settled entropy.
They plug into the shared early-exit controller (:mod:`reasonexit.methods.early_exit`) the same
way, with two methods of their own:

- :meth:`SeriesMethod.measure` takes one reading at a cut (a trial answer, an entropy);
- :meth:`SeriesMethod.decide` says, from every reading up to this one, whether to exit here.

A check may finish before an earlier one in ``parallel`` mode, so each judge waits for the
readings before its own before it decides: the decision at a cut always sees the series in
trace order, as under ``sequential`` mode.

:class:`TrialProbeParams` holds the options of a trial-answer probe; the probe itself is DEER's
(:meth:`reasonexit.methods.deer.Deer._probe`: the inducer after the cut, the greedy trial answer
read from its box, its logprobs), so every probing method states and reads answers alike.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..engine import EngineSession
from ..errors import UserError
from ..options import opt
from .base import Context
from .deer import DEFAULT_CHOICE_INDUCER, DEFAULT_INDUCER, Deer, DeerParams, Probe, TransitionMatcher
from .early_exit import EarlyExitMethod, ExitHooks, ExitLimits, Mode, Verdict, validate_limits


@dataclass
class Reading:
    """One check's measurement: its value (an answer, an entropy), record and cost."""

    value: Any
    record: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    prompt_tokens: int = 0


@dataclass
class SeriesParams:
    """The controller options every series method takes."""

    max_probes: int = opt(64, help="checks per problem at most")
    budget_ratio: float = opt(
        0.9, help="exit regardless once thinking reaches this fraction of max_tokens (1: no budget)"
    )
    mode: Mode = opt(
        "auto",
        help="sequential (pause while checking), parallel (decode on while checking) "
        "or auto (sequential on CPU, parallel on GPU)",
    )

    def validate(self) -> None:
        """Reject impossible limits."""
        validate_limits(self.max_probes, self.budget_ratio, "--max-probes")


@dataclass
class TrialProbeParams(SeriesParams):
    """Options of the trial-answer probe (DEER's) for the methods that compare answers."""

    inducer: str = opt(DEFAULT_INDUCER, help="text that makes the model state its answer (math)")
    choice_inducer: str = opt(DEFAULT_CHOICE_INDUCER, help="text that makes the model state its answer (choice sets)")
    probe_tokens: int = opt(20, help="at most this many tokens of trial answer")

    def validate(self) -> None:
        """Reject impossible limits and probe lengths."""
        super().validate()
        if self.probe_tokens < 1:
            raise UserError("--probe-tokens must be >= 1")


class SeriesMethod(EarlyExitMethod):
    """An early-exit method whose decision reads the series of readings so far."""

    needs_thinking = True

    def boundary(self, session: EngineSession) -> tuple[Any, int]:
        """``(match, hold)``: ``match(trace, think_from) -> cut | None`` for this session's model,
        and how far before the newest token a later cut may lie (see :class:`ExitHooks`)."""
        raise NotImplementedError

    def transition_boundary(
        self, session: EngineSession, transitions: tuple[str, ...], paragraph_breaks: bool
    ) -> tuple[Any, int]:
        """DEER's transition matcher (a cut before the word; after a paragraph break), one per session."""
        matchers: dict[int, TransitionMatcher] = self.__dict__.setdefault("_matchers", {})
        if id(session) not in matchers:
            matchers[id(session)] = TransitionMatcher(session, transitions, paragraph_breaks)
        matcher = matchers[id(session)]
        return matcher.match, max((len(x) for x in matcher.patterns), default=1) - 1

    async def measure(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Reading:
        """One reading with thinking cut at ``trace[:cut]``."""
        raise NotImplementedError

    def decide(self, values: list[Any]) -> tuple[bool, dict[str, Any]]:
        """Whether to exit at the newest of ``values`` (in trace order), and what to record of the rule."""
        raise NotImplementedError

    def hooks(self, ctx: Context) -> ExitHooks:
        """The method's boundary; a judge that measures, waits for the earlier readings and decides."""
        match, hold = self.boundary(ctx.session)
        return _SeriesHooks(self, match, hold)

    def limits(self, session: EngineSession | None = None) -> ExitLimits:
        """The probe limit, thinking budget and mode for the shared controller."""
        p = self.params
        return ExitLimits(max_checks=p.max_probes, budget_ratio=p.budget_ratio, mode=p.mode, records_key="probes")


class TrialAnswerMethod(SeriesMethod):
    """A series method whose readings are DEER-style trial answers (value: the answer text)."""

    def __init__(self, params: Any | None = None) -> None:
        super().__init__(params)
        p = self.params
        self._prober = Deer(DeerParams(inducer=p.inducer, choice_inducer=p.choice_inducer, probe_tokens=p.probe_tokens))

    async def probe(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Probe:
        """DEER's trial-answer probe after ``trace[:cut]``."""
        return await self._prober._probe(ctx, trace, cut, think_from)

    async def measure(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Reading:
        """A trial answer, recorded as DEER records its probes."""
        probe = await self.probe(ctx, trace, cut, think_from)
        inducer = self._prober._inducer(ctx)
        return Reading(
            value=self.value_of(probe),
            record=probe.record(),
            tokens=probe.tokens,
            prompt_tokens=len(ctx.prompt_ids) + cut + len(ctx.session.encode(inducer)),
        )

    def value_of(self, probe: Probe) -> Any:
        """What the rule compares (the answer text by default)."""
        return probe.answer


class _SeriesHooks:
    """One problem's hooks: readings in trace order, each judge deciding on the series up to it."""

    def __init__(self, method: SeriesMethod, match: Any, hold: int) -> None:
        self.method = method
        self.match = match
        self.hold = hold
        self.think_from = 0
        self.readings: list[asyncio.Future[Reading]] = []

    def boundary(self, trace: list[int], think_from: int) -> int | None:
        """The method's check points."""
        self.think_from = think_from
        return self.match(trace, think_from)

    async def judge(self, ctx: Context, trace: list[int], cut: int) -> Verdict:
        """Measure here, then decide on this reading and every earlier one."""
        mine: asyncio.Future[Reading] = asyncio.get_running_loop().create_future()
        earlier = list(self.readings)
        self.readings.append(mine)
        try:
            reading = await self.method.measure(ctx, trace, cut, self.think_from)
        except BaseException:
            # the later judges stop waiting; this judge's own error reaches the controller first,
            # since it settles checks in trace order
            mine.cancel()
            raise
        mine.set_result(reading)
        series = [(await f).value for f in earlier] + [reading.value]
        exit_now, rule = self.method.decide(series)
        return Verdict(
            exit=exit_now,
            record={**reading.record, **rule},
            tokens=reading.tokens,
            prompt_tokens=reading.prompt_tokens,
        )
