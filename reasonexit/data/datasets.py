"""Benchmark datasets: a registry of named sets, local files, and the built-in synthetic set.

:func:`load_problems` turns any of these into a list of :class:`Problem`:

- a registry name (``gsm8k``, ``aime24``, ``aime25``, ``math500``, ``amc23``, ``gpqa``) loads the
  set from the Hugging Face hub with :func:`datasets.load_dataset`;
- a path to a ``.jsonl`` / ``.json`` / ``.parquet`` file loads it through the same library. A file
  named like a known set (``gsm8k_test.jsonl``, ``math500.jsonl``, ``gpqa_diamond.jsonl`` ...) uses
  that set's column mapping and answer kind; otherwise the columns are guessed from common names;
- ``synthetic`` generates problems offline with :mod:`reasonexit.data.synthetic`.

Every problem carries its normalised gold answer (:func:`reasonexit.data.answers.extract_gold`), its
answer kind (how :func:`reasonexit.data.answers.grade` compares answers) and the formatted user message
(:func:`reasonexit.data.prompts.format_prompt`).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, one_line
from .answers import extract_answer, extract_gold
from .prompts import format_prompt
from .specs import DATASETS, LOCAL_SUFFIXES, DatasetSpec, dataset_names, get_spec, lookup_spec, spec_for_file

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Problem",
    "SYNTHETIC_DEFAULT_N",
    "dataset_names",
    "get_spec",
    "load_problems",
]

SYNTHETIC_DEFAULT_N = 300
#: The generated sets: the bundled testbed's problems and the hard testbed's.
SYNTHETIC_SETS = ("synthetic", "synthetic_hard")

# Column names tried, in order, when a file's columns are not known in advance.
GENERIC_PROBLEM_FIELDS = ("problem", "question", "prompt", "input", "query", "instruction")
GENERIC_ANSWER_FIELDS = ("answer", "final_answer", "solution", "target", "label", "gold", "output")
GENERIC_ID_FIELDS = ("id", "unique_id", "idx", "problem_id", "qid", "uid", "index")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, ready to prompt a model with and to grade against.

    ``problem`` is the raw problem text, ``prompt`` the formatted user message (without any chat
    template), ``gold`` the normalised gold answer, ``kind`` the answer kind for
    :func:`reasonexit.data.answers.grade` and ``meta`` extra per-row information (subject, level,
    difficulty, url ...). ``meta`` does not take part in equality or hashing.
    """

    id: str
    problem: str
    gold: str
    kind: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        return {
            "id": self.id,
            "problem": self.problem,
            "gold": self.gold,
            "kind": self.kind,
            "prompt": self.prompt,
            "meta": dict(self.meta),
        }


# Raw GPQA columns on the hub (Idavidrein/gpqa): the question, the correct option and three
# distractors, which we turn into an A-D problem with a seeded shuffle.
_GPQA_RAW_QUESTION = "Question"
_GPQA_RAW_CORRECT = "Correct Answer"
_GPQA_RAW_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
_LETTERS = "ABCD"

# An instruction some packagings append to the problem; format_prompt adds our own.
_EMBEDDED_INSTRUCTION_RE = re.compile(
    r"\s*\n\s*Please reason step[- ]by[- ]step[^\n]*\\boxed\{\}[^\n]*\s*$", re.IGNORECASE
)
# "stem\n\nA. ...\nB. ...\nC. ...\nD. ..." (options may span lines; the stem is greedy so the last
# A-D block is taken).
_OPTIONS_RE = re.compile(
    r"^(?P<stem>.*\S)\s*\n\s*A\.[ \t]+(?P<A>.*?)\s*\n\s*B\.[ \t]+(?P<B>.*?)\s*\n\s*C\.[ \t]+(?P<C>.*?)"
    r"\s*\n\s*D\.[ \t]+(?P<D>.*?)\s*$",
    re.DOTALL,
)


# --------------------------------------------------------------------------------------------
# Loading through the `datasets` library
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[Any]:
    """Import :mod:`datasets` with progress bars and info logging off; restore them afterwards."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_on = ds_logging.is_progress_bar_enabled()
    verbosity = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    try:
        yield datasets
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars_were_on:
            ds_logging.enable_progress_bar()


def _load_local_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and column names of a local .jsonl/.json/.parquet file, read with `datasets`."""
    if not path.is_file():
        raise UserError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise UserError(
            f"unsupported dataset file type {suffix or '(none)'!r} for {str(path)!r}; "
            f"use one of {', '.join(LOCAL_SUFFIXES)}"
        )
    if path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_bytes().strip()):
        raise UserError(f"dataset file {str(path)!r} is empty")
    builder = "parquet" if suffix == ".parquet" else "json"
    with _quiet_datasets() as datasets:
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            if "corresponds to no data" in str(exc):  # e.g. a .json file holding []
                raise UserError(f"dataset file {str(path)!r} is empty") from exc
            raise UserError(f"could not read dataset file {str(path)!r}: {one_line(exc, innermost=True)}") from exc
    return list(ds), list(ds.column_names)


def _load_hub_rows(
    spec: DatasetSpec, split: str | None, limit: int | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and column names of a registry set, downloaded from the Hugging Face hub."""
    assert spec.hub is not None
    split = split or spec.split
    with _quiet_datasets() as datasets:
        try:
            if spec.config:
                ds = datasets.load_dataset(spec.hub, spec.config, split=split)
            else:
                ds = datasets.load_dataset(spec.hub, split=split)
        except Exception as exc:
            hint = ""
            if spec.name == "gpqa":
                hint = " (GPQA is gated: accept its terms on the hub and log in with `hf auth login`)"
            raise UserError(
                f"could not load dataset {spec.name!r} from the hub ({spec.hub}, split {split!r}): "
                f"{one_line(exc, innermost=True)}{hint}; a local .jsonl copy can be passed as a path instead"
            ) from exc
        if limit is not None and limit < len(ds):
            ds = ds.select(range(limit))
        return list(ds), list(ds.column_names)


# --------------------------------------------------------------------------------------------
# Column mapping and row conversion
# --------------------------------------------------------------------------------------------


def _resolve_field(
    role: str, explicit: str | None, candidates: Sequence[str], columns: Sequence[str], source: str
) -> str | None:
    """Pick the column for ``role``: the explicit name if given (must exist), else the first candidate
    present (case-insensitive), else None."""
    lowered = {c.lower(): c for c in columns}
    if explicit is not None:
        if explicit in columns:
            return explicit
        if explicit.lower() in lowered:
            return lowered[explicit.lower()]
        raise UserError(
            f"{role} field {explicit!r} is not a column of {source}; columns: {', '.join(columns)}"
        )
    for cand in candidates:
        if cand.lower() in lowered:
            return lowered[cand.lower()]
    return None


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    return isinstance(value, str) and not value.strip()


def _strip_embedded_instruction(text: str) -> str:
    """Drop a trailing 'Please reason step by step ... \\boxed{}' line (format_prompt adds one)."""
    return _EMBEDDED_INSTRUCTION_RE.sub("", text).strip()


def _format_choices(stem: str, options: Sequence[str]) -> str:
    lines = [f"{letter}. {opt.strip()}" for letter, opt in zip(_LETTERS, options, strict=True)]
    return stem.strip() + "\n\n" + "\n".join(lines)


def _shuffle_options(correct: str, wrong: Sequence[str], key: str) -> tuple[list[str], str]:
    """Deterministically place ``correct`` among ``wrong``; return (options, gold letter)."""
    options = [correct, *wrong]
    order = list(range(len(options)))
    random.Random(key).shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, _LETTERS[order.index(0)]


def _reshuffle_choice_problem(text: str, gold_letter: str, key: str) -> tuple[str, str, list[str]] | None:
    """Re-order the A-D options of a pre-formatted problem; None if the options can't be parsed."""
    m = _OPTIONS_RE.match(text)
    if not m or gold_letter not in _LETTERS:
        return None
    options = [m.group(letter).strip() for letter in _LETTERS]
    if any(not opt for opt in options):
        return None
    correct = options[_LETTERS.index(gold_letter)]
    wrong = [opt for i, opt in enumerate(options) if _LETTERS[i] != gold_letter]
    shuffled, letter = _shuffle_options(correct, wrong, key)
    return _format_choices(m.group("stem"), shuffled), letter, shuffled


def _gpqa_raw_to_rows(
    rows: list[dict[str, Any]], columns: list[str], seed: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Turn hub GPQA rows (Question / Correct Answer / Incorrect Answer 1-3) into problem/answer rows."""
    out: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        for col in (_GPQA_RAW_QUESTION, _GPQA_RAW_CORRECT, *_GPQA_RAW_WRONG):
            if _is_empty(row.get(col)):
                raise UserError(f"GPQA row {index + 1}: missing or empty {col!r} field")
        rid = row.get("Record ID")
        rid = str(rid) if not _is_empty(rid) else f"gpqa-{index}"
        options, letter = _shuffle_options(
            str(row[_GPQA_RAW_CORRECT]).strip(),
            [str(row[c]).strip() for c in _GPQA_RAW_WRONG],
            key=f"{seed}:{rid}",
        )
        new = {
            "id": rid,
            "problem": _format_choices(str(row[_GPQA_RAW_QUESTION]), options),
            "answer": letter,
            "choices": options,
        }
        for col in ("Subdomain", "High-level domain"):
            if col in row:
                new[col.lower()] = row[col]
        out.append(new)
    new_columns = ["id", "problem", "answer", "choices", "subdomain", "high-level domain"]
    return out, [c for c in new_columns if any(c in r for r in out)]


def _sniff_kind(values: Sequence[Any]) -> str:
    """Guess the answer kind of an unknown file from its gold values."""
    strs = [str(v).strip() for v in values if not _is_empty(v)]
    if strs and all(re.fullmatch(r"\(?[A-Da-d]\)?", s) for s in strs):
        return "choice"
    if strs and all("####" in s for s in strs):
        return "gsm8k"
    return "math"


def _rows_to_problems(
    rows: list[dict[str, Any]],
    columns: list[str],
    *,
    name: str,
    source: str,
    spec: DatasetSpec | None,
    problem_field: str | None,
    answer_field: str | None,
    id_field: str | None,
    choice_seed: int | None,
) -> list[Problem]:
    if spec is not None:
        problem_cands, answer_cands, id_cands = spec.problem_fields, spec.answer_fields, spec.id_fields
    else:
        problem_cands, answer_cands, id_cands = (
            GENERIC_PROBLEM_FIELDS,
            GENERIC_ANSWER_FIELDS,
            GENERIC_ID_FIELDS,
        )

    def resolve(role: str, explicit: str | None, cands: Sequence[str], generic: Sequence[str]) -> str | None:
        if explicit is not None:
            return _resolve_field(role, explicit, (), columns, source)
        found = _resolve_field(role, None, cands, columns, source)
        if found is None and spec is not None:
            # A file named like a known set but laid out differently: try the generic names.
            found = _resolve_field(role, None, generic, columns, source)
        return found

    pfield = resolve("problem", problem_field, problem_cands, GENERIC_PROBLEM_FIELDS)
    afield = resolve("answer", answer_field, answer_cands, GENERIC_ANSWER_FIELDS)
    ifield = resolve("id", id_field, id_cands, GENERIC_ID_FIELDS)
    for role, found, cands in (("problem", pfield, problem_cands), ("answer", afield, answer_cands)):
        if found is None:
            raise UserError(
                f"cannot find {'an' if role == 'answer' else 'a'} {role} column in {source} "
                f"(tried {', '.join(cands)}); columns: {', '.join(columns)}; "
                f"name it explicitly ({role}_field=...)"
            )
    assert pfield is not None and afield is not None

    if spec is not None:
        kind, style = spec.kind, spec.prompt_style
    else:
        kind = _sniff_kind([r.get(afield) for r in rows])
        style = "choice" if kind == "choice" else "math"
    meta_fields = spec.meta_fields if spec is not None else ()
    lowered = {c.lower(): c for c in columns}

    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        raw_problem = row.get(pfield)
        raw_answer = row.get(afield)
        if _is_empty(raw_problem):
            raise UserError(f"{source}: row {index + 1} has a missing or empty {pfield!r} field (the problem)")
        if _is_empty(raw_answer):
            raise UserError(f"{source}: row {index + 1} has a missing or empty {afield!r} field (the answer)")
        text = _strip_embedded_instruction(str(raw_problem))
        if not text:
            raise UserError(f"{source}: row {index + 1} has an empty {pfield!r} field (the problem)")

        # A full solution instead of a bare answer (e.g. a 'solution' column): take its \boxed{}.
        if kind != "gsm8k" and isinstance(raw_answer, str) and "\\boxed" in raw_answer:
            boxed = extract_answer(raw_answer, kind)
            if boxed is None:
                raise UserError(f"{source}: row {index + 1}: no final answer found in the {afield!r} field")
            raw_answer = boxed
        try:
            gold = extract_gold(raw_answer, kind)
        except ValueError as exc:
            raise UserError(f"{source}: row {index + 1} has an unusable {afield!r} field: {exc}") from exc

        meta: dict[str, Any] = {}
        for mf in meta_fields:
            col = lowered.get(mf.lower())
            if col is not None and col not in (pfield, afield) and not _is_empty(row.get(col)):
                meta[mf] = row[col]
        if spec is None:
            # Unknown layout: keep short scalar extra columns (difficulty, level, subject ...).
            for col in columns:
                value = row.get(col)
                if col in (pfield, afield, ifield) or _is_empty(value):
                    continue
                if isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) <= 200):
                    meta[col] = value
        if "choices" in row and isinstance(row["choices"], list):
            meta["choices"] = list(row["choices"])

        if ifield is not None and not _is_empty(row.get(ifield)):
            pid = str(row[ifield]).strip()
        else:
            pid = f"{name}-{index}"
        if pid in seen:
            raise UserError(
                f"{source}: rows {seen[pid]} and {index} have the same id {pid!r}; ids must be unique"
            )
        seen[pid] = index

        if kind == "choice" and choice_seed is not None and "choices" not in meta:
            reshuffled = _reshuffle_choice_problem(text, gold, key=f"{choice_seed}:{pid}")
            if reshuffled is not None:
                meta["original_answer"] = gold
                text, gold, meta["choices"] = reshuffled

        problems.append(
            Problem(
                id=pid,
                problem=text,
                gold=gold,
                kind=kind,
                prompt=format_prompt(text, style),
                meta=meta,
            )
        )
    return problems


def _load_synthetic(
    limit: int | None, split: str | None, seed: int, difficulty: int | None, hard: bool = False
) -> list[Problem]:
    try:
        from .synthetic import generate_problems
        from .synthetic_hard import generate_hard_problems
    except ImportError as exc:  # pragma: no cover - part of the package
        raise UserError(f"the synthetic dataset is unavailable: {one_line(exc, innermost=True)}") from exc
    n = SYNTHETIC_DEFAULT_N if limit is None else limit
    generate = generate_hard_problems if hard else generate_problems
    try:
        rows = generate(n, split=split or "test", seed=seed, difficulty=difficulty)
    except ValueError as exc:  # bad split / difficulty
        raise UserError(f"synthetic dataset: {exc}") from exc
    problems = []
    for row in rows:
        text = str(row["problem"])
        problems.append(
            Problem(
                id=str(row["id"]),
                problem=text,
                gold=extract_gold(row["answer"], "math"),
                kind="math",
                prompt=format_prompt(text, "math"),
                meta={"difficulty": row["difficulty"]} if "difficulty" in row else {},
            )
        )
    return problems


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_problems(
    name_or_path: str,
    *,
    limit: int | None = None,
    split: str | None = None,
    problem_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    dataset_format: str | None = None,
    synthetic_seed: int = 0,
    synthetic_difficulty: int | None = None,
    choice_seed: int | None = 0,
) -> list[Problem]:
    """Load a benchmark as a list of :class:`Problem`.

    Args:
        name_or_path: a registry name (see :func:`dataset_names`; hub ids of registry sets such as
            ``openai/gsm8k`` also work), ``"synthetic"``, or a path to a ``.jsonl``, ``.json`` or
            ``.parquet`` file (anything ending in one of these suffixes is treated as a path).
        limit: keep only the first ``limit`` problems (for ``synthetic``: how many to generate,
            default :data:`SYNTHETIC_DEFAULT_N`).
        split: hub split (default: the set's usual evaluation split) or synthetic split. Local files
            have a single split, so it is ignored for them.
        problem_field, answer_field, id_field: explicit column names, overriding the set's mapping
            or the guessed one.
        dataset_format: treat a local file as this registry set (column mapping, answer kind,
            prompt style) whatever its name. By default the file name decides (``gsm8k_test.jsonl``
            is read as ``gsm8k``), and unknown names get guessed columns and answer kind.
        synthetic_seed, synthetic_difficulty: passed to
            :func:`reasonexit.data.synthetic.generate_problems`.
        choice_seed: multiple-choice options are re-ordered with a shuffle seeded by this value and
            the problem id, so the correct letter is spread over A-D (the locally packaged GPQA file
            has every answer at ``A``, and the hub's raw columns carry no order at all). ``None``
            keeps a pre-formatted file's order (the hub GPQA columns are still shuffled, with seed 0).
            The file's own letter is kept in ``meta["original_answer"]``.

    Raises:
        UserError: unknown name, missing/empty/unreadable file, empty dataset, unknown column,
            rows with a missing or empty problem/answer, duplicate ids, bad ``limit``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise UserError(
            f"no dataset given; pass a dataset name ({', '.join(DATASETS)}) or a .jsonl/.json/.parquet path"
        )

    format_spec = get_spec(dataset_format) if dataset_format is not None else None
    path = Path(name_or_path).expanduser()
    registry_spec = lookup_spec(name_or_path)

    is_local = path.suffix.lower() in LOCAL_SUFFIXES or (registry_spec is None and path.is_file())
    if is_local:
        spec = format_spec or spec_for_file(path)
        if spec is not None and spec.name in SYNTHETIC_SETS:
            spec = None
        rows, columns = _load_local_rows(path)
        name = spec.name if spec is not None else path.stem
        source = str(path)
        if limit is not None:
            rows = rows[:limit]
    elif registry_spec is not None:
        spec = registry_spec
        if spec.name in SYNTHETIC_SETS:
            hard = spec.name == "synthetic_hard"
            problems = _load_synthetic(limit, split, synthetic_seed, synthetic_difficulty, hard)
            if not problems:
                raise UserError("the synthetic generator returned no problems")
            return problems
        rows, columns = _load_hub_rows(spec, split, limit)
        name = spec.name
        source = f"{spec.hub} ({split or spec.split})"
    else:
        raise UserError(
            f"unknown dataset {name_or_path!r}: not a known name and not an existing file; "
            f"known datasets: {', '.join(DATASETS)}; or pass a .jsonl/.json/.parquet path"
        )

    if not rows:
        raise UserError(f"dataset {source!r} has no rows")

    if _GPQA_RAW_QUESTION in columns and _GPQA_RAW_CORRECT in columns and problem_field is None:
        rows, columns = _gpqa_raw_to_rows(rows, columns, seed=choice_seed if choice_seed is not None else 0)
        if spec is None:
            spec = DATASETS["gpqa"]

    return _rows_to_problems(
        rows,
        columns,
        name=name,
        source=source,
        spec=spec,
        problem_field=problem_field,
        answer_field=answer_field,
        id_field=id_field,
        choice_seed=choice_seed,
    )
