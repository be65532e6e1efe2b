"""``deer``: Dynamic Early Exit in Reasoning Models (Yang et al., 2025).

While the model thinks, every transition point ("Wait" by default) is a chance to stop. At a
transition, a probe request continues the trace *up to, not including,* the transition word with
an answer inducer (``\\n**Final Answer**\\n\\boxed{``) and greedily writes a trial answer. Its
confidence is the mean (or min, or geometric mean) probability of the trial-answer tokens. If it
reaches the threshold, thinking is closed right there (``\\n</think>\\n\\n`` from the model's own
markers) and the model writes its final answer; otherwise thinking goes on.

DEER runs on the shared early-exit controller (:mod:`reasonexit.methods.early_exit`): its
transition matcher is the controller's ``boundary`` hook, its probe and acceptance rule the
``judge`` hook. The probe shares the trace through vLLM's prefix cache. In ``parallel`` mode the
main trace keeps decoding while its probe runs and an exit aborts it; in ``sequential`` mode (the
paper's semantics) it pauses; ``auto`` picks sequential on CPU and parallel on GPU. Decisions are
taken in trace order (the first confident transition wins), so under greedy decoding both modes
make the same exits. Compute tokens count the probes and every main-trace token decoded past the exit.

``--compat official`` follows the authors' code (iie-ycx/DEER, ``vllm-deer.py``) where it departs
from reasonexit's defaults. Side by side on 128 testbed problems the two gave the same answers and
different exit positions on 4; the first two differences below caused them:

1. Confidence tokens: official averages the probabilities of *every probe token after the first*
   (skipping the model's own ``{``, including the token that closes the box, e.g. ``}.``);
   reasonexit averages the trial-answer tokens only.
2. Inducer: official ends at ``\\boxed`` without the brace, so the model writes ``{`` itself;
   reasonexit's inducer ends with ``{``.
3. Threshold: official exits when confidence is strictly above the threshold (``>``);
   reasonexit exits at or above it (``>=``, so threshold 0 always exits).
4. Probe limit: official probes at most 10 transition chunks per problem (``max_judge_steps``),
   then thinks on to the end; reasonexit probes up to ``--max-probes`` (64).
5. Forced exit: official exits at any probe once thinking has reached
   ``budget_ratio x max_tokens - 50`` tokens (exit reason ``budget``), whatever the confidence.
6. End chunks: official also probes the trace when the model stops while still thinking (end of
   sequence or token limit), and exits there if confident; reasonexit probes transitions only.

Both modes close thinking with ``\n</think>\n\n`` and use the same thinking budget
(``budget_ratio``, the authors' ``think_ratio``, 0.9 by default).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine import EngineSession
from ..errors import UserError
from ..thinking import find_subsequence
from .base import Context, ExitReason, register
from .early_exit import EarlyExitMethod, ExitHooks, ExitLimits, Mode, Verdict, validate_limits

DEFAULT_INDUCER = "\n**Final Answer**\n\\boxed{"
DEFAULT_CHOICE_INDUCER = "\n**Final Answer**\nThe correct option is \\boxed{"
#: ``--compat official``: transition chunks probed per problem at most (the authors' ``max_judge_steps``).
OFFICIAL_MAX_CHUNKS = 10
#: ``--compat official``: a probe forces an exit once thinking reaches the budget minus this many tokens.
OFFICIAL_LIMIT_MARGIN = 50


@dataclass
class DeerParams:
    """Parameters of DEER (each field's ``help`` is its documentation)."""

    threshold: float = field(
        default=0.95, metadata={"help": "exit when the trial answer's confidence is at least this (above 1: never)"}
    )
    confidence: Literal["mean", "min", "gmean"] = field(
        default="mean", metadata={"help": "mean, min or geometric mean of the trial-answer token probabilities"}
    )
    transitions: tuple[str, ...] = field(
        default=("Wait",), metadata={"help": "words that mark transition points (comma-separated)"}
    )
    paragraph_breaks: bool = field(
        default=False, metadata={"help": "also probe at every paragraph break in the thinking"}
    )
    inducer: str = field(
        default=DEFAULT_INDUCER, metadata={"help": "text that makes the model state its answer (math)"}
    )
    choice_inducer: str = field(
        default=DEFAULT_CHOICE_INDUCER, metadata={"help": "text that makes the model state its answer (choice sets)"}
    )
    probe_tokens: int = field(default=20, metadata={"help": "at most this many tokens of trial answer"})
    require_closed: bool = field(default=False, metadata={"help": "a probe counts only if it closes its box"})
    require_end_think: bool = field(
        default=False,
        metadata={
            "help": "a probe counts only if, after its boxed answer, the model ends thinking within --end-think-tokens"
        },
    )
    end_think_tokens: int = field(default=8, metadata={"help": "tokens allowed after the box for --require-end-think"})
    max_probes: int = field(default=64, metadata={"help": "probes per problem at most"})
    budget_ratio: float = field(
        default=0.9,
        metadata={"help": "exit regardless once thinking reaches this fraction of max_tokens (1: no budget)"},
    )
    compat: Literal["reasonexit", "official"] = field(
        default="reasonexit",
        metadata={
            "help": "reasonexit (default rules) or official (the rules of the authors' vllm-deer.py; see the docstring)"
        },
    )
    mode: Mode = field(
        default="auto",
        metadata={
            "help": "sequential (pause while probing), parallel (decode on while probing) "
            "or auto (sequential on CPU, parallel on GPU)"
        },
    )

    def validate(self) -> None:
        """Reject out-of-range values."""
        if self.threshold < 0:
            raise UserError("--threshold must be >= 0")
        if self.probe_tokens < 1 or self.end_think_tokens < 1:
            raise UserError("--probe-tokens and --end-think-tokens must be >= 1")
        validate_limits(self.max_probes, self.budget_ratio, "--max-probes")
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
class Deer(EarlyExitMethod):
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

    def hooks(self, ctx: Context) -> ExitHooks:
        """The transition matcher as the boundary, a probe and its acceptance rule as the judge."""
        return _DeerHooks(self, self._matcher(ctx.session))

    def limits(self, session: EngineSession | None = None) -> ExitLimits:
        """DEER's probe limit and thinking budget for the shared controller."""
        p = self.params
        official = p.compat == "official"
        return ExitLimits(
            max_checks=min(p.max_probes, OFFICIAL_MAX_CHUNKS) if official else p.max_probes,
            budget_ratio=p.budget_ratio,
            mode=p.mode,
            check_at_end=official,
            records_key="probes",
        )

    # ------------------------------------------------------------------ probe
    async def _probe(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Probe:
        """Ask for a trial answer after ``trace[:cut]`` and score it."""
        p, session = self.params, ctx.session
        prompt = [*ctx.prompt_ids, *trace[:cut], *session.encode(self._inducer(ctx))]
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
        box = _BoxReader(session, opened=self._inducer_opens_box(ctx))
        end_ids = session.markers.end_ids
        ended: bool | None = None
        async with contextlib.aclosing(session.stream(prompt, params, ctx.usage, ctx.request_id("probe"))) as st:
            async for d in st:
                for tok, lp in zip(d.token_ids, d.logprobs or [0.0] * len(d.token_ids), strict=True):
                    ids.append(tok)
                    lps.append(lp)
                    if box.closed_at is None:
                        box.read(ids)
                        if box.closed_at is None and len(ids) >= p.probe_tokens:
                            break
                if box.closed_at is None and len(ids) >= p.probe_tokens:
                    break
                if box.closed_at is not None:
                    if not p.require_end_think:
                        break
                    if find_subsequence(ids, end_ids, box.closed_at) >= 0:
                        ended = True
                        break
                    if len(ids) - box.closed_at > p.end_think_tokens:
                        break
        if p.require_end_think:
            ended = bool(ended)
        return self.read_probe(session, ids, lps, box, cut, cut - think_from, ended)

    def read_probe(
        self,
        session: EngineSession,
        ids: list[int],
        lps: list[float],
        box: _BoxReader,
        cut: int,
        pos: int,
        ended: bool | None = None,
    ) -> Probe:
        """Score a probe's tokens: which logprobs make its confidence depends on ``compat``.

        ``reasonexit``: the trial-answer tokens only (before the closing brace, plus the closing
        token when it also carries answer text, e.g. a merged ``5}``), at most ``probe_tokens``.
        ``official``: every generated token after the first (the first is the model's own ``{``),
        up to and including the token that closes the box (or all of them when it never closes).
        """
        p = self.params
        closed_at = box.closed_at
        if p.compat == "official":
            n_gen = len(ids) if closed_at is None else closed_at + 1
            used = lps[1:n_gen]
        else:
            # Trial-answer tokens: those before the closing brace, plus the closing token if it also
            # carries answer text (e.g. a merged "5}").
            n_ans = len(ids) if closed_at is None else closed_at
            if closed_at is not None:
                head = session.decode(ids[:closed_at])
                if len(box.answer_text) + box.lead_chars > len(head):
                    n_ans += 1
            used = lps[: min(n_ans, p.probe_tokens)]
        return Probe(
            pos=pos,
            cut=cut,
            answer=box.answer_text.strip(),
            confidence=confidence_of(used, p.confidence),
            closed=closed_at is not None,
            ended_thinking=ended,
            logprobs=used,
            tokens=len(ids),
        )

    def _inducer(self, ctx: Context) -> str:
        text = self.params.choice_inducer if ctx.kind == "choice" else self.params.inducer
        if self.params.compat == "official" and text.endswith("{"):
            text = text[:-1]  # the official inducer ends at \\boxed: the model opens the brace itself
        return text

    def _inducer_opens_box(self, ctx: Context) -> bool:
        return self._inducer(ctx).endswith("{")

    def decide(self, probe: Probe, max_tokens: int) -> Verdict:
        """The exit decision on a scored probe (see the class docstring for the two rule sets)."""
        p = self.params
        if p.require_closed and not probe.closed:
            return Verdict(exit=False)
        if p.require_end_think and not probe.ended_thinking:
            return Verdict(exit=False)
        if p.compat == "official":
            if probe.pos >= int(max_tokens * p.budget_ratio) - OFFICIAL_LIMIT_MARGIN:
                return Verdict(exit=True, reason=ExitReason.BUDGET)
            return Verdict(exit=probe.confidence > p.threshold)
        return Verdict(exit=probe.confidence >= p.threshold)


class _BoxReader:
    """Reads a probe's text as it grows and finds the token that closes the ``\\boxed{...}``.

    ``opened``: the inducer already opened the brace; otherwise the first ``{`` the model writes
    opens it (its characters before that are not answer text and are counted in ``lead_chars``).
    """

    def __init__(self, session: EngineSession, opened: bool) -> None:
        self.session = session
        self.depth = 1 if opened else 0
        self.opened = opened
        self.text = ""
        self.chars: list[str] = []
        self.lead_chars = 0
        self.closed_at: int | None = None

    @property
    def answer_text(self) -> str:
        """Characters inside the box so far."""
        return "".join(self.chars)

    def read(self, ids: list[int]) -> None:
        """Take the probe's tokens so far (the newest one is new)."""
        new_text = self.session.decode(ids)
        piece, self.text = new_text[len(self.text) :], new_text
        for ch in piece:
            if not self.opened:
                self.lead_chars += 1
                if ch == "{":
                    self.opened = True
                    self.depth = 1
                continue
            self.depth += ch == "{"
            self.depth -= ch == "}"
            if self.depth == 0:
                self.closed_at = len(ids) - 1
                return
            self.chars.append(ch)


class _DeerHooks:
    """DEER's hooks for one problem."""

    def __init__(self, method: Deer, matcher: TransitionMatcher) -> None:
        self.method = method
        self.matcher = matcher
        self.think_from = 0
        #: A transition cuts before its word, so a cut found later can fall this many tokens before
        #: the newest token (the longest pattern less the token that will complete it).
        self.hold = max((len(p) for p in matcher.patterns), default=1) - 1

    def boundary(self, trace: list[int], think_from: int) -> int | None:
        """A transition point (before the word) or a paragraph break (after it)."""
        self.think_from = think_from
        return self.matcher.match(trace, think_from)

    async def judge(self, ctx: Context, trace: list[int], cut: int) -> Verdict:
        """Probe a trial answer after ``trace[:cut]`` and apply the acceptance rule."""
        prompt_len = len(ctx.prompt_ids) + cut
        probe = await self.method._probe(ctx, trace, cut, self.think_from)
        verdict = self.method.decide(probe, ctx.decoding.max_tokens)
        verdict.record = probe.record()
        verdict.tokens = probe.tokens
        verdict.prompt_tokens = prompt_len + len(ctx.session.encode(self.method._inducer(ctx)))
        return verdict
