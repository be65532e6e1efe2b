"""The Python API: generate with a named method over prompts or chat messages.

>>> from reasonexit import generate
>>> results = generate(["What is 2 + 3?"], method="budget", max_thinking_tokens=64)
>>> results[0].answer, results[0].output_tokens, results[0].compute_tokens

``agenerate`` is the same call for serving code running its own event loop. Evaluating a dataset
into a resumable run file is :func:`reasonexit.runs.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from .engine import EngineConfig, EngineSession, get_session
from .errors import UserError
from .methods.base import Decoding, Method, make_method
from .runs.options import EvalOptions
from .runs.results import Result
from .runs.runner import Prompt, prompt_job, solve_all


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


def _prepare(
    prompts: Prompt | Sequence[Prompt],
    method: str | Method,
    method_options: dict[str, Any],
    model: str | None,
    engine: EngineConfig | None,
    session: EngineSession | None,
    decoding: dict[str, Any],
    max_in_flight: int,
    golds: Sequence[str] | None,
    kind: str,
    settings: str | None = None,
) -> tuple[EngineSession, Coroutine[Any, Any, list[Result]]] | None:
    """What :func:`generate` and :func:`agenerate` run: the session and the (not yet started)
    coroutine that solves all prompts on it; ``None`` for no prompts (nothing is checked or started).

    Everything is checked before the engine starts: the prompts, method and options, sampling
    settings (:class:`~reasonexit.methods.base.Decoding`), ``max_in_flight``
    (:class:`~reasonexit.runs.options.EvalOptions`), and the prompts against the model.
    """
    items = _prompt_list(prompts)
    if not items:
        return None
    if settings is not None:
        from .runs.calibrate import with_settings

        if not isinstance(method, str):
            raise UserError("settings= takes a method name, not a Method object")
        method, method_options = with_settings(settings, method, method_options)
    meth = _method(method, method_options)
    checked = Decoding(**decoding)
    EvalOptions(max_in_flight=max_in_flight)  # checks it, as for `reasonexit eval --max-in-flight`
    session = _session_for(model, engine, session)
    meth.check_model(session.markers.has_thinking)
    if golds is not None and len(golds) != len(items):
        raise UserError(f"{len(golds)} gold answers for {len(items)} prompts")
    jobs = [
        prompt_job(session, str(i), p, f"prompt {i + 1}", None if golds is None else str(golds[i]), kind)
        for i, p in enumerate(items)
    ]
    return session, solve_all(session, meth, jobs, checked, max_in_flight)


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
    settings: str | None = None,
    suppress_reflection: bool = False,
    reflection_words: Sequence[str] | None = None,
    **method_options: Any,
) -> list[Result]:
    """Async :func:`generate`: awaitable from any event loop (the engine runs on its own loop)."""
    decoding = _decoding(temperature, top_p, max_tokens, seed, suppress_reflection, reflection_words, method_options)
    call = _prepare(
        prompts, method, method_options, model, engine, session, decoding, max_in_flight, golds, kind, settings
    )
    return [] if call is None else await call[0].arun(call[1])


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
    settings: str | None = None,
    suppress_reflection: bool = False,
    reflection_words: Sequence[str] | None = None,
    **method_options: Any,
) -> list[Result]:
    """Generate with a named method (``vanilla``, ``budget``, ...) and return one :class:`Result` a prompt.

    ``prompts`` is a user message, a list of chat messages, or a list of either. The chat template
    is applied. ``suppress_reflection`` bars the reflection words (``reflection_words``, default
    :data:`~reasonexit.methods.base.REFLECTION_WORDS`) from the output with vLLM's ``bad_words``
    (NoWait); the other decoding fields (``top_k``, the safety exits ``on_repetition``,
    ``on_pattern``, ``wrap_up``, ``grace_tokens``) are keywords too. Method options are keywords
    (e.g. ``max_thinking_tokens=256``); ``settings`` names a settings file (``reasonexit
    calibrate`` writes one) whose method and options apply, under the keywords given. Without
    ``model``, ``engine`` or ``session``, the bundled tiny reasoning model is used. With ``golds``,
    results are graded. Bad input raises a one-line :class:`~reasonexit.errors.UserError` before
    any engine starts; an empty list returns ``[]`` without starting one. A prompt whose method
    fails gets a result with ``exit_reason == "error"`` and the cause in ``error``.
    """
    decoding = _decoding(temperature, top_p, max_tokens, seed, suppress_reflection, reflection_words, method_options)
    call = _prepare(
        prompts, method, method_options, model, engine, session, decoding, max_in_flight, golds, kind, settings
    )
    return [] if call is None else call[0].run(call[1])


def _decoding(
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    suppress_reflection: bool,
    reflection_words: Sequence[str] | None,
    method_options: dict[str, Any],
) -> dict[str, Any]:
    """The :class:`Decoding` fields of a :func:`generate` call: its decoding keywords, and the fields
    without a keyword of their own (``top_k``, the safety exits), taken out of ``method_options``."""
    import dataclasses

    out: dict[str, Any] = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    out["suppress_reflection"] = suppress_reflection
    if reflection_words is not None:
        out["reflection_words"] = tuple(reflection_words)
    for name in {f.name for f in dataclasses.fields(Decoding)} - set(out) - {"reflection_words"}:
        if name in method_options:
            out[name] = method_options.pop(name)
    return out


def _session_for(model: str | None, engine: EngineConfig | None, session: EngineSession | None) -> EngineSession:
    """The session a call runs on: the one given, else the shared one of ``engine`` or ``model``
    (default: the bundled testbed)."""
    return session or get_session(engine or EngineConfig(**({"model": model} if model else {})))


def sweep(
    grid: Sequence[str] = (),
    baseline: Sequence[str] = ("vanilla",),
    *,
    out: str = "runs/sweep",
    model: str | None = None,
    engine: EngineConfig | None = None,
    session: EngineSession | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    seed: int = 0,
    **problem_options: Any,
) -> list[dict[str, Any]]:
    """Run every setting of ``grid`` and ``baseline`` (specs as ``reasonexit sweep`` takes them, e.g.
    ``"deer:threshold=0.9,0.99"``) on one engine into run files in ``out`` (a re-run resumes), write
    ``sweep.md`` and ``sweep.png`` there, and return one summary dict per setting (accuracy and its
    standard error, tokens, wall time, engine steps, tokens saved, Pareto front).

    ``problem_options`` are the fields of :class:`~reasonexit.runs.sweep.SweepOptions` shared with
    ``eval`` (``dataset``, ``limit``, ``split``, ``samples``, ...). Every setting is checked before
    the engine starts.
    """
    from .options import build
    from .runs.sweep import SweepOptions, sweep_main

    kwargs = {"grid": tuple(grid), "baseline": tuple(baseline), "out": out, "quiet": True, **problem_options}
    options = build(SweepOptions, kwargs, "sweep")
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    return sweep_main(options, _session_for(model, engine, session), decoding, say=lambda *_: None)


def calibrate(
    method: str = "deer",
    param: str = "threshold",
    grid: Sequence[str | float] = ("0.5", "0.8", "0.9", "0.95", "0.99", "0.999"),
    *,
    max_loss: float = 0.02,
    delta: float = 0.1,
    out: str = "calibrated.yaml",
    model: str | None = None,
    engine: EngineConfig | None = None,
    session: EngineSession | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    seed: int = 0,
    method_options: dict[str, Any] | None = None,
    **calibrate_options: Any,
) -> dict[str, Any]:
    """Choose the most aggressive ``grid`` value of ``param`` whose accuracy loss against the
    reference stays within ``max_loss`` with probability at least ``1 - delta`` (Learn then Test;
    see :mod:`reasonexit.runs.calibrate`), and write the settings file ``out``.

    ``calibrate_options`` are the other fields of :class:`~reasonexit.runs.calibrate.CalibrateOptions`
    (``dataset``, ``split``, ``limit``, ``reference``, ``check_split``, ``runs``, ...);
    ``method_options`` the method's other options. Returns ``chosen`` (``None`` when no value
    qualifies), the per-value ``table``, the ``record`` and the ``settings`` path.
    """
    from .options import build
    from .runs.calibrate import CalibrateOptions, calibrate_command

    kwargs = {
        "method": method,
        "param": param,
        "grid": tuple(str(v) for v in grid),
        "max_loss": max_loss,
        "delta": delta,
        "out": out,
        "quiet": True,
        **calibrate_options,
    }
    options = build(CalibrateOptions, kwargs, "calibrate")
    decoding = Decoding(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    base = dict(method_options or {})
    return calibrate_command(
        options, base, _session_for(model, engine, session), decoding, log=lambda *_: None, say=lambda *_: None
    )
