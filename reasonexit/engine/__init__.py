"""The shared vLLM engine: one session per model, its configuration, the platform it runs on, and
the processes it starts.

- :mod:`.session`: :class:`EngineSession` (one vLLM ``AsyncLLM`` on an event loop of its own) and
  the process-wide named sessions;
- :mod:`.config`: :class:`EngineConfig` and what it names on disk (tokenizer, context, dtype);
- :mod:`.platform`: where engines run (the one GPU-or-CPU check), GPU memory shares, CPU cores,
  KV size and dtype;
- :mod:`.processes`: process groups, the main-guard check (``_watchdog.py`` runs by path);
- :mod:`.logs`: quiet by default; :mod:`.types`: usage, deltas, completions.
"""

from .config import BUNDLED_MODELS, DEFAULT_MODEL, HARD_MODEL, EngineConfig, resolve_model
from .platform import on_gpu, reserve_spare_core, spare_cpu_core
from .session import EngineSession, close_all_sessions, get_session
from .types import Completion, Delta, Usage

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "HARD_MODEL",
    "resolve_model",
    "Completion",
    "Delta",
    "EngineConfig",
    "EngineSession",
    "Usage",
    "close_all_sessions",
    "get_session",
    "on_gpu",
    "reserve_spare_core",
    "spare_cpu_core",
]
