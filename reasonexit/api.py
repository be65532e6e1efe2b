"""The Python API: generate with a named method over prompts or chat messages, and evaluate datasets.

>>> from reasonexit import generate
>>> results = generate(["What is 2 + 3?"], method="budget", max_thinking_tokens=64)
>>> results[0].answer, results[0].output_tokens, results[0].compute_tokens

``agenerate`` is the same call for serving code running its own event loop.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import EngineConfig, EngineSession, get_session
from .errors import UserError
from .methods.base import Decoding, Method, make_method
from .results import Result
from .runner import Job, RunWriter, done_ids, read_run, solve_all

Prompt = str | Sequence[dict[str, str]]


def _method(method: str | Method, options: dict[str, Any]) -> Method:
    if isinstance(method, Method):
        if options:
            raise UserError("pass method options either to the Method object or as keywords, not both")
        return method
    return make_method(method, options)


def _jobs(
    session: EngineSession, prompts: Prompt | Sequence[Prompt], golds: Sequence[str] | None, kind: str
) -> list[Job]:
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict)):
        prompts = [prompts]  # one prompt (text or a message list)
    if golds is not None and len(golds) != len(prompts):
        raise UserError(f"{len(golds)} gold answers for {len(prompts)} prompts")
    jobs = []
    for i, p in enumerate(prompts):
        ids = session.chat_prompt_ids(p)
        session.check_prompt(ids, f"prompt {i}")
        jobs.append(Job(id=str(i), prompt_ids=ids, gold=None if golds is None else str(golds[i]), kind=kind))
    return jobs


def _prepare(
    prompts: Prompt | Sequence[Prompt],
    method: str | Method,
    model: str | None,
    engine: EngineConfig | None,
    session: EngineSession | None,
    decoding: Decoding,
    max_in_flight: int,
    golds: Sequence[str] | None,
    kind: str,
    method_options: dict[str, Any],
) -> tuple[EngineSession, Any]:
    """The session and the (not yet started) coroutine that solves all prompts on it."""
    session = session or get_session(engine or EngineConfig(**({"model": model} if model else {})))
    meth = _method(method, method_options)
    jobs = _jobs(session, prompts, golds, kind)
    return session, solve_all(session, meth, jobs, decoding, max_in_flight)


async def agenerate(
    prompts: Prompt | Sequence[Prompt],
    method: str | Method = "vanilla",
    *,
    model: str | None = None,
    engine: EngineConfig | None = None,
    session: EngineSession | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    seed: int = 0,
    max_in_flight: int = 256,
    golds: Sequence[str] | None = None,
    kind: str = "math",
    **method_options: Any,
) -> list[Result]:
    """Async :func:`generate`: awaitable from any event loop (the engine runs on its own loop)."""
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    sess, coro = _prepare(prompts, method, model, engine, session, decoding, max_in_flight, golds, kind, method_options)
    return await sess.arun(coro)


def generate(
    prompts: Prompt | Sequence[Prompt],
    method: str | Method = "vanilla",
    *,
    model: str | None = None,
    engine: EngineConfig | None = None,
    session: EngineSession | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    seed: int = 0,
    max_in_flight: int = 256,
    golds: Sequence[str] | None = None,
    kind: str = "math",
    **method_options: Any,
) -> list[Result]:
    """Generate with a named method (``vanilla``, ``budget``, ...) and return one :class:`Result` a prompt.

    ``prompts`` is a user message, a list of chat messages, or a list of either. The chat template
    is applied. Method options are keywords (e.g. ``max_thinking_tokens=256``). Without ``model``,
    ``engine`` or ``session``, the bundled tiny reasoning model is used. With ``golds``, results
    are graded.
    """
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    sess, coro = _prepare(prompts, method, model, engine, session, decoding, max_in_flight, golds, kind, method_options)
    return sess.run(coro)


def run_signature(model: str, dataset: str, method: Method, decoding: Decoding) -> dict[str, Any]:
    """What must match for a run file to be resumed."""
    return {
        "model": model,
        "dataset": dataset,
        "method": method.name,
        "params": method.describe(),
        "decoding": {
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "max_tokens": decoding.max_tokens,
            "seed": decoding.seed,
        },
    }


def default_run_path(signature: dict[str, Any]) -> Path:
    """``runs/<dataset>-<method>-<hash>.jsonl``: the same command resumes the same file."""
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(signature["dataset"]).stem
    return Path("runs") / f"{stem}-{signature['method']}-{digest}.jsonl"


def evaluate(
    problems: Sequence[Any],
    method: Method,
    session: EngineSession,
    decoding: Decoding,
    out: str | Path,
    *,
    signature: dict[str, Any],
    max_in_flight: int = 256,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], float]:
    """Solve dataset problems, appending one row a problem to ``out`` as each finishes.

    Problems whose id is already in ``out`` are skipped (resume). Returns all rows of the run
    (old and new) and the wall time of this invocation.
    """
    jobs = []
    for p in problems:
        ids = session.chat_prompt_ids(p.prompt)
        session.check_prompt(ids, f"problem {p.id}")
        jobs.append(Job(id=p.id, prompt_ids=ids, gold=p.gold, kind=p.kind, problem=p.problem))
    existing = read_run(out)
    for row in existing[:1]:
        old = row.get("run", {})
        if old and old != signature:
            raise UserError(
                f"{out} holds a different run (method/params/model/dataset/decoding differ); choose another --out"
            )
    done = done_ids(existing)
    index = {j.id: i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if j.id not in done]
    rows = list(existing)
    writer = RunWriter(out)
    bar = _progress(len(jobs), len(jobs) - len(todo), progress)
    stats = _Running(existing)

    def on_result(res: Result) -> None:
        row = {**res.to_row(), "run": signature}
        writer.write(row)
        rows.append(row)
        stats.add(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(stats.line(), refresh=False)

    start = time.perf_counter()
    try:
        if todo:  # a finished run resumes without starting the engine
            indices = [index[j.id] for j in todo]
            session.run(solve_all(session, method, todo, decoding, max_in_flight, on_result, indices))
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return rows, time.perf_counter() - start


class _Running:
    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.n = self.correct = self.out = self.comp = 0
        for r in rows:
            self.add(r)

    def add(self, r: dict[str, Any]) -> None:
        self.n += 1
        self.correct += bool(r.get("correct"))
        self.out += int(r.get("output_tokens", 0))
        self.comp += int(r.get("compute_tokens", 0))

    def line(self) -> str:
        n = max(self.n, 1)
        return f"acc={100 * self.correct / n:.1f}% out_tok={self.out / n:.0f} compute_tok={self.comp / n:.0f}"


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="problems", unit="prob", dynamic_ncols=True)
