"""Parallel branches of one problem, shared by ``ffs`` and ``majority``.

A branch is an independent sample: the inner method's :meth:`~reasonexit.methods.base.Method.solve`
run on a derived context with its own seed (derived from the problem's seed), its own request ids,
the sampling temperature of the parallel method, and a ledger of its own that also adds every
count to the problem's ledger as it happens. All branches of a problem run as tasks on the engine
loop, so vLLM decodes them in one batch and they share the prompt's prefix cache.

:func:`race` waits for the first ``k`` branches to *finish* (the inner outcome has
``finished=True``: an end of sequence after the answer) and cancels the others at once; cancelling
a task aborts its vLLM requests, so an aborted branch stops decoding. Branches that stop at the
token limit (``finished=False``) are only taken when fewer than ``k`` branches can still finish.
:func:`vote` majority-votes the chosen branches' answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.answers import extract_answer, normalize_answer
from ..data.grading import agrade
from ..engine import EngineSession, Usage
from ..errors import UserError
from ..thinking import split_completion
from .base import Context, Method, Outcome

#: Branch states: still decoding, ended with an answer, stopped by the token limit, cancelled.
RUNNING, FINISHED, LENGTH, ABORTED = "running", "finished", "length", "aborted"

_COUNTERS = frozenset(f.name for f in dataclasses.fields(Usage))


def branch_seed(seed: int, index: int) -> int:
    """The sampling seed of branch ``index`` of a problem whose seed is ``seed``.

    Branch 0 keeps the problem's own seed (one branch is the plain sample); the others get
    well-mixed 62-bit seeds. Branch ``i`` of ``n=4`` and of ``n=8`` runs is the same sample.
    """
    if index == 0:
        return int(seed)
    digest = hashlib.blake2b(f"{int(seed)}/{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class BranchUsage(Usage):
    """A branch's own ledger that also adds every change to its parent's ledger as it happens."""

    def __init__(self, parent: Usage) -> None:
        super().__init__()
        object.__setattr__(self, "_parent", parent)

    def __setattr__(self, name: str, value: Any) -> None:
        parent = self.__dict__.get("_parent")
        if parent is not None and name in _COUNTERS:
            setattr(parent, name, getattr(parent, name) + value - getattr(self, name))
        object.__setattr__(self, name, value)


@dataclass
class Branch:
    """One sample of a parallel method: its settings, its live ledger and, once done, its outcome."""

    index: int
    seed: int
    usage: BranchUsage
    status: str = RUNNING
    outcome: Outcome | None = None
    answer: str | None = None
    correct: bool | None = None
    order: int | None = None
    wakeup: int | None = None
    time_s: float | None = None
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def tokens(self) -> int:
        """Length of the branch's completion; for an aborted branch, the tokens it decoded."""
        if self.outcome is not None:
            return len(self.outcome.token_ids)
        return self.usage.compute_tokens

    def record(self) -> dict[str, Any]:
        """A JSON-ready record of the branch (stored in the result's ``info["branches"]``)."""
        rec: dict[str, Any] = {
            "index": self.index,
            "seed": self.seed,
            "status": self.status,
            "tokens": self.tokens,
            "compute_tokens": self.usage.compute_tokens,
            "answer": self.answer,
            "order": self.order,
            "wakeup": self.wakeup,
            "time_s": None if self.time_s is None else round(self.time_s, 4),
        }
        if self.outcome is not None:
            rec["exit_reason"] = self.outcome.exit_reason
        if self.correct is not None:
            rec["correct"] = self.correct
        return rec


def completion_answer(session: EngineSession, ids: Sequence[int], kind: str) -> str | None:
    """The final answer of a completion, extracted as results are (the answer part only)."""
    eos = set(session.eos_ids)
    markers = session.markers
    if markers.has_thinking:
        split = split_completion(ids, markers)
        text = session.decode([t for t in ids[split.answer_start :] if t not in eos])
    else:
        text = session.decode([t for t in ids if t not in eos])
    return extract_answer(text, kind)


#: Branch sampling when neither the method nor the run sets it (FFS's settings).
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.6, 0.95


def validate_branches(n: int, temperature: float | None, top_p: float | None) -> None:
    """Reject an impossible branch count or branch sampling setting (shared by ``ffs`` and ``majority``)."""
    if n < 1:
        raise UserError("--n must be >= 1")
    if temperature is not None and temperature < 0:
        raise UserError("--sample-temperature must be >= 0")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError("--sample-top-p must be in (0, 1]")


def branch_sampling(ctx: Context, temperature: float | None, top_p: float | None) -> tuple[float, float]:
    """Temperature and top-p of the branches.

    Values given to the method win; otherwise the run's own settings when the run samples
    (temperature > 0); otherwise :data:`DEFAULT_TEMPERATURE` / :data:`DEFAULT_TOP_P` (greedy
    branches would all be the same trace).
    """
    run_samples = ctx.decoding.temperature > 0
    if temperature is None:
        temperature = ctx.decoding.temperature if run_samples else DEFAULT_TEMPERATURE
    if top_p is None:
        top_p = ctx.decoding.top_p if run_samples else DEFAULT_TOP_P
    return temperature, top_p


def branch_context(ctx: Context, index: int, seed: int, usage: Usage, temperature: float, top_p: float) -> Context:
    """The context of one branch: same prompt, its seed, request ids, sampling and ledger."""
    sub = ctx.derive(seed, f"b{index}")
    decoding = dataclasses.replace(ctx.decoding, temperature=temperature, top_p=top_p)
    return dataclasses.replace(sub, decoding=decoding, usage=usage)


async def race(
    ctx: Context, inner: Method, n: int, k: int, temperature: float, top_p: float
) -> tuple[list[Branch], list[Branch]]:
    """Run ``n`` branches of ``inner`` and return ``(all branches, the chosen k)``.

    The chosen branches are the first ``k`` to finish, in finishing order; branches that complete
    in the same wake-up of this controller (the same engine step) are ordered shorter first
    (records keep that order and the wake-up). As
    soon as ``k`` have finished the others are cancelled and their requests aborted (awaited, so
    their counts are final on return). Branches stopped by the token limit come after every
    finished one, so they are chosen only when fewer than ``k`` branches finished.
    """
    start = time.perf_counter()
    branches: list[Branch] = []
    for i in range(n):
        seed = branch_seed(ctx.seed, i)
        usage = BranchUsage(ctx.usage)
        b = Branch(index=i, seed=seed, usage=usage)
        bctx = branch_context(ctx, i, seed, usage, temperature, top_p)
        b.task = asyncio.ensure_future(inner.solve(bctx))
        branches.append(b)
    pending: dict[asyncio.Task, Branch] = {b.task: b for b in branches if b.task is not None}
    finished: list[Branch] = []
    capped: list[Branch] = []
    order = wakeup = 0
    try:
        while pending and len(finished) < k:
            done, _ = await asyncio.wait(pending.keys(), return_when=asyncio.FIRST_COMPLETED)
            now = time.perf_counter() - start
            wakeup += 1
            batch = [pending.pop(t) for t in done]
            errors = [b.task.exception() for b in batch if b.task is not None and not b.task.cancelled()]
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                # A failed branch fails its problem only: the finally cancels this problem's other
                # branches, and the runner turns the exception into the problem's error row.
                raise failed
            for b in batch:
                assert b.task is not None
                b.outcome = b.task.result()
            batch.sort(key=lambda b: (not b.outcome.finished, len(b.outcome.token_ids), b.index))
            for b in batch:
                assert b.outcome is not None
                b.order, order = order, order + 1
                b.wakeup, b.time_s = wakeup, now
                b.status = FINISHED if b.outcome.finished else LENGTH
                b.answer = completion_answer(ctx.session, b.outcome.token_ids, ctx.kind)
                (finished if b.outcome.finished else capped).append(b)
    finally:
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        now = time.perf_counter() - start
        for b in pending.values():
            b.status, b.time_s = ABORTED, now
    if ctx.gold is not None:
        # A record only (pass@n), graded once the race is decided (so grading never delays the
        # cancellation of the losers) and off the engine loop (math_verify runs in a worker).
        for b in finished + capped:
            b.correct = await agrade(b.answer, ctx.gold, ctx.kind)
    return branches, (finished + capped)[:k]


def vote(chosen: Sequence[Branch]) -> tuple[Branch, str | None, dict[str, int]]:
    """Majority vote over the chosen branches' answers.

    Returns the branch handed to the user (the earliest in ``chosen`` among those that gave the
    winning answer), the winning answer and the vote counts. Ties go to the answer given first;
    branches without an answer do not vote; with no answer at all, the first branch is returned.
    """
    if not chosen:
        raise ValueError("vote needs at least one branch")
    counts: dict[str, int] = {}
    first: dict[str, Branch] = {}
    shown: dict[str, str] = {}
    for b in chosen:
        if b.answer is None:
            continue
        key = normalize_answer(b.answer)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, b)
        shown.setdefault(key, b.answer)
    if not counts:
        return chosen[0], None, {}
    best = max(counts, key=lambda a: (counts[a], -chosen.index(first[a])))
    return first[best], shown[best], {shown[a]: c for a, c in counts.items()}


async def solve_parallel(
    ctx: Context, inner: Method, n: int, k: int, temperature: float | None = None, top_p: float | None = None
) -> tuple[Outcome, list[Branch]]:
    """Race ``n`` branches, vote among the first ``k`` to finish, and build the outcome.

    Branch sampling is resolved by :func:`branch_sampling`. The outcome carries the returned
    branch's tokens, exit reason and ``finished`` flag; its ``info`` holds every branch's record,
    the vote, and the returned branch's own info.
    """
    temperature, top_p = branch_sampling(ctx, temperature, top_p)
    branches, chosen = await race(ctx, inner, n, k, temperature, top_p)
    winner, answer, counts = vote(chosen)
    assert winner.outcome is not None
    # Branches stream nothing (a derived context has no token sink): the returned branch's tokens
    # become final only now that it has won, and go to the sink at once.
    ctx.emit(winner.outcome.token_ids)
    info: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p,
        "winner": winner.index,
        "answer": answer,
        "votes": counts,
        "voters": [b.index for b in chosen],
        "branches": [b.record() for b in branches],
        "inner": winner.outcome.info,
    }
    out = Outcome(list(winner.outcome.token_ids), winner.outcome.exit_reason, info, finished=winner.outcome.finished)
    return out, branches
