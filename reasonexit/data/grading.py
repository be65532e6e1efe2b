"""Grading off the engine loop: math_verify in worker processes with a real per-call timeout.

Controllers run on the engine's event loop, so anything slow there stalls decoding for every
problem. Most answers are decided by string or number comparison (microseconds, done inline);
the rest need :mod:`math_verify` (sympy). Its timeout uses ``signal.alarm`` and only works on a
main thread, and some expressions keep sympy inside one long C call (``9^{9^{9}}`` asks for a
370-million-digit integer) where no Python-level timeout can fire and the GIL is held. So
math_verify runs in small worker processes (``_grade_worker.py``), on their main
thread where its own timeout works; a call that still does not answer within
:data:`GRADE_TIMEOUT_S` gets its worker killed (and replaced on the next call) and grades False.

Workers read requests on stdin and exit at end of input, or when their parent process is gone
(checked every half second, for children that inherited the pipe through a fork). They are
started in a session of their own, so a Ctrl-C at the terminal does not reach them.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import logging
import queue
import select
import subprocess
import sys
import threading
from pathlib import Path

from .answers import grade, grade_without_math_verify

log = logging.getLogger(__name__)

#: Seconds one math_verify call may take (math_verify's own limits inside are 5 s per step).
GRADE_TIMEOUT_S = 20.0
#: Worker processes at most (each a Python with sympy, ~100 MB).
MAX_WORKERS = 2


class _Worker:
    """One grading process; not thread-safe (the pool hands it to one caller at a time)."""

    def __init__(self) -> None:
        # Run by path: importing the package would import vLLM (seconds); the worker needs answers.py only.
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_grade_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def call(self, pred: str, gold: str, kind: str, timeout: float) -> bool | None:
        """The worker's grade, or None when it timed out or died (the worker is then killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps([pred, gold, kind]) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return bool(json.loads(line))
        except (OSError, ValueError):
            pass
        self.kill()
        return None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Stop the worker now."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def close(self) -> None:
        """End of input: the worker exits on its own; killed if it does not within a second."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.created = 0
        self.lock = threading.Lock()
        self.all: list[_Worker] = []
        self.broken = False

    def acquire(self) -> _Worker | None:
        with self.lock:
            if self.broken:
                return None
            if self.idle.empty() and self.created < self.size:
                try:
                    w = _Worker()
                except OSError as exc:  # cannot start processes: grade in this process instead
                    log.warning("cannot start a grading worker (%s); grading in-process", exc)
                    self.broken = True
                    return None
                self.created += 1
                self.all.append(w)
                return w
        return self.idle.get()

    def release(self, w: _Worker) -> None:
        if not w.alive:  # killed after a timeout: the next caller starts a fresh one
            with self.lock:
                self.created -= 1
                self.all.remove(w)
            return
        self.idle.put(w)

    def close(self) -> None:
        with self.lock:
            workers, self.all = list(self.all), []
            self.created = 0
        for w in workers:
            w.close()


_POOL = _Pool(MAX_WORKERS)
_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="reasonexit-grade")
atexit.register(_POOL.close)


def grade_isolated(pred: str | None, gold: str | None, kind: str = "math", timeout: float | None = None) -> bool:
    """:func:`~reasonexit.data.answers.grade`, with math_verify in a worker process and a hard timeout.

    Blocking and thread-safe. A call that times out grades False (the answer was not shown
    equivalent).
    """
    fast = grade_without_math_verify(pred, gold, kind)
    if fast is not None:
        return fast
    assert pred is not None and gold is not None
    worker = _POOL.acquire()
    if worker is None:
        return grade(pred, gold, kind)
    try:
        limit = GRADE_TIMEOUT_S if timeout is None else timeout
        verdict = worker.call(str(pred).strip(), str(gold).strip(), kind, limit)
    finally:
        _POOL.release(worker)
    if verdict is None:
        log.warning("grading %r against %r timed out; graded as not equivalent", pred[:60], gold[:60])
        return False
    return verdict


async def agrade(pred: str | None, gold: str | None, kind: str = "math", timeout: float | None = None) -> bool:
    """Grade without blocking the running event loop (see :func:`grade_isolated`)."""
    fast = grade_without_math_verify(pred, gold, kind)
    if fast is not None:
        return fast
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_THREADS, grade_isolated, pred, gold, kind, timeout)


