"""User-facing errors and the ways a run can stop early.

Anything a user can cause (a bad model path, an unknown dataset, a malformed row or config) is
raised as :class:`UserError`. The CLI prints its message as one line and exits non-zero; it never
shows a traceback for these.

:class:`Interrupted` is raised in the main thread by the CLI's SIGINT/SIGTERM handlers;
:class:`RunStopped` reports a run that ended before every problem was done (interrupted, a dead
engine, or the first failure with ``--fail-fast``), with how far it got.
"""

from __future__ import annotations

import signal


class UserError(Exception):
    """An error caused by user input; its message is shown as one line, without a traceback."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class ProblemFailed(Exception):
    """A problem's controller raised (only surfaces with ``fail_fast``; otherwise it becomes an error row)."""

    def __init__(self, problem_id: str, cause: str) -> None:
        super().__init__(f"problem {problem_id} failed: {cause}")
        self.problem_id = problem_id
        self.cause = cause


class RunStopped(Exception):
    """A run ended before all its problems were done; rows written so far are kept for a resume.

    ``reason`` is the one-line cause, ``done``/``total`` count problems with a result row, and
    ``signum`` is set when a signal stopped the run.
    """

    def __init__(
        self, reason: str, done: int, total: int, signum: int | None = None, engine_dead: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.done = done
        self.total = total
        self.signum = signum
        self.engine_dead = engine_dead


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException, innermost: bool = False) -> str:
    """``Type: first line of the message`` (the type alone when the message is empty).

    With ``innermost``, of the innermost cause (the real error behind a wrapper), its whole message
    folded onto one line and cut at 300 characters.
    """
    if innermost:
        seen = {id(exc)}
        while exc.__cause__ is not None and id(exc.__cause__) not in seen:
            exc = exc.__cause__
            seen.add(id(exc))
        text = " ".join(str(exc).split())[:300]
    else:
        text = str(exc).strip()
        text = text.splitlines()[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def is_engine_dead(exc: BaseException) -> bool:
    """True when ``exc`` means the vLLM engine itself is gone (not one problem's fault)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - vLLM is a dependency
        return False
    return isinstance(exc, EngineDeadError)


class EngineStartError(UserError):
    """The vLLM engine could not start; the message names the cause and the setting to change."""

    #: (text in vLLM's error, hint) pairs, most specific first.
    HINTS: tuple[tuple[str, str], ...] = (
        ("less than desired CPU memory utilization", "set a smaller --kv-cache-gib (VLLM_CPU_KVCACHE_SPACE)"),
        ("is less than desired GPU memory utilization", "lower --gpu-memory-utilization or free GPU memory"),
        ("No available memory for the cache blocks", "raise --gpu-memory-utilization or --kv-cache-gib"),
        ("larger than the maximum number of tokens that can be stored in KV cache", "lower --max-model-len or "
         "raise --kv-cache-gib"),
        ("max_model_len", "lower --max-model-len to at most the model's context length"),
        ("Model Runner V2 requires", "unset VLLM_USE_V2_MODEL_RUNNER: this platform has no Model Runner V2"),
        ("out of memory", "lower --kv-cache-gib / --gpu-memory-utilization or --max-num-seqs"),
        ("dtype", "choose --dtype auto, float32, bfloat16 or float16"),
        ("bootstrapping phase", "put the code that starts the engine under `if __name__ == \"__main__\":`"),
    )

    @classmethod
    def from_exception(cls, exc: BaseException) -> EngineStartError:
        """One line from a start-up failure: vLLM's own first line plus a hint where one is known."""
        text = str(exc).strip()
        cause = exc.__cause__ or exc.__context__
        if cause is not None and ("Engine core initialization failed" in text or not text):
            text = str(cause).strip() or text  # the engine process's own error says more
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        if len(first) > 300:
            first = first[:297] + "..."
        hint = next((h for needle, h in cls.HINTS if needle.lower() in text.lower()), None)
        if hint is None and "Engine core initialization failed" in text:
            hint = "run with --verbose to see the engine's log"
        return cls(f"engine failed to start: {first}" + (f" ({hint})" if hint else ""))


class MainGuardError(UserError, SystemExit):
    """The engine was asked for at the top level of a script without a main guard.

    vLLM starts its engine in a child process that re-imports the main script; unguarded, the
    child would run the script again. Also a ``SystemExit``: uncaught, Python prints just the
    one-line message and exits 1, instead of pages of tracebacks from both processes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = f"reasonexit: error: {message}"
