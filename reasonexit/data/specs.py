"""The named benchmark sets: where each loads from, which columns hold what, how it is graded."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError

#: File endings a local dataset file may have.
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named benchmark and read its rows.

    The ``*_fields`` tuples list candidate column names for each role, tried in order
    (case-insensitively), because hub copies and locally packaged copies of the same set do not
    always use the same names.
    """

    name: str
    hub: str | None
    config: str | None
    split: str
    problem_fields: tuple[str, ...]
    answer_fields: tuple[str, ...]
    id_fields: tuple[str, ...]
    kind: str
    prompt_style: str
    # Local file names (stems, lower case) recognised as this set.
    file_stems: tuple[str, ...] = ()
    # Columns copied into Problem.meta when present.
    meta_fields: tuple[str, ...] = ()
    description: str = ""


#: The built-in generated set; the hard testbed's set is the same but for its name and generator.
_SYNTHETIC = DatasetSpec(
    name="synthetic",
    hub=None,
    config=None,
    split="test",
    problem_fields=("problem",),
    answer_fields=("answer",),
    id_fields=("id",),
    kind="math",
    prompt_style="math",
    description="built-in offline arithmetic problems (reasonexit.data.synthetic)",
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="gsm8k",
            hub="openai/gsm8k",
            config="main",
            split="test",
            problem_fields=("question", "problem"),
            answer_fields=("answer",),
            id_fields=("id", "idx"),
            kind="gsm8k",
            prompt_style="gsm8k",
            file_stems=("gsm8k", "gsm8k_test", "gsm8k-test", "gsm8k_main_test"),
            description="GSM8K grade-school math, 1319 test problems; gold after '####'",
        ),
        DatasetSpec(
            name="aime24",
            hub="HuggingFaceH4/aime_2024",
            config=None,
            split="train",
            problem_fields=("problem", "question"),
            answer_fields=("answer", "solution"),
            id_fields=("id",),
            kind="math",
            prompt_style="math",
            file_stems=("aime24", "aime_2024", "aime2024", "aime-2024"),
            meta_fields=("url", "year"),
            description="AIME 2024 I+II, 30 problems with integer answers",
        ),
        DatasetSpec(
            name="aime25",
            hub="math-ai/aime25",
            config=None,
            split="test",
            problem_fields=("problem", "question"),
            answer_fields=("answer",),
            id_fields=("id",),
            kind="math",
            prompt_style="math",
            file_stems=("aime25", "aime_2025", "aime2025", "aime-2025"),
            meta_fields=("url", "year"),
            description="AIME 2025 I+II, 30 problems",
        ),
        DatasetSpec(
            name="math500",
            hub="HuggingFaceH4/MATH-500",
            config=None,
            split="test",
            problem_fields=("problem", "question"),
            answer_fields=("answer", "solution"),
            id_fields=("unique_id", "id"),
            kind="math",
            prompt_style="math",
            file_stems=("math500", "math-500", "math_500", "math500_test"),
            meta_fields=("subject", "level"),
            description="MATH-500 (Lightman et al. subset of MATH test), 500 problems",
        ),
        DatasetSpec(
            name="amc23",
            hub="math-ai/amc23",
            config=None,
            split="test",
            problem_fields=("problem", "question"),
            answer_fields=("answer",),
            id_fields=("id",),
            kind="math",
            prompt_style="math",
            file_stems=("amc23", "amc_2023", "amc2023", "amc-2023"),
            meta_fields=("url",),
            description="AMC 2023, 40 problems; answers stored as floats (27.0)",
        ),
        DatasetSpec(
            name="gpqa",
            hub="Idavidrein/gpqa",
            config="gpqa_diamond",
            split="train",
            problem_fields=("problem", "question"),
            answer_fields=("answer",),
            id_fields=("id", "record id"),
            kind="choice",
            prompt_style="choice",
            file_stems=("gpqa", "gpqa_diamond", "gpqa-diamond"),
            meta_fields=("subdomain", "high-level domain"),
            description="GPQA Diamond, 198 four-way multiple-choice questions (gated on the hub)",
        ),
        _SYNTHETIC,
        replace(
            _SYNTHETIC,
            name="synthetic_hard",
            description="built-in harder arithmetic problems of the hard testbed (reasonexit.data.synthetic_hard)",
        ),
    )
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_problems` besides file paths."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """Return the registry entry for ``name`` (case-insensitive; hub ids such as ``openai/gsm8k`` work).

    Raises :class:`UserError` for an unknown name.
    """
    spec = lookup_spec(name)
    if spec is None:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return spec


def lookup_spec(name: str) -> DatasetSpec | None:
    key = name.strip().lower()
    if key in DATASETS:
        return DATASETS[key]
    for spec in DATASETS.values():
        if spec.hub and spec.hub.lower() == key:
            return spec
    return None


def spec_for_file(path: Path) -> DatasetSpec | None:
    stem = path.name.lower()
    for suffix in LOCAL_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for spec in DATASETS.values():
        if stem in spec.file_stems:
            return spec
    return None
