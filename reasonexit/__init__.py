"""reasonexit: stop reasoning models from overthinking.

Early-exit methods on a shared vLLM engine (``vanilla`` and ``budget`` baselines; DEER,
FlashThink and First Finish Search plug into the same method interface) and S-GRPO training on
TRL. Start with :func:`generate`, or ``reasonexit eval`` on the command line.

The names below are imported on first use: importing vLLM takes seconds, and the command line
installs its signal handlers before that (a Ctrl-C while it loads gets one line, not a traceback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._exit import freeze_gc_at_exit_in_engine_processes
from ._lazy import lazy_names
from .errors import UserError

freeze_gc_at_exit_in_engine_processes()

if TYPE_CHECKING:
    from .api import agenerate, calibrate, generate, sweep
    from .engine import DEFAULT_MODEL, HARD_MODEL, EngineConfig, EngineSession, get_session
    from .runs.evaluate import evaluate
    from .runs.results import Result

__version__ = "0.1.0"

_LAZY = {
    "agenerate": "api",
    "calibrate": "api",
    "sweep": "api",
    "evaluate": "runs.evaluate",
    "generate": "api",
    "DEFAULT_MODEL": "engine.session",
    "HARD_MODEL": "engine.config",
    "EngineConfig": "engine.session",
    "EngineSession": "engine.session",
    "get_session": "engine.session",
    "Result": "runs.results",
}

__all__ = [
    "DEFAULT_MODEL",
    "HARD_MODEL",
    "EngineConfig",
    "EngineSession",
    "Result",
    "UserError",
    "agenerate",
    "calibrate",
    "evaluate",
    "generate",
    "get_session",
    "sweep",
]

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
