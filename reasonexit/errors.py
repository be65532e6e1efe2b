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


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone when the message is empty)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def is_engine_dead(exc: BaseException) -> bool:
    """True when ``exc`` means the vLLM engine itself is gone (not one problem's fault)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - vLLM is a dependency
        return False
    return isinstance(exc, EngineDeadError)
