"""Tests for benchmark loading (reasonexit.data.datasets), on the real files and on small temp files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import BENCHMARKS

from reasonexit.data.answers import extract_answer, grade
from reasonexit.data.datasets import DATASETS, Problem, dataset_names, get_spec, load_problems
from reasonexit.errors import UserError

BENCH = BENCHMARKS
needs_bench = pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"benchmark files not found at {BENCH} (shared/ must sit beside the repo)"
)

EXPECTED = {
    "gsm8k_test.jsonl": ("gsm8k", 1319, "gsm8k"),
    "aime24.jsonl": ("aime24", 30, "math"),
    "aime25.jsonl": ("aime25", 30, "math"),
    "math500.jsonl": ("math500", 500, "math"),
    "amc23.jsonl": ("amc23", 40, "math"),
    "gpqa_diamond.jsonl": ("gpqa", 198, "choice"),
}


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _raw_rows(name: str) -> list[dict]:
    with open(BENCH / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(dataset_names()) >= {"gsm8k", "aime24", "aime25", "math500", "amc23", "gpqa", "synthetic"}
    gsm = get_spec("gsm8k")
    assert (gsm.hub, gsm.config, gsm.split, gsm.kind) == ("openai/gsm8k", "main", "test", "gsm8k")
    assert get_spec("GPQA").config == "gpqa_diamond"
    assert get_spec("HuggingFaceH4/MATH-500").name == "math500"
    for spec in DATASETS.values():
        assert spec.kind in ("math", "gsm8k", "choice")
        assert spec.prompt_style in ("math", "gsm8k", "choice")
    with pytest.raises(UserError, match="known datasets"):
        get_spec("nope")


# --------------------------------------------------------------------------------------------
# The real benchmark files, through the local-path code path
# --------------------------------------------------------------------------------------------


@needs_bench
@pytest.mark.parametrize("file_name", list(EXPECTED))
def test_real_files_load(file_name: str) -> None:
    name, n_rows, kind = EXPECTED[file_name]
    problems = load_problems(str(BENCH / file_name))
    assert len(problems) == n_rows
    assert all(isinstance(p, Problem) for p in problems)
    assert len({p.id for p in problems}) == n_rows
    raw = _raw_rows(file_name)
    for p, row in zip(problems, raw, strict=True):
        assert p.kind == kind
        assert isinstance(p.id, str) and p.id
        assert p.gold and p.gold == p.gold.strip()
        assert p.problem and p.prompt
        assert "\\boxed{}" in p.prompt
        if kind != "choice":
            assert p.problem in p.prompt
            raw_problem = row.get("problem", row.get("question"))
            assert p.problem == raw_problem.strip()
        else:
            # The options are re-ordered, but the question stem is kept verbatim.
            stem = row["problem"].split("\n\nA. ")[0].strip()
            assert stem and stem in p.prompt
            assert p.prompt.count("\\boxed{}") == 1  # the file's own instruction is not repeated


@needs_bench
def test_real_file_golds_are_normalised() -> None:
    gsm = load_problems(str(BENCH / "gsm8k_test.jsonl"))
    assert all("####" not in p.gold and "," not in p.gold for p in gsm)
    assert all(p.gold.lstrip("-").replace(".", "", 1).isdigit() for p in gsm)
    assert gsm[0].gold == "18" and gsm[0].id == "gsm8k-0"

    amc = load_problems(str(BENCH / "amc23.jsonl"))
    assert amc[0].gold == "27"
    assert all(not p.gold.endswith(".0") for p in amc)

    math500 = load_problems(str(BENCH / "math500.jsonl"))
    assert math500[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert math500[0].id == "test/precalculus/807.json"
    assert math500[0].meta == {"subject": "Precalculus", "level": 2}

    aime24 = load_problems(str(BENCH / "aime24.jsonl"))
    assert aime24[0].gold == "204" and aime24[0].id == "60"


@needs_bench
def test_gpqa_options_reshuffled_consistently() -> None:
    gpqa = load_problems(str(BENCH / "gpqa_diamond.jsonl"))
    raw = _raw_rows("gpqa_diamond.jsonl")
    letters = Counter(p.gold for p in gpqa)
    # The packaged file has every answer at A; after the seeded shuffle all four letters occur.
    assert set(letters) == {"A", "B", "C", "D"} and max(letters.values()) < 100
    for p, row in zip(gpqa, raw, strict=True):
        assert p.gold in "ABCD"
        assert p.meta["original_answer"] == row["answer"]
        # The option marked correct after the shuffle is the one the file marked correct.
        correct_text = p.meta["choices"]["ABCD".index(p.gold)]
        assert f"{row['answer']}. {correct_text}" in row["problem"]
        assert f"{p.gold}. {correct_text}" in p.problem
    # Deterministic, and controllable.
    assert [p.gold for p in load_problems(str(BENCH / "gpqa_diamond.jsonl"))] == [p.gold for p in gpqa]
    other = load_problems(str(BENCH / "gpqa_diamond.jsonl"), choice_seed=1)
    assert [p.gold for p in other] != [p.gold for p in gpqa]
    kept = load_problems(str(BENCH / "gpqa_diamond.jsonl"), choice_seed=None)
    assert all(p.gold == "A" for p in kept)
    # Grading the letter works through the choice kind.
    assert grade(extract_answer(rf"\boxed{{{gpqa[0].gold}}}", "choice"), gpqa[0].gold, gpqa[0].kind)


@needs_bench
def test_limit() -> None:
    problems = load_problems(str(BENCH / "math500.jsonl"), limit=7)
    assert len(problems) == 7
    assert problems[0].id == "test/precalculus/807.json"
    assert len(load_problems(str(BENCH / "aime25.jsonl"), limit=1000)) == 30
    with pytest.raises(UserError, match="limit"):
        load_problems(str(BENCH / "aime25.jsonl"), limit=0)


@needs_bench
def test_dataset_format_override(tmp_path: Path) -> None:
    # A GSM8K-shaped file under an unknown name is read with the gsm8k mapping when asked to.
    rows = _raw_rows("gsm8k_test.jsonl")[:5]
    path = _write_jsonl(tmp_path / "my_copy.jsonl", rows)
    problems = load_problems(str(path), dataset_format="gsm8k")
    assert [p.kind for p in problems] == ["gsm8k"] * 5
    assert problems[0].gold == "18"
    # Without the override, '####' answers are still recognised.
    assert load_problems(str(path))[0].gold == "18"


# --------------------------------------------------------------------------------------------
# Custom files and errors
# --------------------------------------------------------------------------------------------


def test_explicit_field_mapping(tmp_path: Path) -> None:
    rows = [
        {"qid": "q1", "text": "What is 2+3?", "target": 5, "difficulty": 1},
        {"qid": "q2", "text": "What is 10/4?", "target": 2.5, "difficulty": 2},
    ]
    path = _write_jsonl(tmp_path / "custom.jsonl", rows)
    problems = load_problems(str(path), problem_field="text", answer_field="target", id_field="qid")
    assert [p.id for p in problems] == ["q1", "q2"]
    assert [p.gold for p in problems] == ["5", "2.5"]
    assert problems[0].problem == "What is 2+3?"
    assert problems[0].prompt.startswith("What is 2+3?\n") and "\\boxed{}" in problems[0].prompt
    assert problems[0].kind == "math"
    assert problems[1].meta == {"difficulty": 2}
    with pytest.raises(UserError, match="'nope'"):
        load_problems(str(path), problem_field="nope", answer_field="target")


def test_sniffed_fields_and_generated_ids(tmp_path: Path) -> None:
    rows = [{"question": "Pick one.\n\nA. x\nB. y\nC. z\nD. w", "label": "B"}] * 1 + [
        {"question": "Pick again.\n\nA. 1\nB. 2\nC. 3\nD. 4", "label": "(d)"}
    ]
    path = _write_jsonl(tmp_path / "mcq.jsonl", rows)
    problems = load_problems(str(path), choice_seed=None)
    assert [p.id for p in problems] == ["mcq-0", "mcq-1"]
    assert [p.kind for p in problems] == ["choice", "choice"]
    assert [p.gold for p in problems] == ["B", "D"]


def test_solution_column_as_answer(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "sol.jsonl", [{"problem": "1+1?", "solution": r"We add: $\boxed{2}$."}])
    assert load_problems(str(path))[0].gold == "2"


def test_json_and_parquet(tmp_path: Path) -> None:
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    json_path = tmp_path / "set.json"
    json_path.write_text(json.dumps(rows), encoding="utf-8")
    assert [p.gold for p in load_problems(str(json_path))] == ["2", "4"]
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    pq_path = tmp_path / "set.parquet"
    pd.DataFrame(rows).to_parquet(pq_path)
    assert [p.gold for p in load_problems(str(pq_path))] == ["2", "4"]


def test_missing_answer_raises(tmp_path: Path) -> None:
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": ""}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=r"row 2 .*'answer'"):
        load_problems(str(path))
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}]
    path = _write_jsonl(tmp_path / "bad2.jsonl", rows)
    with pytest.raises(UserError, match=r"row 2 .*'answer'"):
        load_problems(str(path))


def test_missing_problem_raises(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "  ", "answer": "2"}])
    with pytest.raises(UserError, match=r"row 1 .*'problem'"):
        load_problems(str(path))


def test_no_answer_column_raises(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "noans.jsonl", [{"problem": "1+1?", "comment": "easy"}])
    with pytest.raises(UserError, match="answer column"):
        load_problems(str(path))


def test_duplicate_ids_raise(tmp_path: Path) -> None:
    rows = [{"id": 1, "problem": "a?", "answer": "1"}, {"id": 1, "problem": "b?", "answer": "2"}]
    path = _write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(UserError, match="same id"):
        load_problems(str(path))


def test_unknown_name_raises() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'not_a_dataset'.*gsm8k"):
        load_problems("not_a_dataset")


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_problems(str(tmp_path / "missing.jsonl"))


def test_empty_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_problems(str(path))
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_problems(str(path))
    json_path = tmp_path / "empty.json"
    json_path.write_text("[]", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        load_problems(str(json_path))


def test_malformed_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "1+1?", "answer": \n', encoding="utf-8")
    with pytest.raises(UserError, match="could not read.*JSON"):
        load_problems(str(path))


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n1+1?,2\n", encoding="utf-8")
    with pytest.raises(UserError, match="unsupported"):
        load_problems(str(path))


def test_problem_is_frozen() -> None:
    p = Problem(id="a", problem="1+1?", gold="2", kind="math", prompt="1+1?", meta={"x": 1})
    with pytest.raises(AttributeError):
        p.gold = "3"  # type: ignore[misc]
    assert hash(p) == hash(Problem(id="a", problem="1+1?", gold="2", kind="math", prompt="1+1?"))
    assert p.to_dict()["meta"] == {"x": 1}


# --------------------------------------------------------------------------------------------
# Synthetic
# --------------------------------------------------------------------------------------------


def test_synthetic() -> None:
    pytest.importorskip("reasonexit.data.synthetic")
    problems = load_problems("synthetic", limit=12, synthetic_seed=3)
    assert len(problems) == 12
    assert len({p.id for p in problems}) == 12
    assert all(p.kind == "math" and p.gold.lstrip("-").isdigit() for p in problems)
    assert all(p.problem in p.prompt and "\\boxed{}" in p.prompt for p in problems)
    assert all("difficulty" in p.meta for p in problems)
    again = load_problems("synthetic", limit=12, synthetic_seed=3)
    assert [p.problem for p in again] == [p.problem for p in problems]
    assert len(load_problems("synthetic")) == 300
    with pytest.raises(UserError):
        load_problems("synthetic", limit=3, split="no-such-split")
