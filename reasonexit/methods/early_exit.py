"""The early-exit controller shared by DEER, FlashThink and any method that stops thinking early.

An early-exit method only says two things, through :class:`ExitHooks`:

- ``boundary(trace, think_from) -> cut | None``: called after each new thinking token; returns
  the index in the trace where a check may cut the thinking (DEER: before a transition word;
  FlashThink: after a chunk delimiter), or ``None``.
- ``judge(ctx, trace, cut) -> Verdict``: whether to exit at that cut (DEER: a probe and its
  acceptance rule; FlashThink: a verifier's score).

:func:`run_early_exit` does everything else: it decodes the trace (following thinking with
:class:`~reasonexit.thinking.ThinkingTracker`), launches checks, settles their verdicts in trace
order (the first exit verdict wins, whatever order the checks finish in), enforces the limits
(``max_checks`` per problem, a thinking budget of ``budget_ratio`` x ``max_tokens``, and the safety
exits of :mod:`reasonexit.methods.safety`: a loop, a pattern, a thinking cap, each with its grace
tokens and wrap-up text), cuts the trace, closes thinking through
:func:`~reasonexit.thinking.closing_ids`, lets the model answer, and records every check with the
verifier's token and time accounting.

Modes (:data:`Mode`):

- ``sequential``: the trace pauses while a check runs (the papers' semantics).
- ``parallel`` (branch-parallel): the trace keeps decoding while its checks run; an exit aborts it
  and the tokens decoded past the cut are counted as compute (``discarded_tokens``).
- ``auto`` (default): branch-parallel on GPU, and on CPU when the checks run on another engine
  or endpoint (FlashThink's ``model`` / ``trained`` / ``served`` verifiers); sequential when the
  checks share the CPU engine with the trace: there decoding is compute-bound, so overlapping
  checks with decoding costs compute instead of hiding latency; with a verifier in its own engine
  process, its work overlaps the trace's on the other core (figures: docs/results.md).

Under greedy decoding both modes make the same exits (decisions are taken in trace order).

Streaming: when the context has a token sink (:attr:`~reasonexit.methods.base.Context.token_sink`,
set by ``reasonexit serve``), the controller hands it each token once no exit can remove it any
more: thinking up to the earliest cut that a pending check, or a boundary still to come, could
take (a hook's ``hold``: how far before the newest token a future cut may lie; DEER cuts before
its transition phrase, FlashThink after its delimiter), then on exit the closing tokens and the
answer as it decodes (without exit, the rest of the trace when it ends). The sink changes no
decision and no count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..engine import platform as device
from ..errors import UserError
from ..thinking import ThinkingTracker, closing_ids
from .base import Context, ExitReason, Method, Outcome
from .safety import SafetyWatch

if TYPE_CHECKING:
    from ..engine import EngineSession

#: How the trace and its checks share the engine (see the module docstring).
Mode = Literal["auto", "sequential", "parallel"]


@dataclass
class Verdict:
    """A check's decision at one cut.

    ``record`` is the method's JSON-ready record of the check (the controller adds ``pos`` when
    missing and ``exit``). ``reason`` is the exit reason when ``exit`` is true (a forced exit may say
    ``budget``). ``tokens`` / ``prompt_tokens`` are what the check decoded / sent as prompt;
    ``wall_s`` is filled by the controller.
    """

    exit: bool
    record: dict[str, Any] = field(default_factory=dict)
    reason: ExitReason = ExitReason.CONFIDENT
    tokens: int = 0
    prompt_tokens: int = 0
    wall_s: float = 0.0


class ExitHooks(Protocol):
    """What an early-exit method plugs into the controller (one object per problem).

    Hooks may also have an ``int`` attribute ``hold`` (0 when absent): a cut returned by a later
    ``boundary`` call lies at most ``hold`` tokens before the trace's newest token at the time of
    this call, so only the newest ``hold`` tokens can still be cut by a check yet to come.
    """

    def boundary(self, trace: list[int], think_from: int) -> int | None:
        """If the trace's newest token completes a check point, the cut index; else ``None``."""
        ...

    async def judge(self, ctx: Context, trace: list[int], cut: int) -> Verdict:
        """Decide whether to exit with thinking cut at ``trace[:cut]``."""
        ...


@dataclass
class ExitLimits:
    """Limits the controller enforces for every early-exit method.

    ``max_checks``: checks per problem at most. ``budget_ratio``: exit regardless once thinking
    reaches this fraction of ``max_tokens`` (1: only the token limit). ``check_at_end``: also
    judge the trace's end when the model stops (end of sequence or token limit) still thinking,
    whatever ``max_checks`` says.
    ``records_key``: the ``info`` key the check records go under. ``checks_elsewhere``: the
    checks run on another engine or endpoint than the trace (see :func:`resolve_mode`).
    """

    max_checks: int = 64
    budget_ratio: float = 0.9
    mode: Mode = "auto"
    #: The checks run on another engine or endpoint than the trace (``auto`` then overlaps them).
    checks_elsewhere: bool = False
    check_at_end: bool = False
    records_key: str = "checks"
    #: End thinking at this many thinking tokens (the ``budget`` method's cap), with the safety
    #: exits' grace and wrap-up (:mod:`reasonexit.methods.safety`).
    thinking_cap: int | None = None


def validate_limits(max_checks: int, budget_ratio: float, option: str = "--max-checks") -> None:
    """Reject impossible limits (shared by every early-exit method's ``validate``)."""
    if max_checks < 0:
        raise UserError(f"{option} must be >= 0")
    if not 0 < budget_ratio <= 1:
        raise UserError("--budget-ratio must be in (0, 1]")


def resolve_mode(mode: Mode, checks_elsewhere: bool = False) -> Literal["sequential", "parallel"]:
    """``auto`` becomes ``parallel`` on GPU or when the checks run elsewhere, else ``sequential``."""
    if mode == "auto":
        return "parallel" if device.on_gpu() or checks_elsewhere else "sequential"
    return mode


class EarlyExitMethod(Method):
    """Base class of methods run by :func:`run_early_exit`: subclasses give hooks and limits."""

    def hooks(self, ctx: Context) -> ExitHooks:
        """The per-problem hooks (``boundary`` and ``judge``)."""
        raise NotImplementedError

    def limits(self, session: EngineSession | None = None) -> ExitLimits:
        """The controller limits from the method's parameters (for the reasoning model of ``session``)."""
        raise NotImplementedError

    async def solve(self, ctx: Context) -> Outcome:
        """Decode with early-exit checks (see :func:`run_early_exit`)."""
        ctx.session.markers.require_span(self.name)
        return await run_early_exit(ctx, self.hooks(ctx), self.limits(ctx.session))


async def _timed(hooks: ExitHooks, ctx: Context, trace: list[int], cut: int) -> Verdict:
    start = time.perf_counter()
    verdict = await hooks.judge(ctx, trace, cut)
    verdict.wall_s = time.perf_counter() - start
    return verdict


async def run_early_exit(ctx: Context, hooks: ExitHooks, limits: ExitLimits) -> Outcome:
    """Solve one problem: decode, check at boundaries, exit at the first exit verdict, answer.

    The outcome's ``info`` holds the check records (under ``limits.records_key``), the mode,
    ``exit_pos`` (thinking tokens kept, ``None`` without an exit), ``discarded_tokens`` (main-trace
    tokens decoded and thrown away: past the exit, or streamed past a sequential pause) and the
    verifier's accounting: ``verifier_tokens`` (decoded), ``verifier_prompt_tokens`` and
    ``verifier_wall_s`` summed over every check that ran to its end, including those that ended
    after an earlier check's exit was settled (``unsettled_checks``: they have no record).
    """
    return await _ExitRun(ctx, hooks, limits).solve()


class _ExitRun:
    """One problem under the early-exit controller; its state is these fields, not locals."""

    def __init__(self, ctx: Context, hooks: ExitHooks, limits: ExitLimits) -> None:
        self.ctx, self.hooks, self.limits = ctx, hooks, limits
        self.session = ctx.session
        self.mode = resolve_mode(limits.mode, limits.checks_elsewhere)
        self.sequential = self.mode == "sequential"
        self.max_tokens = ctx.decoding.max_tokens
        # budget_ratio 1 means no thinking budget beyond the token limit itself.
        self.budget = max(1, int(limits.budget_ratio * self.max_tokens)) if limits.budget_ratio < 1 else None
        self.trace: list[int] = []
        self.tracker = ThinkingTracker.for_markers(self.session.markers)
        self.sink = ctx.token_sink is not None
        self.hold = max(0, int(getattr(hooks, "hold", 0)))
        self.emitted = 0  # trace tokens handed to the token sink
        self.pending: deque[tuple[int, asyncio.Task[Verdict]]] = deque()
        self.settled: list[tuple[int, Verdict]] = []
        self.launched = 0
        self.chosen: tuple[int, Verdict] | None = None  # the first exit verdict, at its cut
        self.budget_cut: int | None = None  # a forced exit (budget or safety) cuts here
        self.forced_reason = ExitReason.BUDGET
        self.watch = SafetyWatch.for_run(self.session, ctx.decoding, limits.thinking_cap)
        self.main_finish: str | None = None  # the trace's own finish reason, when it ended
        self.segment = 0
        self.dropped = 0  # main-trace tokens decoded past a pause or the budget and thrown away

    @property
    def stopped(self) -> bool:
        """An exit was chosen, the budget was spent, or the trace ended."""
        return self.chosen is not None or self.budget_cut is not None or self.main_finish is not None

    async def solve(self) -> Outcome:
        """Decode with checks, then answer: after the exit if there was one."""
        try:
            await self._decode()
        finally:
            await self._cancel_pending()
        info = self._info()
        if self.chosen is not None:
            exit_cut, reason = self.chosen[0], self.chosen[1].reason
        elif self.budget_cut is not None:
            exit_cut, reason = self.budget_cut, self.forced_reason
        else:
            info["exit_pos"] = None
            self.ctx.emit(self.trace[self.emitted :])
            finished = self.main_finish == "stop"
            return Outcome(self.trace, ExitReason.from_finish(self.main_finish).value, info=info, finished=finished)
        return await self._answer(exit_cut, reason, info)

    def _emit_final(self) -> None:
        """Hand the sink the trace tokens no exit can cut any more (see the module docstring)."""
        end = len(self.trace)
        if self.tracker.in_thinking:
            end = max(self.tracker.think_from or 0, end - self.hold)
        for cut, _ in self.pending:
            end = min(end, cut)
        if end > self.emitted:
            self.ctx.emit(self.trace[self.emitted : end])
            self.emitted = end

    def _launch(self, cut: int) -> None:
        self.launched += 1
        self.pending.append((cut, asyncio.ensure_future(_timed(self.hooks, self.ctx, list(self.trace), cut))))

    async def _settle(self, block: bool) -> tuple[int, Verdict] | None:
        """Take finished verdicts in trace order; return the first exit (cut, verdict)."""
        while self.pending and (block or self.pending[0][1].done()):
            cut, task = self.pending.popleft()
            verdict = await task
            self.settled.append((cut, verdict))
            if verdict.exit:
                return cut, verdict
        return None

    async def _decode(self) -> None:
        """Decode the trace in segments (a sequential check pauses it) until it stops."""
        while not self.stopped:
            await self._segment()
            if self.chosen is not None or self.budget_cut is not None:
                break
            # Sequential pause, or the end of the trace: earlier checks may still call an exit.
            self.chosen = await self._settle(block=True)
            if self.sink and self.chosen is None and self.main_finish is None:
                self._emit_final()
            if self.chosen is None and self.main_finish is not None and self.limits.check_at_end:
                await self._check_at_end()
        if self.chosen is None and self.budget_cut is not None:
            self.chosen = await self._settle(block=True)

    async def _check_at_end(self) -> None:
        """The trace ended inside its thinking: one last check on all of it."""
        tracker, trace = self.tracker, self.trace
        if not tracker.in_thinking:
            return
        end = len(trace) - (1 if trace and trace[-1] in self.session.eos_ids else 0)
        if end > (tracker.think_from or 0):
            self._launch(end)
            self.chosen = await self._settle(block=True)

    async def _segment(self) -> None:
        """Decode one request of the trace, until it ends, an exit is chosen, the budget is spent or
        a sequential check pauses it."""
        ctx = self.ctx
        room = ctx.room(self.max_tokens, len(self.trace))
        # A resumed segment (sequential mode) gets its own seed so sampling does not repeat itself.
        params = ctx.output_sampling(max_tokens=room, seed=ctx.seed + self.segment)
        request = ctx.request_id(f"main{self.segment}")
        async with contextlib.aclosing(
            self.session.stream([*ctx.prompt_ids, *self.trace], params, ctx.usage, request)
        ) as st:
            self.segment += 1
            async for d in st:
                taken, paused = self._take(d.token_ids)
                if paused or self.budget_cut is not None:
                    self.dropped += len(d.token_ids) - taken  # decoded in this delta past the stop: thrown away
                    break
                self.chosen = await self._settle(block=False)
                if self.chosen is not None:
                    break
                if d.finish_reason is not None:
                    self.main_finish = d.finish_reason
                elif self.sink:  # not at the end: a check at the end may still cut the last token
                    self._emit_final()

    def _take(self, tokens: list[int]) -> tuple[int, bool]:
        """Append a delta's tokens, launching checks at boundaries; (tokens taken, paused). Stops
        early at the thinking budget, or at a boundary in sequential mode."""
        trace, tracker = self.trace, self.tracker
        taken = 0
        for tok in tokens:
            taken += 1
            trace.append(tok)
            tracker.feed(tok)
            if not tracker.in_thinking:
                continue
            assert tracker.think_from is not None
            if self.budget is not None and tracker.thinking_tokens >= self.budget:
                self.budget_cut = len(trace)
                return taken, False
            if self.watch is not None:
                why = self.watch.feed(trace, tracker.think_from, tracker.thinking_tokens)
                if why is not None:
                    self.budget_cut, self.forced_reason = len(trace), why
                    return taken, False
            if self.launched < self.limits.max_checks:
                cut = self.hooks.boundary(trace, tracker.think_from)
                if cut is not None:
                    self._launch(cut)
                    if self.sequential:
                        return taken, True
        return taken, False

    async def _cancel_pending(self) -> None:
        for _, task in self.pending:
            task.cancel()
        for _, task in self.pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _info(self) -> dict[str, Any]:
        """The records and the verifier's accounting (see :func:`run_early_exit`)."""
        # Checks that finished after the deciding one was settled: never decided anything, but what
        # they decoded and read counts in the verifier's accounting (it is already in ``ctx.usage``).
        pending = self.pending
        unsettled = [t.result() for _, t in pending if t.done() and not t.cancelled() and t.exception() is None]
        think_from = self.tracker.think_from or 0
        judged = [v for _, v in self.settled] + unsettled
        records = []
        for cut, verdict in self.settled:
            rec = dict(verdict.record)
            rec.setdefault("pos", cut - think_from)
            rec["exit"] = verdict.exit
            records.append(rec)
        return {
            self.limits.records_key: records,
            "mode": self.mode,
            "verifier_tokens": sum(v.tokens for v in judged),
            "verifier_prompt_tokens": sum(v.prompt_tokens for v in judged),
            "verifier_wall_s": round(sum(v.wall_s for v in judged), 4),
            "unsettled_checks": len(unsettled),
            "discarded_tokens": self.dropped,
        }

    async def _answer(self, exit_cut: int, reason: ExitReason, info: dict[str, Any]) -> Outcome:
        """Close thinking after the kept prefix and let the model write its answer."""
        ctx, session, trace = self.ctx, self.session, self.trace
        wrap: list[int] = []
        if ctx.decoding.wrap_up and reason != ExitReason.CONFIDENT:  # its own paragraph unless it says otherwise
            text = ctx.decoding.wrap_up
            wrap = session.encode(text if text[:1].isspace() else "\n\n" + text)
        head = [*trace[:exit_cut], *wrap, *closing_ids(session.encode, session.markers)]
        if self.watch is not None and self.watch.reason is not None:
            info["safety"] = self.watch.record
        info["exit_pos"] = exit_cut - (self.tracker.think_from or 0)
        info["discarded_tokens"] = self.dropped + len(trace) - exit_cut
        if self.emitted > exit_cut:  # a hook's ``hold`` was too small: streamed tokens were cut
            raise RuntimeError(
                f"streamed {self.emitted} trace tokens but the exit cut at {exit_cut}: a hook's hold is wrong"
            )
        ctx.emit(head[self.emitted :])
        answer = await ctx.complete(
            [*ctx.prompt_ids, *head],
            # the answer gets what is left of max_tokens (budget_ratio < 1 keeps some for it)
            ctx.output_sampling(
                max_tokens=ctx.room(max(1, self.max_tokens - len(head)), len(head)), seed=ctx.seed + 1_000_000
            ),
            ctx.request_id("answer"),
        )
        return Outcome([*head, *answer.token_ids], reason.value, info=info, finished=answer.finish_reason == "stop")


class NoChecks:
    """Hooks without check points: the controller then only decodes, with its budget and safety exits."""

    hold = 0

    def boundary(self, trace: list[int], think_from: int) -> int | None:
        """Never a check point."""
        return None

    async def judge(self, ctx: Context, trace: list[int], cut: int) -> Verdict:  # pragma: no cover - never called
        """Never called."""
        return Verdict(exit=False)
