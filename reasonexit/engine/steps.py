"""Engine steps (forward passes), counted from vLLM's own per-iteration statistics.

On a GPU a decode step costs about the same for 1 or 64 sequences, so the number of steps a run
takes, not its tokens, is what its wall time follows there; on this CPU decoding is compute-bound
and wall time follows tokens. A run's steps are therefore the honest stand-in for GPU wall time
(synchronous rounds and stragglers show up in them), and ``reasonexit sweep`` reports them.

vLLM's front end hands every batch of outputs an engine iteration produced to its stat loggers,
with the iteration's statistics; :class:`StepCounter` is such a logger (vLLM's public
``StatLoggerBase`` interface) and counts those batches per engine. It runs in the process that
owns the ``AsyncLLM``, whichever model runner, platform or scheduling mode the engine uses.
"""

from __future__ import annotations

import threading
from typing import Any


class StepCounter:
    """Engine iterations that produced output, per engine index (thread-safe totals)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[int, int] = {}
        self._tokens: dict[int, int] = {}

    @property
    def steps(self) -> int:
        """Iterations counted so far, over all engines (data-parallel replicas) of the session."""
        with self._lock:
            return sum(self._steps.values())

    @property
    def generated_tokens(self) -> int:
        """Tokens those iterations generated (a cross-check against the runs' own counts)."""
        with self._lock:
            return sum(self._tokens.values())

    def add(self, engine_idx: int, generated: int) -> None:
        """Count one iteration of engine ``engine_idx`` that generated ``generated`` tokens."""
        with self._lock:
            self._steps[engine_idx] = self._steps.get(engine_idx, 0) + 1
            self._tokens[engine_idx] = self._tokens.get(engine_idx, 0) + generated

    def factory(self) -> Any:
        """A vLLM stat-logger factory (``stat_loggers=[...]``) that reports to this counter."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        counter = self

        class _StepLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                # vLLM builds iteration statistics only for an iteration that produced outputs
                if iteration_stats is not None:
                    counter.add(engine_idx, int(iteration_stats.num_generation_tokens))

            def log_engine_initialized(self) -> None:
                pass

        return _StepLogger
