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
forked child still holds the pipe), it sends SIGTERM to every recorded process still running
(EngineCore and workers shut down in order on SIGTERM), waits up to four seconds, sends SIGKILL
to the rest and exits. After a clean shutdown there is nothing left to signal.
"""

from __future__ import annotations

import os
import select
import sys
import time

import psutil

POLL_S = 0.25
#: Seconds between scans of the process tree once the engine is up (its processes are set by then).
SCAN_S = 2.0
GRACE_S = 4.0


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


def _stop(procs: list[psutil.Process]) -> None:
    """SIGTERM every process still running (same pid and start time), then SIGKILL after the grace."""
    alive = []
    for p in procs:
        try:
            if p.is_running():
                p.terminate()
                alive.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    if not alive:
        return
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(left, timeout=2)


if __name__ == "__main__":
    sys.exit(main())
