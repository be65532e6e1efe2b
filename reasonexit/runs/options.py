"""The options of an evaluation run (``reasonexit eval``) and the model-family presets.

Each field is declared once with its help text; the command line, ``--help`` and the checks come
from it (see :mod:`reasonexit.options`). Decoding settings are :class:`~reasonexit.methods.base.Decoding`
and engine settings :class:`~reasonexit.engine.EngineConfig`; a method's own options are its
``Params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..options import check_at_least, opt


@dataclass
class ProblemOptions:
    """Which problems a run solves, how many times, and how the run behaves (``eval`` and ``sweep``)."""

    dataset: str = opt(
        "synthetic",
        help="dataset name (gsm8k, aime24, ..., synthetic_hard for the hard testbed) or a local "
        ".jsonl/.json/.parquet file",
    )
    dataset_format: str | None = opt(None, help="named dataset whose column mapping a local file uses")
    split: str | None = opt(None, help="dataset split (hub datasets)")
    problem_field: str | None = opt(None, help="column holding the problem text")
    answer_field: str | None = opt(None, help="column holding the gold answer")
    id_field: str | None = opt(None, help="column holding the problem id")
    difficulty: int | None = opt(None, help="synthetic set: only this difficulty (1-4)")
    data_seed: int = opt(0, help="synthetic set: generator seed")
    limit: int | None = opt(None, help="first N problems only")
    samples: int = opt(
        1, help="samples per problem (model cards: 16-64 at temperature 0.6); reports pass@1 ± s.e., cons@K, pass@K"
    )
    preset: str | None = opt(
        None, help="model-card decoding settings of a family: " + ", ".join(sorted(["r1", "qwen3", "qwq"]))
    )
    max_in_flight: int = opt(256, help="problems in flight at once")
    fail_fast: bool = opt(False, help="stop at the first problem that fails (default: an error row, the run goes on)")
    quiet: bool = opt(False, help="no progress bar; errors only")
    verbose: bool = opt(False, help="show vLLM's own logs (quiet by default)")

    def __post_init__(self) -> None:
        """Reject impossible values before anything starts (:class:`~reasonexit.options.OptionError` s;
        the command line reports them by flag)."""
        if self.limit is not None:
            check_at_least("limit", self.limit, 1)
        check_at_least("samples", self.samples, 1)
        check_at_least("max_in_flight", self.max_in_flight, 1)
        if self.preset is not None and self.preset not in PRESETS:
            raise UserError(f"unknown --preset {self.preset!r}; choose from: {', '.join(sorted(PRESETS))}")

    def load(self, split: str | None = None) -> list:
        """The problems these options name (``split``: another split of the same set)."""
        from ..data.datasets import load_problems

        return load_problems(
            self.dataset,
            limit=self.limit,
            split=split or self.split,
            problem_field=self.problem_field,
            answer_field=self.answer_field,
            id_field=self.id_field,
            dataset_format=self.dataset_format,
            synthetic_seed=self.data_seed,
            synthetic_difficulty=self.difficulty,
        )


@dataclass
class EvalOptions(ProblemOptions):
    """What to evaluate, where the rows go, and how the run behaves."""

    method: str = opt("vanilla", help="method name (see `reasonexit methods`); its options follow as --name value")
    settings: str | None = opt(
        None, help="settings file of a method and its options (written by `reasonexit calibrate`); flags win"
    )
    out: str | None = opt(None, help="result file (jsonl); re-running with the same file resumes")
    plot: str | None = opt(None, help="also write an accuracy-vs-tokens PNG here")


#: Decoding settings the model cards give for evaluating each family. DeepSeek-R1 (and its
#: distills): temperature 0.6, top-p 0.95, up to 32,768 generated tokens, the math prompt
#: "Please reason step by step, and put your final answer within \\boxed{}." Qwen3 (thinking mode)
#: and QwQ: temperature 0.6, top-p 0.95, top-k 20, 32,768 tokens. The prompt template is the one
#: reasonexit uses for math already (:data:`reasonexit.data.prompts.MATH_TEMPLATE`).
PRESETS: dict[str, dict[str, Any]] = {
    "r1": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768},
    "qwen3": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 32768},
    "qwq": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 32768},
}
