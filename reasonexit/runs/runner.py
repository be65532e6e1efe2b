"""Running a method over many problems on the shared engine.

Every problem is a controller coroutine; all of them are in flight at once (bounded by
``max_in_flight``), so vLLM's continuous batching keeps the hardware busy and no problem waits
for a slower one. Results are handed over as each problem finishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..engine import EngineSession, Usage
from ..errors import ProblemFailed, UserError, is_engine_dead, one_line
from ..methods.base import Context, Decoding, Method
from .results import Result, abuild_result, error_result

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One prompt to solve: token ids plus what grading needs."""

    id: str
    prompt_ids: list[int]
    gold: str | None = None
    kind: str = "math"
    problem: str = ""


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
    engine always ends the whole call (its ``EngineDeadError`` propagates).
    """
    if max_in_flight < 1:
        raise UserError("--max-in-flight must be >= 1")
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


# ---------------------------------------------------------------------------- run files
def read_run(path: str | os.PathLike, bad_lines: list[int] | None = None) -> list[dict[str, Any]]:
    """All rows of a run file, in file order (a problem re-run after an error has several rows;
    :func:`latest_rows` keeps the newest).

    A torn last line (from a killed run) is ignored. Lines that are not a JSON object are skipped;
    their 1-based line numbers are appended to ``bad_lines`` when it is given.
    """
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break  # torn tail
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif bad_lines is not None and raw.strip():
                bad_lines.append(lineno)
    return rows


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each problem id, in the order ids first appeared (rows without an id are kept)."""
    latest: dict[Any, dict[str, Any]] = {}
    for n, r in enumerate(rows):
        key = ("id", str(r["id"])) if "id" in r else ("row", n)
        latest.pop(key, None)  # re-insert: a re-run problem moves to where its newest row is
        latest[key] = r
    return list(latest.values())


def check_run_file(path: str | os.PathLike) -> None:
    """Refuse an ``--out`` that reasonexit must not write into, before anything is started.

    Usable: a missing file (created when the first row is written) whose parent is, or can be, a
    directory; or an existing reasonexit run file (every complete line a JSON object with a
    ``run`` signature). Anything else (a directory, a dataset, a file that cannot be written)
    raises a one-line :class:`UserError` and is left untouched.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--out {path} is a directory; give a .jsonl file path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {path}: {parent} is not a directory")
    if not p.exists():
        # Try it: permission bits do not tell (root passes os.access; /proc refuses anyway). A
        # hidden probe file is created and removed at once; the result file itself is not created.
        try:
            fd, probe = tempfile.mkstemp(prefix=".reasonexit-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"--out {path}: cannot create files in {parent} ({exc.strerror or exc})") from None
        return
    if not p.is_file():
        raise UserError(f"--out {path} is not a regular file")
    try:
        with p.open("ab"):  # opening for append changes nothing in the file
            pass
    except OSError as exc:
        raise UserError(f"--out {path} is not writable ({exc.strerror or exc})") from None
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                break  # a torn last line of a killed run is cut when the run resumes
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("run"), dict):
                raise UserError(
                    f"--out {path} is not a reasonexit run file (line {lineno} is not a result row); "
                    "it was left unchanged: choose another --out"
                )


class RunWriter:
    """Appends one JSON line per result, each written with a single ``write``.

    The file is opened (and created) when the first row is written, so a run that stops before
    its first result leaves no file behind.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.written = 0

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_run_file(self.path)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as a whole line."""
        if self._fd is None:
            self._fd = self._open()
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)
        self.written += 1

    def close(self) -> None:
        """Flush to disk and close (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.fsync(fd)
            os.close(fd)


def repair_run_file(path: str | os.PathLike) -> None:
    """Cut a torn last line off a run file so appends start on a fresh line."""
    p = Path(path)
    if not p.exists():
        return
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with p.open("r+b") as fh:
            fh.truncate(cut)


def done_ids(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Ids whose newest row is a result (a problem whose newest row is an error is run again)."""
    return {str(r["id"]) for r in latest_rows(rows) if "id" in r and r.get("exit_reason") != "error"}
