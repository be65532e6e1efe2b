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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .engine import EngineConfig, EngineSession, get_session
from .errors import Interrupted, ProblemFailed, RunStopped, UserError, is_engine_dead, one_line
from .methods.base import Decoding, Method, make_method
from .runs.results import Result
from .runs.runner import Job, RunWriter, check_run_file, done_ids, latest_rows, read_run, solve_all

Prompt = str | Sequence[dict[str, str]]


def _method(method: str | Method, options: dict[str, Any]) -> Method:
    if isinstance(method, Method):
        if options:
            raise UserError("pass method options either to the Method object or as keywords, not both")
        return method
    return make_method(method, options)


def _prompt_list(prompts: Any) -> list[Prompt]:
    """The prompts as a list, each a user message (str) or a list of chat messages; bad shapes are
    one-line :class:`UserError` s naming the prompt and message (1-based)."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence) or isinstance(prompts, bytes | bytearray):
        raise UserError(
            f"prompts must be a string, a list of chat messages, or a list of these; got {type(prompts).__name__}"
        )
    items = list(prompts)
    if items and isinstance(items[0], dict):
        items = [items]  # one prompt given as a message list
    for i, p in enumerate(items, start=1):
        if isinstance(p, str):
            continue
        if not isinstance(p, Sequence) or isinstance(p, bytes | bytearray) or not p:
            raise UserError(f"prompt {i} must be a string or a non-empty list of chat messages, got {p!r:.60}")
        for j, m in enumerate(p, start=1):
            if not isinstance(m, dict):
                raise UserError(f"prompt {i}, message {j}: a chat message is a dict with 'role' and 'content'")
            for key in ("role", "content"):
                if not isinstance(m.get(key), str):
                    raise UserError(f"prompt {i}, message {j}: {key!r} is missing or not a string")
    return items


def check_decoding(decoding: Decoding) -> None:
    """Check sampling settings with vLLM's own ``SamplingParams`` validation (no engine needed)."""
    from vllm import SamplingParams

    if not isinstance(decoding.max_tokens, int) or decoding.max_tokens < 1:
        raise UserError(f"max_tokens must be an integer >= 1, got {decoding.max_tokens!r}")
    try:
        SamplingParams(
            temperature=decoding.temperature, top_p=decoding.top_p, max_tokens=decoding.max_tokens, seed=decoding.seed
        )
    except Exception as exc:  # noqa: BLE001 - vLLM's VLLMValidationError is not a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"bad sampling settings: {first}") from None


def _jobs(session: EngineSession, prompts: list[Prompt], golds: Sequence[str] | None, kind: str) -> list[Job]:
    if golds is not None and len(golds) != len(prompts):
        raise UserError(f"{len(golds)} gold answers for {len(prompts)} prompts")
    jobs = []
    for i, p in enumerate(prompts):
        try:
            ids = session.chat_prompt_ids(p)
        except UserError:
            raise
        except Exception as exc:  # the chat template rejected the messages
            raise UserError(f"prompt {i + 1}: the chat template failed: {one_line(exc)}") from None
        session.check_prompt(ids, f"prompt {i + 1}")
        jobs.append(Job(id=str(i), prompt_ids=ids, gold=None if golds is None else str(golds[i]), kind=kind))
    return jobs


def _prepare(
    prompts: list[Prompt],
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
    """The session and the (not yet started) coroutine that solves all prompts on it.

    Everything is checked before the engine starts: method and options, sampling settings, the
    prompts, ``max_in_flight``.
    """
    meth = _method(method, method_options)
    check_decoding(decoding)
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise UserError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
    session = session or get_session(engine or EngineConfig(**({"model": model} if model else {})))
    meth.check_model(session.markers.has_thinking)
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
    items = _prompt_list(prompts)
    if not items:
        return []
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    sess, coro = _prepare(items, method, model, engine, session, decoding, max_in_flight, golds, kind, method_options)
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
    are graded. Bad input raises a one-line :class:`~reasonexit.errors.UserError` before any
    engine starts; an empty list returns ``[]`` without starting one. A prompt whose method
    fails gets a result with ``exit_reason == "error"`` and the cause in ``error``.
    """
    items = _prompt_list(prompts)
    if not items:
        return []
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    sess, coro = _prepare(items, method, model, engine, session, decoding, max_in_flight, golds, kind, method_options)
    return sess.run(coro)


def run_signature(
    model: str, dataset: str, method: Method, decoding: Decoding, samples: int = 1
) -> dict[str, Any]:
    """What must match for a run file to be resumed."""
    return {
        # only when several, so single-sample run files written before --samples existed still resume
        **({"samples": samples} if samples > 1 else {}),
        "model": model,
        "dataset": dataset,
        "method": method.name,
        "params": method.describe(),
        "decoding": {
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "max_tokens": decoding.max_tokens,
            "seed": decoding.seed,
            # only when set, so run files written before top_k existed still resume
            **({"top_k": decoding.top_k} if decoding.top_k != -1 else {}),
        },
    }


def default_run_path(signature: dict[str, Any]) -> Path:
    """``runs/<dataset>-<method>-<hash>.jsonl``: the same command resumes the same file."""
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:8]
    stem = Path(signature["dataset"]).stem
    return Path("runs") / f"{stem}-{signature['method']}-{digest}.jsonl"


class EvalRun(NamedTuple):
    """What :func:`evaluate` returns: the run's rows (the newest per problem, old and new), this
    invocation's wall time, and the rows this invocation wrote (for its throughput)."""

    rows: list[dict[str, Any]]
    wall_s: float
    new_rows: list[dict[str, Any]]


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
    run file of the same run; it is created when the first row is written.

    Raises :class:`~reasonexit.errors.RunStopped` when the run ends early (an interrupt, a dead
    engine, a failure with ``fail_fast``); rows written until then stay for a resume.
    """
    check_run_file(out)
    existing = read_run(out)
    for n, row in enumerate(existing, start=1):
        old = row.get("run", {})
        if old and old != signature:
            raise UserError(
                f"{out} holds a different run (row {n}: method/params/model/dataset/decoding differ); "
                "choose another --out"
            )
    jobs = []
    sample_of: dict[str, tuple[str, int]] = {}
    for p in problems:
        ids = session.chat_prompt_ids(p.prompt)
        session.check_prompt(ids, f"problem {p.id}")
        for k in range(samples):
            jid = p.id if samples == 1 else f"{p.id}#{k}"
            sample_of[jid] = (p.id, k)
            jobs.append(Job(id=jid, prompt_ids=ids, gold=p.gold, kind=p.kind, problem=p.problem))
    done = done_ids(existing)
    index = {j.id: i for i, j in enumerate(jobs)}
    todo = [j for j in jobs if j.id not in done]
    latest = {str(r["id"]): r for r in latest_rows(existing) if "id" in r}
    new_rows: list[dict[str, Any]] = []
    writer = RunWriter(out)
    bar = _progress(len(jobs), len(jobs) - len(todo), progress)
    stats = _Running(latest.values())

    def on_result(res: Result) -> None:
        row = {**res.to_row(), "run": signature}
        if samples > 1:
            row["problem_id"], row["sample"] = sample_of[str(row["id"])]
        try:
            writer.write(row)
        except OSError as exc:  # disk full, file removed under us, ...: stop the run, one line
            raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
        latest[str(row["id"])] = row
        new_rows.append(row)
        stats.add(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(stats.line(), refresh=False)

    def finished() -> int:
        return sum(1 for j in jobs if latest.get(j.id, {}).get("exit_reason", "error") != "error")

    start = time.perf_counter()
    try:
        if todo:  # a finished run resumes without starting the engine
            indices = [index[j.id] for j in todo]
            session.run(solve_all(session, method, todo, decoding, max_in_flight, on_result, indices, fail_fast))
    except Interrupted as exc:
        raise RunStopped("interrupted", finished(), len(jobs), exc.signum) from None
    except ProblemFailed as exc:
        raise RunStopped(f"{exc} (--fail-fast)", finished(), len(jobs)) from None
    except Exception as exc:
        if not is_engine_dead(exc):
            raise
        raise RunStopped("the vLLM engine died", finished(), len(jobs), engine_dead=True) from None
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    rows = [latest[j.id] for j in jobs if j.id in latest]
    return EvalRun(rows, time.perf_counter() - start, new_rows)


class _Running:
    """Running figures for the progress bar (error rows counted apart)."""

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.n = self.correct = self.out = self.comp = self.errors = 0
        for r in rows:
            self.add(r)

    def add(self, r: dict[str, Any]) -> None:
        if r.get("exit_reason") == "error":
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


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="problems", unit="prob", dynamic_ncols=True)
