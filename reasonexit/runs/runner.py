"""Running a method over many problems on the shared engine.

Every problem is a controller coroutine; all of them are in flight at once (bounded by
``max_in_flight``), so vLLM's continuous batching keeps the hardware busy and no problem waits
for a slower one. Results are handed over as each problem finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine import EngineSession, Usage
from ..errors import ProblemFailed, UserError, is_engine_dead, one_line
from ..methods.base import Context, Decoding, Method
from ..options import check_at_least
from .results import Result, abuild_result, error_result

if TYPE_CHECKING:
    from ..data.datasets import Problem

T = TypeVar("T")

#: A prompt: a user message, or a list of chat messages (dicts with ``role`` and ``content``).
Prompt = str | Sequence[dict[str, str]]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One prompt to solve: token ids plus what grading needs."""

    id: str
    prompt_ids: list[int]
    gold: str | None = None
    kind: str = "math"
    problem: str = ""


def prompt_job(
    session: EngineSession,
    id: str,
    prompt: Prompt,
    label: str,
    gold: str | None = None,
    kind: str = "math",
    problem: str = "",
) -> Job:
    """The job for one prompt: the chat template applied, the ids checked against the model's context.

    A template that rejects the messages, or a prompt longer than the context, is a one-line
    :class:`~reasonexit.errors.UserError` naming ``label`` (e.g. ``prompt 2``, ``problem gsm8k-7``).
    """
    try:
        ids = session.chat_prompt_ids(prompt)
    except UserError:
        raise
    except Exception as exc:  # the chat template rejected the messages
        raise UserError(f"{label}: the chat template failed: {one_line(exc)}") from None
    session.check_prompt(ids, label)
    return Job(id=id, prompt_ids=ids, gold=gold, kind=kind, problem=problem)


def sample_id(problem_id: str, k: int, samples: int) -> str:
    """The job id of sample ``k`` of a problem: the problem's id when it is solved once, else ``<id>#<k>``."""
    return problem_id if samples == 1 else f"{problem_id}#{k}"


def jobs_for(session: EngineSession, problems: Sequence[Problem], samples: int = 1) -> list[Job]:
    """The jobs for dataset problems, in order: ``samples`` jobs a problem (ids from :func:`sample_id`),
    sharing the problem's prompt ids."""
    jobs = []
    for p in problems:
        job = prompt_job(session, p.id, p.prompt, f"problem {p.id}", p.gold, p.kind, p.problem)
        jobs.extend(replace(job, id=sample_id(p.id, k, samples)) for k in range(samples))
    return jobs


async def solve_job(
    session: EngineSession,
    method: Method,
    job: Job,
    decoding: Decoding,
    index: int = 0,
    token_sink: Callable[[list[int]], None] | None = None,
    stop: Sequence[str] = (),
) -> Result:
    """Solve one job with ``method`` and build its result (runs on the engine loop; raises what the
    controller raises). ``token_sink`` gets the completion's tokens as they become final, ``stop``
    strings end the user's completion (see :class:`~reasonexit.methods.base.Context`)."""
    usage = Usage(prompt_tokens=len(job.prompt_ids))
    return await _solve(session, method, job, decoding, index, usage, token_sink, stop)


async def _solve(
    session: EngineSession,
    method: Method,
    job: Job,
    decoding: Decoding,
    index: int,
    usage: Usage,
    token_sink: Callable[[list[int]], None] | None = None,
    stop: Sequence[str] = (),
) -> Result:
    ctx = Context(
        session=session,
        prompt_ids=list(job.prompt_ids),
        decoding=decoding,
        usage=usage,
        kind=job.kind,
        seed=decoding.seed * 1_000_003 + index,
        request_prefix=f"{job.id}",
        gold=job.gold,
        token_sink=token_sink,
        stop=tuple(stop),
    )
    start = time.perf_counter()
    outcome = await method.solve(ctx)
    wall = time.perf_counter() - start
    return await abuild_result(
        session,
        id=job.id,
        method_name=method.name,
        params=method.describe(),
        outcome=outcome,
        usage=usage,
        wall_s=wall,
        gold=job.gold,
        kind=job.kind,
        problem=job.problem,
    )


async def solve_isolated(
    session: EngineSession, method: Method, job: Job, decoding: Decoding, index: int = 0
) -> Result:
    """Like :func:`solve_job`, but a failing controller gives an error result instead of raising.

    Only the problem's own failure is caught: a dead engine (``EngineDeadError``), a
    :class:`~reasonexit.errors.UserError` (the run's settings), cancellation and interrupts still
    propagate, since they are not this problem's fault.
    """
    usage = Usage(prompt_tokens=len(job.prompt_ids))
    start = time.perf_counter()
    try:
        return await _solve(session, method, job, decoding, index, usage)
    except Exception as exc:
        if is_engine_dead(exc) or isinstance(exc, UserError):
            raise  # not this problem's fault: the engine is gone, or the run is misconfigured
        log.warning("problem %s failed: %s", job.id, one_line(exc), exc_info=log.isEnabledFor(logging.DEBUG))
        return error_result(
            id=job.id,
            method_name=method.name,
            params=method.describe(),
            usage=usage,
            wall_s=time.perf_counter() - start,
            gold=job.gold,
            problem=job.problem,
            error=one_line(exc),
        )


async def solve_all(
    session: EngineSession,
    method: Method,
    jobs: Sequence[Job],
    decoding: Decoding,
    max_in_flight: int = 256,
    on_result: Callable[[Result], None] | None = None,
    indices: Sequence[int] | None = None,
    fail_fast: bool = False,
) -> list[Result]:
    """Solve all jobs concurrently (at most ``max_in_flight`` at a time); results in job order.

    A problem whose controller raises gets a result with ``exit_reason="error"`` and the one-line
    cause in ``error``; the other problems go on. With ``fail_fast``, the first failure instead
    cancels every other problem and raises :class:`~reasonexit.errors.ProblemFailed`. A dead
    engine always ends the whole call (its ``EngineDeadError`` propagates). ``max_in_flight`` is
    taken as given: callers check it (:class:`~reasonexit.runs.options.EvalOptions`).
    """
    check_at_least("max_in_flight", max_in_flight, 1)  # a direct caller's 0 would wait forever
    sem = asyncio.Semaphore(max_in_flight)
    idx = list(indices) if indices is not None else list(range(len(jobs)))

    async def one(i: int, job: Job) -> Result:
        async with sem:
            if fail_fast:
                try:
                    res = await solve_job(session, method, job, decoding, idx[i])
                except Exception as exc:
                    if is_engine_dead(exc) or isinstance(exc, UserError):
                        raise
                    raise ProblemFailed(job.id, one_line(exc)) from exc
            else:
                res = await solve_isolated(session, method, job, decoding, idx[i])
        if on_result is not None:
            on_result(res)
        return res

    if jobs:
        await method.prepare(session)
    return await gather_or_cancel(one(i, job) for i, job in enumerate(jobs))


async def gather_or_cancel(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently and return their results in order. When this is cancelled, or
    one of them raises, the others are cancelled and awaited until they have unwound (their engine
    requests aborted on the way out), so nothing of them runs, or writes a row, after this returns."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
