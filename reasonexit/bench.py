"""Benchmark helpers: run several methods over the same problems on one engine and compare them.

Every configuration is measured in the same process on the same engine, one after another, with
all problems in flight at once (or ``max_in_flight`` for an interactive setting), so the ratios
printed by the scripts in ``scripts/`` compare like with like.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .datasets import Problem
from .engine import EngineSession
from .methods.base import Decoding, Method
from .report import summarize
from .runner import Job, solve_all


@dataclass
class BenchRun:
    """One configuration's rows, summary and wall time."""

    label: str
    rows: list[dict[str, Any]]
    wall_s: float
    summary: dict[str, Any]


def jobs_for(session: EngineSession, problems: Sequence[Problem]) -> list[Job]:
    """Engine jobs (prompt token ids) for dataset problems."""
    jobs = []
    for p in problems:
        ids = session.chat_prompt_ids(p.prompt)
        session.check_prompt(ids, f"problem {p.id}")
        jobs.append(Job(id=p.id, prompt_ids=ids, gold=p.gold, kind=p.kind, problem=p.problem))
    return jobs


def run_config(
    session: EngineSession,
    label: str,
    method: Method,
    jobs: Sequence[Job],
    decoding: Decoding,
    max_in_flight: int = 1024,
) -> BenchRun:
    """Solve all jobs with one method and summarise (wall time = the whole batch)."""
    start = time.perf_counter()
    results = session.run(solve_all(session, method, jobs, decoding, max_in_flight))
    wall = time.perf_counter() - start
    rows = [r.to_row() for r in results]
    return BenchRun(label, rows, wall, summarize(rows, run=label, wall_s=wall))


def warm_up(session: EngineSession, jobs: Sequence[Job], decoding: Decoding) -> None:
    """One short pass so the first measured configuration does not pay for start-up effects."""
    from .methods import make_method

    session.run(solve_all(session, make_method("vanilla"), list(jobs[:8]), Decoding(max_tokens=16, seed=decoding.seed)))
