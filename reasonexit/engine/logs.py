"""Logging of the engine processes: quiet by default, everything with ``--verbose``.

Called once by the entry points (the CLI, ``serve``, and a session's creation for the API),
before vLLM is imported: vLLM reads its logging level at import, and its engine processes inherit
the environment.
"""

from __future__ import annotations

import logging
import os


def quiet_by_default() -> None:
    """Keep vLLM, torch and transformers to errors unless the user asked for more.

    vLLM prints some fifty INFO/WARNING lines per engine start (in this process and in its engine
    processes, which inherit the environment), torch's C++ layer a few more. Only unset variables
    are set, so ``VLLM_LOGGING_LEVEL=INFO`` (what ``--verbose`` sets) shows everything again. Runs
    before vLLM is imported; idempotent.
    """
    if os.environ.get("REASONEXIT_VERBOSE"):
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # vLLM's own import-time FutureWarnings (torch.distributed.reduce_op), in its engine processes
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op", category=FutureWarning)
    # torch says once per process that Triton is absent (the CPU install removes the CUDA Triton):
    # here through the logger, in the engine processes (fresh interpreters) through TORCH_LOGS,
    # which torch reads at import ("-" sets a logger to errors only)
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    if not os.environ.get("TORCH_LOGS"):
        os.environ["TORCH_LOGS"] = "-torch._library.triton"
    logging.getLogger("vllm.v1.engine.async_llm").addFilter(_drop_engine_dead_traceback)


def _drop_engine_dead_traceback(record: logging.LogRecord) -> bool:
    """Drop vLLM's front-end traceback for a dead engine ("AsyncLLM output_handler failed." with
    ``EngineDeadError``): it shows vLLM's plumbing, and reasonexit says the engine died in one line
    (the CLI) or raises (the API). The engine process's own log of the root cause, if it had time to
    write one, is left alone; ``--verbose`` shows everything."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and type(exc).__name__ == "EngineDeadError")


def verbose() -> bool:
    return os.environ.get("VLLM_LOGGING_LEVEL", "").upper() in ("INFO", "DEBUG")


def route_logs(quiet: bool) -> None:
    """Engine logs go to stderr (stdout carries the result table); ``--quiet`` keeps errors only.

    Must run before vLLM is imported: vLLM configures its logger from the environment at import.
    """
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if quiet:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("vllm").setLevel(logging.ERROR)
        logging.getLogger("reasonexit").setLevel(logging.ERROR)
