"""The engine's processes: a process group of their own (Ctrl-C reaches only reasonexit, which
shuts them down in order), the watchdog that stops them if this process dies, and the main-guard
check that keeps vLLM's spawned engine from re-running a user's script."""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import MainGuardError

log = logging.getLogger(__name__)


def _is_main_test(node: Any) -> bool:
    """True for the test of ``if __name__ == "__main__":`` (either operand order)."""
    import ast

    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]


def check_main_guard() -> None:
    """Raise :class:`MainGuardError` when called, through any depth, from unguarded top-level code of
    the main script (a script started as ``python file.py``)."""
    import ast

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file:
        return  # interactive, -c, or an embedded interpreter: nothing is re-imported
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and code.co_filename == main_file:
            break
        frame = frame.f_back
    if frame is None:
        return
    try:
        tree = ast.parse(Path(main_file).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= (node.end_lineno or 0):
            return
    raise MainGuardError(
        f"{Path(main_file).name}:{line} starts the vLLM engine at the top level of the script; vLLM's engine "
        'process re-imports the script, so put that code under `if __name__ == "__main__":`'
    )


# --------------------------------------------------------------------- engine processes and Ctrl-C
# vLLM 0.32 starts its EngineCore with multiprocessing "spawn" on CPU (fork + exec of a new
# Python; "fork" on some GPU set-ups) and the EngineCore starts its Worker processes the same way.
# They used to land in the terminal's foreground process group, so a Ctrl-C reached them at the
# same moment as reasonexit, and vLLM's own SIGINT handlers tore the engine down under the running
# requests (EngineDeadError, thousands of lines of traceback, exit 1). Blocking or ignoring SIGINT
# in the starting thread does not help: the mask was not inherited by the spawned processes here
# (measured: SigBlk 0 in /proc/<EngineCore>/status) and vLLM installs its own handlers over
# SIG_IGN. What works is starting the engine processes in a process group of their own
# (setpgid), which takes them out of the terminal's foreground group: for "spawn" through
# multiprocessing's executable hook (a tiny wrapper that calls setpgid and execs the real
# interpreter with the same arguments; vLLM uses the same hook for numactl), for "fork" through
# an at-fork hook active only for forks made by the engine thread while the engine starts.
# Workers inherit the group from their EngineCore. Ctrl-C then reaches only reasonexit, which
# shuts down in order; vLLM still stops its processes with SIGTERM.
# A new process group, not a new session (setsid): Linux schedules sessions as separate CPU
# "autogroups", and an engine in its own autogroup out-ran the controllers' loop on a busy CPU
# (aborted FFS branches decoded ~50 tokens too many in tests/methods/test_ffs.py). SIGTTOU is ignored in
# the group so its log writes to the terminal never stop it (``stty tostop``). The terminal's
# SIGHUP now reaches only reasonexit; if it dies of it, the watchdog (``_watchdog.py``) stops the
# engine, as for every other way this process can die.
_NEW_GROUP_FORKS_FROM: int | None = None


_WRAPPER_DIR: str | None = None
_FORK_HOOK = False


def _own_group() -> None:
    """Put this (just forked or spawned) engine process in a process group of its own."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _new_group_after_fork() -> None:
    if _NEW_GROUP_FORKS_FROM is not None and threading.get_ident() == _NEW_GROUP_FORKS_FROM:
        _own_group()


def _own_group_wrapper(real: str) -> str | None:
    """An executable that runs ``real`` (the Python multiprocessing spawns) in a new process group."""
    global _WRAPPER_DIR
    if " " in sys.executable or len(sys.executable) > 120:
        return None  # a shebang line cannot hold it
    try:
        if _WRAPPER_DIR is None:
            import shutil
            import tempfile

            _WRAPPER_DIR = tempfile.mkdtemp(prefix="reasonexit-")
            atexit.register(shutil.rmtree, _WRAPPER_DIR, True)
        path = Path(_WRAPPER_DIR) / "python-own-group"
        path.write_text(
            f"#!{sys.executable}\n"
            "import os, signal, sys\n"
            "try:\n    os.setpgid(0, 0)\nexcept OSError:\n    pass\n"
            "signal.signal(signal.SIGTTOU, signal.SIG_IGN)\n"
            f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
        )
        path.chmod(0o755)
        return str(path)
    except OSError:
        return None


@contextlib.contextmanager
def engine_processes_in_own_group(thread: threading.Thread):
    """While the engine starts, processes it spawns or forks start in a process group of their own."""
    global _NEW_GROUP_FORKS_FROM, _FORK_HOOK
    import multiprocessing.spawn as mp_spawn

    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_new_group_after_fork)  # once per process; acts only while starting
        _FORK_HOOK = True

    previous = mp_spawn.get_executable()
    wrapper = _own_group_wrapper(os.fsdecode(previous)) if previous else None
    if wrapper is not None:
        mp_spawn.set_executable(wrapper)
    _NEW_GROUP_FORKS_FROM = thread.ident
    try:
        yield
    finally:
        _NEW_GROUP_FORKS_FROM = None
        if wrapper is not None:
            mp_spawn.set_executable(previous)


def shutdown_late_engine(fut: concurrent.futures.Future) -> None:
    """Shut down an engine whose start finished after the caller gave up waiting for it."""
    if fut.cancelled() or fut.exception() is not None:
        return
    with contextlib.suppress(Exception):
        fut.result().shutdown()


class Watchdog:
    """The engine watchdog (``_watchdog.py``, a process of its own), which stops the engine processes
    if this process dies without shutting them down (SIGKILL, a crash)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it (once), telling it which children of this process existed before the engine."""
        if self._proc is not None:
            return
        import psutil

        try:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("_watchdog.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("cannot start the engine watchdog (%s); engine processes may outlive a killed run", exc)
            return
        before = ",".join(str(c.pid) for c in psutil.Process().children())
        self.say(f"begin {os.getpid()} {before}")

    def say(self, line: str) -> None:
        """Send one line of the watchdog's protocol (see ``_watchdog.py``)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()

    def stop(self) -> None:
        """Close the watchdog's input: it stops whatever engine process is left, then exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=15)  # its grace (8 s) and SIGKILL wait (2 s), should anything be left
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
