"""Engine watchdog: makes sure vLLM's engine processes do not outlive the process that started them.

Started by :class:`reasonexit.engine.session.EngineSession` just before it starts the vLLM engine, in a
session of its own (a Ctrl-C at the terminal does not reach it), and run by path so it starts in
a few tens of milliseconds (standard library and psutil only). Why it is needed: vLLM 0.32 on
CPU spawns ``EngineCore`` from the main process and ``Worker`` processes from ``EngineCore``. A
worker watches a pipe from its EngineCore and exits when the EngineCore dies, but the EngineCore
has no parent-death check of its own, so after a SIGKILL of the main process both were reparented
to init and kept running with gigabytes of memory. ``prctl(PR_SET_PDEATHSIG)`` cannot be used for
them: it has to be set inside the child, which vLLM spawns (fork + exec) with no hook for our
code, and it fires when the *thread* that started the child ends, not the process.

Protocol (lines on stdin):

``begin <pid> <pid,...>``
    adopt every child of process ``<pid>`` that appears from now on and is not in the list
    (the children that existed before the engine started) as an engine process;
``end``
    the engine has started: adopt no more children.

The watchdog records the descendants of the adopted processes (every quarter second while the
engine starts, every two seconds after). When
its input ends (the parent closed it, or died) or its parent changes (the parent died while a
forked child still holds the pipe), it sends SIGTERM to the EngineCore (to each recorded process
whose parent is not one of them), which shuts its workers down and exits, as on vLLM's own
shutdown; it waits up to eight seconds for every recorded process, sends SIGKILL to the rest and
exits. A worker must not be signalled under a running EngineCore: the EngineCore takes its exit
for a crash and writes a dump of its inputs and a traceback to the terminal it inherited, which
after a ``kill -9`` is the terminal of a command that has already ended. After a clean shutdown
there is nothing left to signal.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time

import psutil

POLL_S = 0.25
#: Seconds between scans of the process tree once the engine is up (its processes are set by then).
SCAN_S = 2.0
#: Seconds the EngineCore gets to stop its workers and exit before everything left gets SIGKILL
#: (about three on an idle machine; more when other engines share the cores).
GRACE_S = 8.0


def _is_helper(proc: psutil.Process) -> bool:
    """Helpers that are not the engine: multiprocessing's resource tracker cleans up after the
    others and exits on its own; this watchdog itself."""
    if proc.pid == os.getpid():
        return True
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return True
    return "resource_tracker" in cmd or "_watchdog.py" in cmd or "_grade_worker.py" in cmd


def main() -> int:
    """Watch until the parent is gone or closes our input, then stop the engine processes."""
    parent_pid = os.getppid()
    owner: psutil.Process | None = None
    baseline: set[int] = set()
    adopting = False
    known: dict[int, psutil.Process] = {}
    roots: dict[int, psutil.Process] = {}
    fd = sys.stdin.fileno()
    buf = b""
    last_scan = 0.0
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                _scan(owner if adopting else None, baseline, roots, known)  # a last look
                break  # input closed: the parent shut down, or died
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split()
                if parts[:1] == ["begin"] and len(parts) >= 2:
                    try:
                        owner = psutil.Process(int(parts[1]))
                    except psutil.NoSuchProcess:
                        owner = None
                    baseline = {int(p) for p in (parts[2].split(",") if len(parts) > 2 else []) if p}
                    adopting = True
                elif parts[:1] == ["end"]:
                    adopting = False
        if os.getppid() != parent_pid:
            break
        if not adopting and time.monotonic() - last_scan < SCAN_S:
            continue
        last_scan = time.monotonic()
        _scan(owner if adopting else None, baseline, roots, known)
    _stop(list(known.values()))
    return 0


def _scan(
    owner: psutil.Process | None,
    baseline: set[int],
    roots: dict[int, psutil.Process],
    known: dict[int, psutil.Process],
) -> None:
    """Adopt new children of ``owner`` (when given) and record every descendant of the roots."""
    try:
        if owner is not None:
            for child in owner.children():
                if child.pid not in baseline and child.pid not in roots and not _is_helper(child):
                    roots[child.pid] = child
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    for root in list(roots.values()):
        try:
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid not in known and not _is_helper(proc):
                    known[proc.pid] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def _alive(proc: psutil.Process) -> bool:
    """True while ``proc`` (same pid and start time) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _tops(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The running processes of ``procs`` whose parent is not one of them: the EngineCores, and any
    process whose EngineCore is already gone."""
    alive = [p for p in procs if _alive(p)]
    pids = {p.pid for p in alive}
    tops = []
    for p in alive:
        try:
            if p.ppid() not in pids:
                tops.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return tops


def _stop(procs: list[psutil.Process]) -> None:
    """Stop the engine processes the way vLLM stops them itself, then SIGKILL what is left.

    Only the top of each process tree gets SIGTERM: an EngineCore shuts its workers down before
    it exits. Signalling a worker under a running EngineCore instead makes the EngineCore report
    the worker's death as a crash, with a dump of its inputs and a traceback (tens of KB) written
    into the terminal of a command that has already ended. What still runs after the grace gets
    SIGKILL, which prints nothing.
    """
    for p in _tops(procs):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.terminate()
    left = _wait_gone(procs, GRACE_S)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    _wait_gone(left, 2.0)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds until none of ``procs`` runs; return those still running.

    A zombie counts as gone: these processes are not our children, and the one that reaps them
    (their parent, or init) may do so late or, in some containers, never."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


if __name__ == "__main__":
    sys.exit(main())
