"""``deer``: Dynamic Early Exit in Reasoning Models (Yang et al., 2025).

While the model thinks, every transition point ("Wait" by default) is a chance to stop. At a
transition, a probe request continues the trace *up to, not including,* the transition word with
an answer inducer (``\\n**Final Answer**\\n\\boxed{``) and greedily writes a trial answer. Its
confidence is the mean (or min, or geometric mean) probability of the trial-answer tokens. If it
reaches the threshold, thinking is closed right there (``\\n</think>\\n\\n`` from the model's own
markers) and the model writes its final answer; otherwise thinking goes on.

Speed: the probe shares the trace through vLLM's prefix cache, and by default the main trace
keeps decoding while its probe runs (branch-parallel); an exit aborts it. Decisions are still
taken in trace order (the first confident transition wins), so under greedy decoding the
branch-parallel and ``sequential`` (pause-while-probing, the paper's semantics) modes make the
same exits. Compute tokens count the probes and every main-trace token decoded past the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine import EngineSession
from ..errors import UserError
from ..thinking import find_subsequence
from .base import Context, Method, Outcome, register

DEFAULT_INDUCER = "\n**Final Answer**\n\\boxed{"
DEFAULT_CHOICE_INDUCER = "\n**Final Answer**\nThe correct option is \\boxed{"


@dataclass
class DeerParams:
    """Parameters of DEER.

    - ``threshold``: exit when the trial answer's confidence is at least this (above 1: never).
    - ``confidence``: ``mean``, ``min`` or ``gmean`` of the trial-answer token probabilities.
    - ``transitions``: words that mark transition points (comma-separated on the command line).
    - ``paragraph_breaks``: also probe at every paragraph break in the thinking.
    - ``inducer`` / ``choice_inducer``: text that makes the model state its answer (math / choice sets).
    - ``probe_tokens``: at most this many tokens of trial answer.
    - ``require_closed``: a probe counts only if it closes its box.
    - ``require_end_think``: a probe counts only if the model, after its boxed answer, ends thinking
      within ``end_think_tokens`` tokens (a check for over-confident models).
    - ``max_probes``: probes per problem at most.
    - ``budget_ratio``: exit regardless once thinking reaches this fraction of ``max_tokens``
      (1: no budget but the token limit).
    - ``sequential``: pause the trace while a probe runs (the paper's semantics) instead of
      decoding on in parallel.
    """

    threshold: float = 0.95
    confidence: Literal["mean", "min", "gmean"] = "mean"
    transitions: tuple[str, ...] = ("Wait",)
    paragraph_breaks: bool = False
    inducer: str = DEFAULT_INDUCER
    choice_inducer: str = DEFAULT_CHOICE_INDUCER
    probe_tokens: int = 20
    require_closed: bool = False
    require_end_think: bool = False
    end_think_tokens: int = 8
    max_probes: int = 64
    budget_ratio: float = 0.9
    sequential: bool = False

    def validate(self) -> None:
        """Reject out-of-range values."""
        if self.threshold < 0:
            raise UserError("--threshold must be >= 0")
        if self.probe_tokens < 1 or self.max_probes < 0 or self.end_think_tokens < 1:
            raise UserError("--probe-tokens and --end-think-tokens must be >= 1, --max-probes >= 0")
        if not 0 < self.budget_ratio <= 1:
            raise UserError("--budget-ratio must be in (0, 1]")
        if not self.transitions and not self.paragraph_breaks:
            raise UserError("give --transitions or --paragraph-breaks: DEER needs transition points")


@dataclass
class Probe:
    """One trial answer: where it was taken, what it said, how sure the model was."""

    pos: int  # thinking tokens before the transition (the probed prefix length in the trace)
    cut: int  # index in the trace where the probed prefix ends
    answer: str
    confidence: float
    closed: bool
    ended_thinking: bool | None
    logprobs: list[float] = field(default_factory=list)  # of the trial-answer tokens
    tokens: int = 0  # tokens the probe decoded

    def record(self) -> dict[str, Any]:
        """JSON-ready record for the result's ``info``."""
        return {
            "pos": self.pos,
            "answer": self.answer,
            "confidence": round(self.confidence, 6),
            "closed": self.closed,
            "ended_thinking": self.ended_thinking,
            "logprobs": [round(x, 6) for x in self.logprobs],
            "tokens": self.tokens,
        }


def confidence_of(logprobs: list[float], how: str) -> float:
    """Confidence of a trial answer from its token logprobs (0 for an empty answer)."""
    if not logprobs:
        return 0.0
    if how == "mean":
        return sum(math.exp(x) for x in logprobs) / len(logprobs)
    if how == "min":
        return math.exp(min(logprobs))
    if how == "gmean":
        return math.exp(sum(logprobs) / len(logprobs))
    raise ValueError(f"unknown confidence {how!r}")


class TransitionMatcher:
    """Finds transition points in a growing token trace by token ids.

    Each transition word is encoded bare and after a space, a newline and a blank line, so a
    tokenizer that merges the lead into the word (``"\\nWait"`` as one token) still matches; the cut
    is placed before the first token that carries the word.
    """

    def __init__(self, session: EngineSession, words: tuple[str, ...], paragraph_breaks: bool) -> None:
        patterns: set[tuple[int, ...]] = set()
        for word in words:
            word = word.strip()
            if not word:
                continue
            for lead in ("", " ", "\n", "\n\n"):
                ids = session.encode(lead + word)
                lead_ids = session.encode(lead) if lead else []
                if lead_ids and ids[: len(lead_ids)] == lead_ids:
                    ids = ids[len(lead_ids) :]  # the lead is its own token(s): match the word alone
                if ids:
                    patterns.add(tuple(ids))
        self.patterns = sorted(patterns, key=len, reverse=True)
        self.break_ids: frozenset[int] = frozenset()
        if paragraph_breaks:
            vocab = session.tokenizer.get_vocab()
            self.break_ids = frozenset(i for i in vocab.values() if "\n\n" in session.decode([i]))

    def match(self, trace: list[int], floor: int) -> int | None:
        """If the trace's newest token completes a transition, the cut index (probe prefix length)."""
        n = len(trace)
        for pat in self.patterns:
            m = len(pat)
            if n - m >= floor and tuple(trace[n - m :]) == pat:
                return n - m
        if self.break_ids and trace and trace[-1] in self.break_ids and n > floor:
            return n  # paragraph break: the prefix includes the break
        return None


@register
class Deer(Method):
    """Exit thinking at a transition point once a trial answer is confident (DEER)."""

    name = "deer"
    Params = DeerParams
    needs_thinking = True

    def __init__(self, params: DeerParams | None = None) -> None:
        super().__init__(params)
        self._matchers: dict[int, TransitionMatcher] = {}

    def _matcher(self, session: EngineSession) -> TransitionMatcher:
        key = id(session)
        if key not in self._matchers:
            self._matchers[key] = TransitionMatcher(session, self.params.transitions, self.params.paragraph_breaks)
        return self._matchers[key]

    # ------------------------------------------------------------------ probe
    async def _probe(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Probe:
        """Ask for a trial answer after ``trace[:cut]`` and score it."""
        p, session = self.params, ctx.session
        inducer = p.choice_inducer if ctx.kind == "choice" else p.inducer
        prompt = [*ctx.prompt_ids, *trace[:cut], *session.encode(inducer)]
        extra = p.end_think_tokens if p.require_end_think else 0
        params = ctx.sampling(
            temperature=0.0,
            top_p=1.0,
            max_tokens=max(1, min(p.probe_tokens + extra, session.max_model_len - len(prompt))),
            logprobs=0,
            seed=None,
        )
        ids: list[int] = []
        lps: list[float] = []
        text = ""
        depth = 1  # the inducer opened a brace
        closed_at: int | None = None  # index in ids of the token holding the closing brace
        answer_chars: list[str] = []
        end_ids = session.markers.end_ids
        ended: bool | None = None
        async with contextlib.aclosing(session.stream(prompt, params, ctx.usage, ctx.request_id("probe"))) as st:
            async for d in st:
                for tok, lp in zip(d.token_ids, d.logprobs or [0.0] * len(d.token_ids), strict=True):
                    ids.append(tok)
                    lps.append(lp)
                    if closed_at is None:
                        new_text = session.decode(ids)
                        piece, text = new_text[len(text) :], new_text
                        for ch in piece:
                            depth += ch == "{"
                            depth -= ch == "}"
                            if depth == 0:
                                closed_at = len(ids) - 1
                                break
                            answer_chars.append(ch)
                        if closed_at is None and len(ids) >= p.probe_tokens:
                            break
                if closed_at is None and len(ids) >= p.probe_tokens:
                    break
                if closed_at is not None:
                    if not p.require_end_think:
                        break
                    if find_subsequence(ids, end_ids, closed_at) >= 0:
                        ended = True
                        break
                    if len(ids) - closed_at > p.end_think_tokens:
                        break
        if p.require_end_think:
            ended = bool(ended)
        # Trial-answer tokens: those before the closing brace, plus the closing token if it also
        # carries answer text (e.g. a merged "5}").
        n_ans = len(ids) if closed_at is None else closed_at
        if closed_at is not None:
            head = session.decode(ids[:closed_at])
            if len("".join(answer_chars)) > len(head):
                n_ans += 1
        ans_lps = lps[: min(n_ans, p.probe_tokens)]
        conf = confidence_of(ans_lps, p.confidence)
        return Probe(
            pos=cut - think_from,
            cut=cut,
            answer="".join(answer_chars).strip(),
            confidence=conf,
            closed=closed_at is not None,
            ended_thinking=ended,
            logprobs=ans_lps,
            tokens=len(ids),
        )

    def _accepts(self, probe: Probe) -> bool:
        p = self.params
        if p.require_closed and not probe.closed:
            return False
        if p.require_end_think and not probe.ended_thinking:
            return False
        return probe.confidence >= p.threshold

    # ------------------------------------------------------------------ controller
    async def solve(self, ctx: Context) -> Outcome:
        """Decode the trace, probe at transitions, and exit at the first confident one."""
        p, session = self.params, ctx.session
        markers = session.markers
        markers.require_span(self.name)
        matcher = self._matcher(session)
        max_tokens = ctx.decoding.max_tokens
        # budget_ratio 1 means no thinking budget beyond the token limit itself.
        budget = max(1, int(p.budget_ratio * max_tokens)) if p.budget_ratio < 1 else None

        trace: list[int] = []
        think_from: int | None = 0 if markers.opened_by_template else None
        think_closed = False
        pending: deque[tuple[int, asyncio.Task[Probe]]] = deque()
        probes: list[Probe] = []
        launched = 0
        exit_cut: int | None = None
        exit_reason = ""
        main_finish: str | None = None
        segment = 0

        async def settle(block: bool) -> int | None:
            """Resolve probes in trace order; return the cut of the first confident one."""
            while pending and (block or pending[0][1].done()):
                _, task = pending.popleft()
                probe = await task
                probes.append(probe)
                if self._accepts(probe):
                    return probe.cut
            return None

        try:
            while exit_cut is None and main_finish is None:
                room = ctx.room(max_tokens, len(trace))
                # A resumed segment (sequential mode) gets its own seed so sampling does not repeat itself.
                params = ctx.sampling(max_tokens=room, seed=ctx.seed + segment)
                paused_at: int | None = None
                async with contextlib.aclosing(
                    session.stream([*ctx.prompt_ids, *trace], params, ctx.usage, ctx.request_id(f"main{segment}"))
                ) as st:
                    segment += 1
                    async for d in st:
                        for tok in d.token_ids:
                            trace.append(tok)
                            if think_from is None:
                                if tuple(trace[-len(markers.start_ids) :]) == markers.start_ids:
                                    think_from = len(trace)
                                continue
                            if think_closed:
                                continue
                            if tuple(trace[-len(markers.end_ids) :]) == markers.end_ids:
                                think_closed = True
                                continue
                            if budget is not None and len(trace) - think_from >= budget:
                                paused_at = -1
                                break
                            cut = matcher.match(trace, think_from) if launched < p.max_probes else None
                            if cut is not None:
                                launched += 1
                                task = asyncio.ensure_future(self._probe(ctx, trace, cut, think_from))
                                pending.append((cut, task))
                                if p.sequential:
                                    paused_at = len(trace)
                                    break
                        if paused_at is not None:
                            break
                        exit_cut = await settle(block=False)
                        if exit_cut is not None:
                            exit_reason = "confident"
                            break
                        if d.finish_reason is not None:
                            main_finish = d.finish_reason
                if exit_cut is not None:
                    break
                if paused_at == -1:  # thinking budget spent
                    exit_cut = await settle(block=True)
                    exit_reason = "confident" if exit_cut is not None else "budget"
                    if exit_cut is None:
                        exit_cut = len(trace)
                    break
                if paused_at is not None:  # sequential: drop what streamed past the pause, probe, resume
                    del trace[paused_at:]
                    exit_cut = await settle(block=True)
                    if exit_cut is not None:
                        exit_reason = "confident"
                    continue
                # the main trace finished: earlier probes may still call an exit
                exit_cut = await settle(block=True)
                if exit_cut is not None:
                    exit_reason = "confident"
        finally:
            for _, task in pending:
                task.cancel()
            for _, task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

        info: dict[str, Any] = {
            "probes": [pr.record() for pr in probes],
            "mode": "sequential" if p.sequential else "parallel",
        }
        if exit_cut is None:
            reason = "eos" if main_finish == "stop" else (main_finish or "unknown")
            info["exit_pos"] = None
            return Outcome(trace, reason, info=info, finished=main_finish == "stop")

        # Close thinking after the probed prefix and let the model write its answer.
        close_ids = session.encode("\n" + (markers.end or "") + "\n\n")
        head = [*trace[:exit_cut], *close_ids]
        info["exit_pos"] = exit_cut - (think_from or 0)
        info["discarded_tokens"] = len(trace) - exit_cut
        answer = await session.complete(
            [*ctx.prompt_ids, *head],
            # the answer gets what is left of max_tokens (budget_ratio < 1 keeps some for it)
            ctx.sampling(max_tokens=ctx.room(max(1, max_tokens - len(head)), len(head)), seed=ctx.seed + 1_000_000),
            ctx.usage,
            ctx.request_id("answer"),
        )
        return Outcome([*head, *answer.token_ids], exit_reason, info=info, finished=answer.finish_reason == "stop")
