"""Extracting and grading final answers.

Three answer kinds are supported:

``"math"``
    Free-form answers (numbers, LaTeX expressions, tuples, intervals, text). Graded with
    :mod:`math_verify` for symbolic/numeric equivalence, with a normalised-string fallback.
``"gsm8k"``
    Like ``"math"``, but extraction also understands GSM8K's ``#### N`` convention and, as a last
    resort, takes the last number in the text.
``"choice"``
    Multiple choice (GPQA): the answer is a letter ``A``-``D``, compared case-insensitively.

The public functions are :func:`extract_answer` (model output -> answer string),
:func:`extract_gold` (dataset gold field -> normalised gold string) and :func:`grade`
(prediction vs gold -> bool). None of them raises on malformed model output.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from typing import Any

__all__ = [
    "ANSWER_KINDS",
    "extract_answer",
    "extract_gold",
    "grade",
    "grade_without_math_verify",
    "normalize_answer",
]

ANSWER_KINDS: tuple[str, ...] = ("math", "gsm8k", "choice")

# Answers longer than this are not handed to math_verify: sympy can take a very long time on huge
# expressions, and from non-main threads math_verify runs without its signal-based timeout.
_MAX_VERIFY_CHARS = 600
# math_verify's per-call timeout (seconds) when grading from the main thread.
_VERIFY_TIMEOUT_S = 5

_BOX_COMMANDS = ("boxed", "fbox", "framebox")
_BOX_RE = re.compile(r"\\(?:" + "|".join(_BOX_COMMANDS) + r")(?![A-Za-z])")
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# "The answer is 12.", "the final answer is $\frac12$", "Final Answer: 7", "**Final Answer**: 7"
_PHRASE_RE = re.compile(
    r"(?:(?:the\s+)?(?:final\s+)?answer\s*(?:\*\*)?\s*(?:is\b|:|=)|final\s+answer\s*(?:\*\*)?[ \t]*\n)"
    r"\s*(?:\*\*)?\s*:?[ \t]*(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
_LETTER_RE = re.compile(r"^\(?\s*([A-Da-d])\s*\)?(?:$|[.:)\s])")
_CHOICE_PHRASE_RE = re.compile(
    r"(?i:answer|choice)\s*(?:\*\*)?\s*(?i:is\b|:)\s*(?:\*\*)?\s*(?i:option\s*)?"
    r"(?:\$?\\boxed\{)?(?:\\text\{)?(?:\(([A-Da-d])\)|([A-D]))(?![A-Za-z0-9])"
)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _match_brace(text: str, open_idx: int) -> int | None:
    """Return the index of the ``}`` matching the ``{`` at ``open_idx``, or None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) do not count towards the nesting depth.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _boxed_contents(text: str) -> list[str]:
    """All complete ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}`` / ``\\framebox{...}`` contents."""
    found: list[str] = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        # \framebox[width][pos]{...}: skip optional bracket arguments.
        while i < len(text) and text[i] == "[":
            close = text.find("]", i)
            if close < 0:
                break
            i = close + 1
        j = i
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_brace(text, j)
            if close is None:  # truncated output: "\boxed{12" -- not a finished answer
                continue
            found.append(text[j + 1 : close].strip())
        elif j > i:
            # "\boxed 5": a brace-less argument runs to the next whitespace or math delimiter.
            m2 = re.match(r"[^\s$]+", text[j:])
            if m2:
                found.append(m2.group(0).rstrip(".,;"))
    return [c for c in found if c]


def _clean_inline(ans: str) -> str:
    """Tidy an answer taken from running text: strip markdown, dollars and sentence punctuation."""
    ans = ans.strip()
    boxed = _boxed_contents(ans)
    if boxed:
        return boxed[-1]
    ans = ans.replace("**", "").strip()
    # "$\frac{1}{2}$." / "\(\frac12\)" / "\[x\]"
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if ans.startswith(left):
            end = ans.find(right, len(left))
            if end > 0:
                ans = ans[len(left) : end]
                break
    ans = ans.strip()
    # Cut at the end of the sentence: a period followed by whitespace, or a trailing period.
    m = re.search(r"\.(\s|$)", ans)
    if m:
        ans = ans[: m.start()]
    return ans.strip().rstrip(",;:!").strip().strip("$").strip()


def _choice_letter(ans: str | None) -> str | None:
    """Return ``A``-``D`` if ``ans`` denotes a choice letter (``C``, ``(c)``, ``\\text{(C)}``, ``C. 11``)."""
    if ans is None:
        return None
    s = str(ans).strip()
    s = s.replace("$", "")
    # Unwrap \text{...}, \textbf{...}, \mathrm{...}, \boxed{...} one level at a time.
    for _ in range(3):
        m = re.fullmatch(r"\\(?:text|textbf|mathrm|mathbf|boxed)\s*\{(.*)\}\s*", s, re.DOTALL)
        if not m:
            break
        s = m.group(1).strip()
    s = s.replace("\\text{", "").replace("\\textbf{", "").replace("}", "").strip()
    s = re.sub(r"^(?:option|choice)\s*", "", s, flags=re.IGNORECASE)
    m = _LETTER_RE.match(s)
    if m:
        return m.group(1).upper()
    return None


def extract_answer(text: str | None, kind: str = "math") -> str | None:
    """Extract the final answer from a model output (or a reference solution).

    Priority, highest first:

    1. the content of the **last** complete ``\\boxed{...}`` (nested braces handled; also
       ``\\boxed 5`` without braces, ``\\fbox{...}`` and ``\\framebox{...}``). An unterminated box
       (a truncated output) is ignored;
    2. GSM8K's ``#### N`` (last occurrence);
    3. a phrase such as ``The answer is N`` / ``final answer is ...`` / ``Final Answer: ...`` (last
       occurrence);
    4. only for ``kind="gsm8k"``: the last number in the text (GSM8K answers are always numbers, so
       this last resort is right far more often than wrong). ``"math"`` has no such fallback,
       because a stray number from the middle of a derivation is not an answer.

    For ``kind="choice"`` the result is a single upper-case letter ``A``-``D`` taken from the last
    box (``\\boxed{C}``, ``\\boxed{\\text{(C)}}``, ``\\boxed{C. 11}``), or, without any box, from a
    phrase such as ``answer is (C)`` / ``Answer: C``; None if the last box holds no letter.

    Numeric answers from ``####`` and the gsm8k fallback have thousands separators removed.
    Returns None when nothing is found (including for empty or None input).
    """
    if not text:
        return None
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(ANSWER_KINDS)}")

    boxed = _boxed_contents(text)

    if kind == "choice":
        if boxed:
            # Only the last box counts: an earlier boxed letter was superseded by it.
            return _choice_letter(boxed[-1])
        matches = list(_CHOICE_PHRASE_RE.finditer(text))
        if matches:
            m = matches[-1]
            return (m.group(1) or m.group(2)).upper()
        return None

    if boxed:
        return boxed[-1]

    hashes = list(_HASH_RE.finditer(text))
    for m in reversed(hashes):
        ans = _clean_inline(m.group(1))
        if ans:
            return _strip_thousands(ans)

    phrases = list(_PHRASE_RE.finditer(text))
    for m in reversed(phrases):
        ans = _clean_inline(m.group("ans"))
        if ans and kind == "gsm8k":
            # "The answer is 18 eggs." -> "18"
            ans = _strip_thousands(ans)
            if _as_float(ans) is None:
                numbers = _NUMBER_RE.findall(ans)
                if numbers:
                    ans = _strip_thousands(numbers[0])
        if ans:
            return ans

    if kind == "gsm8k":
        numbers = _NUMBER_RE.findall(text)
        if numbers:
            return _strip_thousands(numbers[-1].rstrip("."))
    return None


# --------------------------------------------------------------------------------------------
# Gold answers
# --------------------------------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _strip_thousands(s: str) -> str:
    """``1,234`` -> ``1234`` (only for a plain number with well-formed 3-digit groups)."""
    t = s.strip()
    if _THOUSANDS_RE.match(t):
        return t.replace(",", "")
    return s


def _number_text(x: float) -> str:
    """Format a number without a spurious ``.0``: ``27.0`` -> ``27``, ``0.5`` -> ``0.5``."""
    if math.isfinite(x) and float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def extract_gold(raw: Any, kind: str = "math") -> str:
    """Normalise a dataset's gold answer to a string.

    - ints -> ``"12"``; integral floats (``27.0``, as in AMC 2023) -> ``"27"``; other floats keep
      their decimal form;
    - for ``kind="gsm8k"`` a full reference solution ending in ``#### 1,234`` -> ``"1234"``;
    - numeric strings lose thousands separators and a trailing ``.0`` (``"1,234.0"`` -> ``"1234"``);
    - ``kind="choice"``: ``"(c)"``/``"C"`` -> ``"C"``;
    - anything else (LaTeX such as ``\\frac{14}{3}``) is kept, stripped of surrounding whitespace
      and of enclosing ``$...$``.

    Raises ValueError for None/empty input (callers turn that into a user-facing error).
    """
    if raw is None or isinstance(raw, bool):
        raise ValueError(f"gold answer is missing or not usable: {raw!r}")
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        if math.isnan(raw):
            raise ValueError("gold answer is NaN")
        return _number_text(raw)
    s = str(raw).strip()
    if kind == "gsm8k" and "####" in s:
        s = s.rsplit("####", 1)[1].strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and s.count("$") == 2:
        s = s[1:-1].strip()
    if not s:
        raise ValueError(f"gold answer is empty: {raw!r}")
    if kind == "choice":
        letter = _choice_letter(s)
        return letter if letter else s
    s = _strip_thousands(s)
    if re.fullmatch(r"[-+]?\d+\.0+", s):
        s = s.split(".")[0].lstrip("+")
    return s


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    "degrees",
    "degree",
    "units",
    "unit",
    "cm",
    "meters",
    "inches",
    "feet",
    "dollars",
    "cents",
)


def normalize_answer(ans: str) -> str:
    """Normalise an answer string for exact comparison (the fallback when math_verify can't decide).

    Removes whitespace, ``$``, ``\\left``/``\\right``, spacing commands (``\\!``, ``\\,`` ...),
    ``\\text{}``-style wrappers, degree marks, percent signs, a leading ``x =``, trailing periods,
    thousands separators and a trailing ``.0``; ``\\dfrac``/``\\tfrac`` become ``\\frac``; letters
    are lower-cased.
    """
    s = str(ans).strip()
    boxed = _boxed_contents(s)
    if boxed:
        s = boxed[-1]
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "")
    for cmd in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad"):
        s = s.replace(cmd, "")
    for _ in range(3):
        s2 = _TEXT_CMD_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    # "x=5" -> "5" (a single-variable assignment as the whole answer)
    m = re.fullmatch(r"[a-zA-Z]=(.+)", s)
    if m and "=" not in m.group(1):
        s = m.group(1)
    low = s.lower()
    for unit in _UNIT_WORDS:
        if low.endswith(unit) and len(low) > len(unit) and (low[-len(unit) - 1].isdigit()):
            s = s[: -len(unit)]
            break
    s = _strip_thousands(s)
    if re.fullmatch(r"[-+]?\d+\.0+", s):
        s = s.split(".")[0]
    s = s.lstrip("+") if re.fullmatch(r"\+\d+(\.\d+)?", s) else s
    # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    return s.lower()


def _as_float(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


class _DropTimeoutDisabledWarning(logging.Filter):
    """math_verify warns once when called with timeouts disabled; we do that on purpose in threads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def _math_verify_equal(pred: str, gold: str) -> bool:
    """Equivalence by math_verify; False on any failure. Thread-safe.

    math_verify enforces its timeouts with ``signal.alarm``, which only works in the main thread, so
    from other threads the timeouts are disabled (and long inputs are skipped instead).
    """
    if len(pred) > _MAX_VERIFY_CHARS or len(gold) > _MAX_VERIFY_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a declared dependency
        return False
    in_main = threading.current_thread() is threading.main_thread()
    timeout = _VERIFY_TIMEOUT_S if in_main else None
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
        pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # math_verify's TimeoutException derives from BaseException
        return False


def grade_without_math_verify(pred: str | None, gold: str | None, kind: str = "math") -> bool | None:
    """The cheap part of :func:`grade`: True/False when strings or numbers decide, None when only
    :mod:`math_verify` can (the caller then runs it, e.g. in a grading worker process)."""
    if pred is None or gold is None:
        return False
    pred = str(pred).strip()
    gold = str(gold).strip()
    if not pred or not gold:
        return False
    try:
        if kind == "choice":
            p, g = _choice_letter(pred), _choice_letter(gold)
            if p is None or g is None:
                return normalize_answer(pred) == normalize_answer(gold)
            return p == g
        np_, ng = normalize_answer(pred), normalize_answer(gold)
        if np_ and np_ == ng:
            return True
        fp, fg = _as_float(np_), _as_float(ng)
        if fp is not None and fg is not None:
            return math.isclose(fp, fg, rel_tol=1e-6, abs_tol=1e-9)
    except Exception:
        return False
    if len(pred) > _MAX_VERIFY_CHARS or len(gold) > _MAX_VERIFY_CHARS:
        return False
    return None


def grade(pred: str | None, gold: str, kind: str = "math") -> bool:
    """Return True if the extracted answer ``pred`` is equivalent to ``gold``.

    ``pred`` is an already extracted answer (see :func:`extract_answer`), ``gold`` a normalised gold
    answer (see :func:`extract_gold`). ``None`` or empty ``pred`` grades False.

    - ``kind="choice"``: both sides are reduced to a letter ``A``-``D`` and compared
      case-insensitively.
    - otherwise: normalised-string equality (:func:`normalize_answer`), then numeric equality
      (relative tolerance 1e-6), then :mod:`math_verify` symbolic/numeric equivalence
      (``\\frac{1}{2}`` == ``0.5``, ``\\left( 3, \\frac{\\pi}{2} \\right)`` == ``(3,\\frac{\\pi}{2})``).

    Never raises on strange input: a math_verify failure or timeout counts as "not equivalent by
    math_verify". Safe to call from any thread, but math_verify's timeout only works on the main
    thread: code running beside the engine grades with :func:`reasonexit.data.grading.agrade`, which
    runs this function in a worker process with a real per-call timeout.
    """
    fast = grade_without_math_verify(pred, gold, kind)
    if fast is not None:
        return fast
    try:
        return _math_verify_equal(str(pred).strip(), str(gold).strip())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return False
