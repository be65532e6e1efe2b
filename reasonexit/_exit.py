"""Quick interpreter exit for processes that hold vLLM and torch.

A process with vLLM, torch and a model loaded holds some 600,000 Python objects, and the
garbage collections CPython runs while it finalizes walk them all, seconds after the last line
of ``reasonexit eval`` and in every engine shutdown (the EngineCore process's own exit, which
``AsyncLLM.shutdown`` waits for; figures in docs/results.md). Freezing the
collector at exit (:func:`gc.freeze`) skips those walks. Objects are still freed when their last
reference goes; only garbage in reference cycles is left for the operating system to reclaim,
so no ``__del__`` of such an object runs at exit (engines are shut down explicitly before:
``EngineSession.close``). Every ``atexit`` handler registered before this one still runs, after it.
"""

from __future__ import annotations

import atexit
import gc
import sys

_registered = False


def freeze_gc_at_exit() -> None:
    """Skip the final garbage collections of this process at interpreter exit (once per process)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(gc.freeze)


def freeze_gc_at_exit_in_engine_processes() -> None:
    """:func:`freeze_gc_at_exit` in a process that :mod:`multiprocessing` started, such as vLLM's
    EngineCore and workers (they re-import the main module, hence ``reasonexit``, at start)."""
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.current_process().name != "MainProcess":
        freeze_gc_at_exit()
