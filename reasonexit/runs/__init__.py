"""Runs: problems solved by a method on the engine, their run files, results, reports and benchmarks.

- :mod:`.runner`: scheduling (prompts into jobs, every job in flight at once, results as they finish);
- :mod:`.runfile`: run files (signature, resume, the row writer, the ``--out`` check);
- :mod:`.evaluate`: a dataset evaluated into a run file; :mod:`.options`: its settings;
- :mod:`.results`, :mod:`.report`, :mod:`.bench`: per-problem results, summaries, benchmarks.

The names below are imported on first use, so importing this package (e.g. for the command
line's flags) does not import the modules that need pandas or the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from .bench import BenchRun, add_bench_args, open_bench, run_config, warm_up
    from .evaluate import EvalRun, evaluate
    from .options import PRESETS, EvalOptions
    from .report import markdown_table, plot_accuracy_vs_tokens, report, summarize
    from .results import Result
    from .runfile import OpenRun, default_run_path, latest_rows, open_run, read_run, run_signature
    from .runner import Job, Prompt, gather_or_cancel, jobs_for, prompt_job, solve_all, solve_job

_LAZY = {
    "BenchRun": "bench",
    "add_bench_args": "bench",
    "open_bench": "bench",
    "run_config": "bench",
    "warm_up": "bench",
    "EvalRun": "evaluate",
    "evaluate": "evaluate",
    "PRESETS": "options",
    "EvalOptions": "options",
    "markdown_table": "report",
    "plot_accuracy_vs_tokens": "report",
    "report": "report",
    "summarize": "report",
    "Result": "results",
    "OpenRun": "runfile",
    "default_run_path": "runfile",
    "latest_rows": "runfile",
    "open_run": "runfile",
    "read_run": "runfile",
    "run_signature": "runfile",
    "Job": "runner",
    "Prompt": "runner",
    "gather_or_cancel": "runner",
    "jobs_for": "runner",
    "prompt_job": "runner",
    "solve_all": "runner",
    "solve_job": "runner",
}

__all__ = [
    "BenchRun",
    "EvalOptions",
    "EvalRun",
    "Job",
    "OpenRun",
    "PRESETS",
    "Prompt",
    "Result",
    "add_bench_args",
    "default_run_path",
    "evaluate",
    "gather_or_cancel",
    "jobs_for",
    "latest_rows",
    "markdown_table",
    "open_bench",
    "open_run",
    "plot_accuracy_vs_tokens",
    "prompt_job",
    "read_run",
    "report",
    "run_config",
    "run_signature",
    "solve_all",
    "solve_job",
    "summarize",
    "warm_up",
]

__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
