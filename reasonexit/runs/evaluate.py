"""Evaluating a method on dataset problems: rows appended to a run file as problems finish, resumable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import Interrupted, ProblemFailed, RunStopped, UserError, is_engine_dead
from ..methods.base import ExitReason
from .runfile import OpenRun, RunWriter, done_ids, latest_rows, open_run
from .runner import Job, jobs_for, sample_id, solve_all

if TYPE_CHECKING:
    from ..data.datasets import Problem
    from ..engine import EngineSession
    from ..methods.base import Decoding, Method
    from .results import Result


class EvalRun(NamedTuple):
    """What :func:`evaluate` returns: the run's rows (the newest per problem, old and new), this
    invocation's wall time, and the rows this invocation wrote (for its throughput)."""

    rows: list[dict[str, Any]]
    wall_s: float
    new_rows: list[dict[str, Any]]


def evaluate(
    problems: Sequence[Problem],
    method: Method,
    session: EngineSession,
    decoding: Decoding,
    out: str | os.PathLike | OpenRun,
    *,
    signature: dict[str, Any],
    max_in_flight: int = 256,
    progress: bool = True,
    fail_fast: bool = False,
    samples: int = 1,
) -> EvalRun:
    """Solve dataset problems, appending one row a problem to ``out`` as each finishes.

    With ``samples`` K > 1 each problem is solved K times (sample ``k`` has its own seed); each
    sample is a row of its own (id ``<problem id>#<k>``, with ``problem_id`` and ``sample``), so a
    resume redoes only the samples that are missing.

    Problems whose newest row in ``out`` is a result are skipped (resume); problems whose newest
    row is an error are run again. A problem whose controller fails gets an error row and the
    others go on (``fail_fast``: the first failure stops the run). ``out`` must be absent or a
    run file of the same run (a path is checked by :func:`~reasonexit.runs.runfile.open_run`; an
    :class:`~reasonexit.runs.runfile.OpenRun` was checked when it was opened); it is created when
    the first row is written.

    Raises :class:`~reasonexit.errors.RunStopped` when the run ends early (an interrupt, a dead
    engine, a failure with ``fail_fast``); rows written until then stay for a resume.
    """
    run = out if isinstance(out, OpenRun) else open_run(out, signature)
    jobs = jobs_for(session, problems, samples)
    sample_of = {sample_id(p.id, k, samples): (p.id, k) for p in problems for k in range(samples)}
    done = done_ids(run.rows)
    index = {j.id: i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if j.id not in done]
    bar = _progress(len(jobs), len(jobs) - len(todo), progress)
    rows = _Rows(run, signature, sample_of if samples > 1 else None, bar)
    start = time.perf_counter()
    try:
        if todo:  # a finished run resumes without starting the engine
            indices = [index[j.id] for j in todo]
            session.run(solve_all(session, method, todo, decoding, max_in_flight, rows.add, indices, fail_fast))
    except Interrupted as exc:
        raise RunStopped("interrupted", rows.finished(jobs), len(jobs), exc.signum) from None
    except ProblemFailed as exc:
        raise RunStopped(f"{exc} (--fail-fast)", rows.finished(jobs), len(jobs)) from None
    except Exception as exc:
        if not is_engine_dead(exc):
            raise
        raise RunStopped("the vLLM engine died", rows.finished(jobs), len(jobs), engine_dead=True) from None
    finally:
        rows.close()
    return EvalRun([rows.latest[j.id] for j in jobs if j.id in rows.latest], time.perf_counter() - start, rows.new)


class _Rows:
    """Where results go as problems finish: a row each, appended to the run file, counted for the
    progress bar, and kept as the newest row of its problem."""

    def __init__(
        self, run: OpenRun, signature: dict[str, Any], sample_of: dict[str, tuple[str, int]] | None, bar: Any
    ) -> None:
        self.path = run.path
        self.signature = signature
        self.sample_of = sample_of
        self.latest = {str(r["id"]): r for r in latest_rows(run.rows) if "id" in r}
        self.new: list[dict[str, Any]] = []
        self.writer = RunWriter(run.path)
        self.bar = bar
        self.stats = _Running(self.latest.values())

    def add(self, res: Result) -> None:
        """Write one result's row (a failed write stops the run with one line)."""
        row = {**res.to_row(), "run": self.signature}
        if self.sample_of is not None:
            row["problem_id"], row["sample"] = self.sample_of[str(row["id"])]
        try:
            self.writer.write(row)
        except OSError as exc:  # disk full, file removed under us, ...: stop the run, one line
            raise UserError(f"cannot write to {self.path}: {exc.strerror or exc}") from None
        self.latest[str(row["id"])] = row
        self.new.append(row)
        self.stats.add(row)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(self.stats.line(), refresh=False)

    def finished(self, jobs: Sequence[Job]) -> int:
        """How many of ``jobs`` have a result (not an error) as their newest row."""
        error = ExitReason.ERROR
        return sum(1 for j in jobs if self.latest.get(j.id, {}).get("exit_reason", error) != error)

    def close(self) -> None:
        """Flush and close the run file and the progress bar."""
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


class _Running:
    """Running figures for the progress bar (error rows counted apart)."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.n = self.correct = self.out = self.comp = self.errors = 0
        for r in rows:
            self.add(r)

    def add(self, r: dict[str, Any]) -> None:
        if r.get("exit_reason") == ExitReason.ERROR:
            self.errors += 1
            return
        self.n += 1
        self.correct += bool(r.get("correct"))
        self.out += int(r.get("output_tokens", 0))
        self.comp += int(r.get("compute_tokens", 0))

    def line(self) -> str:
        n = max(self.n, 1)
        text = f"acc={100 * self.correct / n:.1f}% out_tok={self.out / n:.0f} compute_tok={self.comp / n:.0f}"
        return text + (f" errors={self.errors}" if self.errors else "")


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="problems", unit="prob", dynamic_ncols=True)
