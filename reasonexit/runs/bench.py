"""Benchmark helpers: run several methods over the same problems on one engine and compare them.

Every configuration is measured in the same process on the same engine, one after another, with
all problems in flight at once (or ``max_in_flight`` for an interactive setting), so the ratios
printed by the scripts in ``scripts/`` compare like with like.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import EngineSession
from ..methods.base import Decoding, Method
from .report import summarize
from .runner import Job, jobs_for, solve_all


@dataclass
class BenchRun:
    """One configuration's rows, summary and wall time."""

    label: str
    rows: list[dict[str, Any]]
    wall_s: float
    summary: dict[str, Any]


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


def warm_up(
    session: EngineSession, jobs: Sequence[Job], decoding: Decoding, methods: Sequence[Method] = (), n: int = 16
) -> None:
    """Untimed passes so no measured configuration pays for start-up effects.

    A short vanilla pass, then each of ``methods`` on the first ``n`` jobs with the real decoding
    settings: the first requests of a kind (probes with logprobs, new batch shapes) are slow on
    the CPU engine, and whichever configuration met them first would be charged for it.
    """
    from ..methods import make_method

    session.run(solve_all(session, make_method("vanilla"), list(jobs[:8]), Decoding(max_tokens=16, seed=decoding.seed)))
    for method in methods:
        session.run(solve_all(session, method, list(jobs[:n]), decoding))


def add_bench_args(ap: argparse.ArgumentParser, limit: int = 300) -> None:
    """The options every benchmark script takes: model, dataset, problem count, token limit, dtype."""
    ap.add_argument("--model", default=None, help="model directory or hub id (default: the bundled testbed)")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--limit", type=int, default=limit, help="problems, all in flight")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", help="auto: float32 for the bundled testbed (see EngineConfig.dtype)")


def open_bench(
    args: argparse.Namespace, seed: int = 0, warm_methods: Sequence[Method] = ()
) -> tuple[EngineSession, list[Job], Decoding]:
    """Start the shared engine for a benchmark and return it with its jobs and greedy decoding settings.

    ``seed`` is the engine's and the decoding's seed (the engine's other settings are its
    defaults, as for the CLI and the API). Loads ``args.limit``
    problems of ``args.dataset`` and runs the warm-up passes (:func:`warm_up`, with ``warm_methods``)
    so the first configuration measured does not pay for start-up effects.
    """
    from ..data.datasets import load_problems
    from ..engine import DEFAULT_MODEL, EngineConfig, get_session

    config = EngineConfig(model=args.model or DEFAULT_MODEL, dtype=args.dtype, max_model_len=2048, seed=seed)
    session = get_session(config)
    jobs = jobs_for(session, load_problems(args.dataset, limit=args.limit))
    decoding = Decoding(max_tokens=args.max_tokens, seed=seed)
    warm_up(session, jobs, decoding, warm_methods)
    return session, jobs, decoding
