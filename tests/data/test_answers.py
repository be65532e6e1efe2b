"""Tests for answer extraction and grading (reasonexit.data.answers)."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import BENCHMARKS

from reasonexit.data.answers import extract_answer, extract_gold, grade, normalize_answer

BENCH = BENCHMARKS
needs_bench = pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"benchmark files not found at {BENCH} (shared/ must sit beside the repo)"
)


def _rows(name: str) -> list[dict]:
    with open(BENCH / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# extract_answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{\sqrt{2}}}$", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{\left\{ x \mid x^{2} > 1 \right\}}", r"\left\{ x \mid x^{2} > 1 \right\}"),
        (r"first \boxed{3}, corrected: \boxed{4}", "4"),
        (r"\boxed{\text{(A)} \frac{a}{b}}", r"\text{(A)} \frac{a}{b}"),
        (r"The answer is $\boxed 5$.", "5"),
        (r"$\fbox{12}$", "12"),
        (r"so $\framebox{204}$ minutes", "204"),
        ("The answer is 12.", "12"),
        ("The answer is 3.5.", "3.5"),
        (r"Thus the final answer is $\frac{1}{2}$.", r"\frac{1}{2}"),
        ("**Final Answer:** 42", "42"),
        ("#### 1,234", "1234"),
    ],
)
def test_extract_math(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_last_complete_box_wins_and_truncated_box_ignored() -> None:
    # An output cut off inside the last box falls back to the previous complete one.
    assert extract_answer(r"\boxed{3} then \boxed{4") == "3"
    assert extract_answer(r"\boxed{12") is None


def test_escaped_braces_inside_box() -> None:
    assert extract_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_extract_none() -> None:
    assert extract_answer("") is None
    assert extract_answer(None) is None
    assert extract_answer("I am still thinking about it") is None
    # "math" has no last-number fallback: a number from the middle of a derivation is not an answer.
    assert extract_answer("we have 3 apples and 4 pears") is None
    assert extract_answer("Let me check my answer again") is None


def test_gsm8k_last_number_fallback() -> None:
    assert extract_answer("so she pays 4,500 dollars in total", "gsm8k") == "4500"
    assert extract_answer("So the answer is 18 eggs.", "gsm8k") == "18"
    assert extract_answer("no digits here", "gsm8k") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{C}", "C"),
        (r"\boxed{\text{(C)}}", "C"),
        (r"\boxed{c}", "C"),
        (r"\boxed{B. 11}", "B"),
        ("so the answer is (D).", "D"),
        ("Answer: B", "B"),
        (r"first \boxed{A}, no wait \boxed{D}", "D"),
        ("The answer is a bit unclear", None),
        ("Option A seems wrong, and option B too", None),
        (r"\boxed{A} hmm, no: \boxed{10^{-4} eV}", None),
        ("the correct answer is option C.", "C"),
        (r"\boxed{11}", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_answer(text, "choice") == expected


def test_unknown_kind() -> None:
    with pytest.raises(ValueError):
        extract_answer("x", "essay")


# --------------------------------------------------------------------------------------------
# extract_gold
# --------------------------------------------------------------------------------------------


def test_extract_gold() -> None:
    assert extract_gold(27.0, "math") == "27"
    assert extract_gold(-1.0, "math") == "-1"
    assert extract_gold(0.25, "math") == "0.25"
    assert extract_gold(12, "math") == "12"
    assert extract_gold("27.0", "math") == "27"
    assert extract_gold("Some reasoning <<2*3=6>>6\n#### 1,234", "gsm8k") == "1234"
    assert extract_gold(r"\left( 3, \frac{\pi}{2} \right)", "math") == r"\left( 3, \frac{\pi}{2} \right)"
    assert extract_gold("3, 5, 7", "math") == "3, 5, 7"  # a list, not a thousands separator
    assert extract_gold("$5$", "math") == "5"
    assert extract_gold("(c)", "choice") == "C"
    with pytest.raises(ValueError):
        extract_gold(None, "math")
    with pytest.raises(ValueError):
        extract_gold("  ", "math")


# --------------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------------

EQUIVALENT = [
    ("27", "27.0"),
    ("27.0", "27"),
    ("1234", "1,234"),
    ("0.5", r"\frac{1}{2}"),
    (r"\frac{1}{2}", "0.5"),
    (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\dfrac{14}{3}", r"\frac{14}{3}"),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
    ("90", r"90^\circ"),
    ("5", "x=5"),
    ("Evelyn", r"\text{Evelyn}"),
    ("10080", r"10,\!080"),
    ("x^2+2x+1", "(x+1)^2"),
    (r"\{2,1\}", r"\{1, 2\}"),
]

DIFFERENT = [
    ("2", "3"),
    ("4.67", r"\frac{14}{3}"),
    ("(1,2)", "(2,1)"),
    (r"\frac{1}{3}", "0.5"),
    ("27", "270"),
    ("Evelyn", "Bob"),
    ("-5", "5"),
]


@pytest.mark.parametrize(("pred", "gold"), EQUIVALENT)
def test_grade_equivalent(pred: str, gold: str) -> None:
    assert grade(pred, gold) is True


@pytest.mark.parametrize(("pred", "gold"), DIFFERENT)
def test_grade_different(pred: str, gold: str) -> None:
    assert grade(pred, gold) is False


def test_grade_end_to_end_from_text() -> None:
    assert grade(extract_answer("The answer is 12."), "12")
    assert grade(extract_answer(r"... so it is \boxed{\frac{1}{2}}"), "0.5")
    assert not grade(extract_answer(r"... so it is \boxed{\frac{1}{3}}"), "0.5")


def test_grade_none_and_empty() -> None:
    assert grade(None, "5") is False
    assert grade("", "5") is False
    assert grade("5", "") is False
    assert grade(None, "C", "choice") is False


def test_grade_choice() -> None:
    assert grade("c", "C", "choice")
    assert grade("C", "(c)", "choice")
    assert grade(r"\text{(C)}", "C", "choice")
    assert not grade("B", "C", "choice")
    assert not grade("11", "C", "choice")


def test_grade_never_raises_on_garbage() -> None:
    for pred in [r"\frac{", "}}}{{{", r"\boxed{\left(", "1/0", r"\sqrt{-", "x" * 5000, "\x00"]:
        assert grade(pred, r"\frac{1}{2}") in (True, False)
        assert grade(pred, "C", "choice") in (True, False)


def test_grade_from_worker_thread() -> None:
    """math_verify's signal-based timeouts only work in the main thread; grading must not care."""
    results: list[list[bool]] = []
    errors: list[BaseException] = []
    cases = EQUIVALENT + DIFFERENT

    def work() -> None:
        try:
            results.append([grade(p, g) for p, g in cases])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert not errors
    assert results == [[True] * len(EQUIVALENT) + [False] * len(DIFFERENT)]


def test_normalize_answer() -> None:
    assert normalize_answer(r"\left( 3, \frac{\pi}{2} \right)") == normalize_answer(r"(3,\frac{\pi}{2})")
    assert normalize_answer(r"\$32,\!348") == "32348"
    assert normalize_answer(r"\frac12") == r"\frac{1}{2}"


# --------------------------------------------------------------------------------------------
# Real benchmark files: reference solutions must grade correct against their own gold
# --------------------------------------------------------------------------------------------


@needs_bench
def test_gsm8k_reference_solutions_grade_correct() -> None:
    rows = _rows("gsm8k_test.jsonl")
    assert len(rows) == 1319
    correct = 0
    for row in rows:
        gold = extract_gold(row["answer"], "gsm8k")
        assert "####" not in gold and "," not in gold
        if grade(extract_answer(row["answer"], "gsm8k"), gold, "gsm8k"):
            correct += 1
    assert correct / len(rows) >= 0.99, f"only {correct}/{len(rows)} GSM8K references graded correct"


@needs_bench
def test_math500_reference_solutions_grade_correct() -> None:
    rows = _rows("math500.jsonl")
    assert len(rows) == 500
    correct = 0
    for row in rows:
        if grade(extract_answer(row["solution"]), extract_gold(row["answer"], "math")):
            correct += 1
    assert correct / len(rows) >= 0.99, f"only {correct}/{len(rows)} MATH-500 solutions graded correct"


@needs_bench
def test_math500_grading_is_not_trivially_true() -> None:
    """Each solution's answer against the *next* row's gold must almost always be wrong."""
    rows = _rows("math500.jsonl")
    matches = sum(
        grade(extract_answer(row["solution"]), rows[(i + 1) % len(rows)]["answer"])
        for i, row in enumerate(rows)
    )
    assert matches <= 10, f"{matches} mismatched pairs graded correct"


@needs_bench
def test_math500_golds_are_equivalent_under_math_verify() -> None:
    """The symbolic path alone (no string shortcut) agrees on a sample of LaTeX golds."""
    from reasonexit.data.answers import _math_verify_equal

    rows = [r for r in _rows("math500.jsonl") if "\\frac" in r["answer"] or "\\sqrt" in r["answer"]][:40]
    assert rows
    agree = sum(_math_verify_equal(extract_answer(r["solution"]), r["answer"]) for r in rows)
    assert agree / len(rows) >= 0.95
