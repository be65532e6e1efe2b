"""Running a method over many problems on the shared engine.

Every problem is a controller coroutine; all of them are in flight at once (bounded by
``max_in_flight``), so vLLM's continuous batching keeps the hardware busy and no problem waits
for a slower one. Results are handed over as each problem finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import EngineSession, Usage
from .errors import UserError
from .methods.base import Context, Decoding, Method
from .results import Result, build_result


@dataclass(frozen=True)
class Job:
    """One prompt to solve: token ids plus what grading needs."""

    id: str
    prompt_ids: list[int]
    gold: str | None = None
    kind: str = "math"
    problem: str = ""


async def solve_job(session: EngineSession, method: Method, job: Job, decoding: Decoding, index: int = 0) -> Result:
    """Solve one job with ``method`` and build its result (runs on the engine loop)."""
    usage = Usage(prompt_tokens=len(job.prompt_ids))
    ctx = Context(
        session=session,
        prompt_ids=list(job.prompt_ids),
        decoding=decoding,
        usage=usage,
        kind=job.kind,
        seed=decoding.seed * 1_000_003 + index,
        request_prefix=f"{job.id}",
        gold=job.gold,
    )
    start = time.perf_counter()
    outcome = await method.solve(ctx)
    wall = time.perf_counter() - start
    return build_result(
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


async def solve_all(
    session: EngineSession,
    method: Method,
    jobs: Sequence[Job],
    decoding: Decoding,
    max_in_flight: int = 256,
    on_result: Callable[[Result], None] | None = None,
    indices: Sequence[int] | None = None,
) -> list[Result]:
    """Solve all jobs concurrently (at most ``max_in_flight`` at a time); results in job order."""
    if max_in_flight < 1:
        raise UserError("--max-in-flight must be >= 1")
    sem = asyncio.Semaphore(max_in_flight)
    idx = list(indices) if indices is not None else list(range(len(jobs)))

    async def one(i: int, job: Job) -> Result:
        async with sem:
            res = await solve_job(session, method, job, decoding, idx[i])
        if on_result is not None:
            on_result(res)
        return res

    tasks = [asyncio.ensure_future(one(i, job)) for i, job in enumerate(jobs)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


# ---------------------------------------------------------------------------- run files
def read_run(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run file; a torn last line (from a killed run) is ignored."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    with p.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # torn tail
            try:
                rows.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return rows


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


class RunWriter:
    """Appends one JSON line per result, each written with a single ``write`` and flushed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_run_file(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as a whole line."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)

    def close(self) -> None:
        """Flush to disk and close."""
        os.fsync(self._fd)
        os.close(self._fd)


def done_ids(rows: Iterable[dict[str, Any]]) -> set[str]:
    """Ids already present in a run file."""
    return {str(r["id"]) for r in rows if "id" in r}
