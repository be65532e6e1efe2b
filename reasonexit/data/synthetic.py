"""Seeded synthetic arithmetic word problems and reasoning-style training traces.

This module feeds the bundled testbed model (``reasonexit/assets/tiny_reasoner``): a tiny Qwen3
network trained from scratch on traces built here, so that it *learns* to behave like a reasoning
model in the ways early exit cares about.

Problems
    Multi-step word problems ("Mia has 14 marbles. She buys 3 bags with 5 marbles in each bag. ...")
    with an exact non-negative integer answer. ``difficulty`` (1..4) sets the number of steps, the
    size of the numbers and which operations can appear.

Splits
    Every problem is drawn from an RNG seeded by ``(split, seed, index, attempt)``, and on top of
    that each split only accepts problems whose *text* hashes into its own buckets (train 0-7,
    validation 8, test 9 out of 10). The same text therefore can never occur in two splits,
    whatever the seeds and sizes used.

Traces
    ``make_trace`` writes a ``<think>``-style derivation: step lines separated by blank lines, then
    "So the answer is N.", then 0-5 redundant re-check passages opening with "Wait", "Hmm" or
    "Alternatively" (each at the start of a paragraph; whole chain, last step, question or total
    change, first step, whole chain again, in that order). In about 12% of traces an intermediate step
    is computed wrongly and the first "Wait" passage finds and fixes it, so stopping at the first
    transition is not always safe. :func:`first_answer_position` locates the point where the final
    answer is first reached, which splits a trace into useful and redundant thinking.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

SPLITS: tuple[str, ...] = ("train", "validation", "test")
DIFFICULTIES: tuple[int, ...] = (1, 2, 3, 4)

# Hash buckets (out of 10) owned by each split: a problem text belongs to exactly one split.
_SPLIT_BUCKETS: dict[str, frozenset[int]] = {
    "train": frozenset(range(8)),
    "validation": frozenset({8}),
    "test": frozenset({9}),
}

# Weights of the difficulties in a mixed (difficulty=None) set.
DIFFICULTY_MIX: dict[int, float] = {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}


# difficulty -> (number of operations, max start value, max operand, cap on any value, operations)
_LEVELS: dict[int, tuple[tuple[int, int], int, int, int, tuple[str, ...]]] = {
    1: ((1, 2), 20, 9, 30, ("add", "sub")),
    2: ((2, 3), 25, 12, 50, ("add", "sub", "groups")),
    3: ((3, 4), 30, 15, 80, ("add", "sub", "groups", "times", "share")),
    4: ((4, 5), 40, 20, 120, ("add", "sub", "groups", "times", "share")),
}

_NAMES_SHE = (
    "Mia", "Emma", "Lily", "Sara", "Nora", "Ava", "Zoe", "Anna", "Ruth", "Kate", "Lucy", "Ella",
    "Grace", "Chloe", "Maya", "Hannah", "Julia", "Rosa", "Ivy", "Alice", "Clara", "Fatima", "Priya", "Yuki",
)
_NAMES_HE = (
    "Tom", "Sam", "Leo", "Max", "Ben", "Jack", "Omar", "Liam", "Noah", "Dan", "Eli", "Owen",
    "Lucas", "Henry", "Oscar", "Ravi", "Diego", "Felix", "Hugo", "Ivan", "Kenji", "Marco", "Peter", "Victor",
)
_ITEMS = (
    ("apple", "apples"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("coin", "coins"),
    ("card", "cards"),
    ("pencil", "pencils"),
    ("cookie", "cookies"),
    ("shell", "shells"),
    ("stamp", "stamps"),
    ("egg", "eggs"),
    ("toy car", "toy cars"),
    ("orange", "oranges"),
    ("balloon", "balloons"),
    ("candy", "candies"),
    ("flower", "flowers"),
    ("crayon", "crayons"),
    ("button", "buttons"),
    ("ribbon", "ribbons"),
    ("peach", "peaches"),
    ("lemon", "lemons"),
    ("muffin", "muffins"),
    ("puzzle", "puzzles"),
    ("feather", "feathers"),
)
_CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets", "crates", "tins", "bundles")
_FRIENDS = ("a friend", "a neighbor", "the teacher", "a classmate")
_FAMILY = {"she": ("her sister", "her brother"), "he": ("his sister", "his brother")}
_OP_SYMBOL = {"add": "+", "sub": "-", "groups": "+", "times": "*", "share": "/"}


# --------------------------------------------------------------------------------------------
# Problem generation
# --------------------------------------------------------------------------------------------


def _rng_for(split: str, seed: int, index: int, attempt: int, family: str = "synth") -> random.Random:
    """Return the RNG of one problem draw; string seeding is stable across runs and platforms."""
    return random.Random(f"reasonexit-{family}|{split}|{seed}|{index}|{attempt}")


def _bucket(text: str) -> int:
    """Hash bucket (0..9) of a problem text; decides which split may own it."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 10


def _pick_op(
    rng: random.Random, value: int, ops: tuple[str, ...], max_operand: int, cap: int
) -> dict[str, Any]:
    """Choose one operation applicable to ``value`` (result at most ``cap``); return its step."""
    while True:
        op = rng.choice(ops)
        if op == "add":
            a = rng.randint(2, max_operand)
            step = {"op": "add", "a": a, "before": value, "after": value + a}
        elif op == "sub":
            if value < 3:
                continue
            a = rng.randint(1, min(max_operand, value - 1))
            step = {"op": "sub", "a": a, "before": value, "after": value - a}
        elif op == "groups":
            k = rng.randint(2, 5 if max_operand <= 15 else 8)
            m = rng.randint(2, 6 if max_operand <= 15 else 9)
            step = {"op": "groups", "k": k, "m": m, "a": k * m, "before": value, "after": value + k * m}
        elif op == "times":
            k = rng.choice((2, 2, 3))
            step = {"op": "times", "k": k, "before": value, "after": value * k}
        elif op == "share":
            divisors = [d for d in (2, 3, 4, 5) if value % d == 0 and value // d >= 2]
            if not divisors:
                continue
            k = rng.choice(divisors)
            step = {"op": "share", "k": k, "before": value, "after": value // k}
        else:  # pragma: no cover
            raise AssertionError(op)
        if step["after"] <= cap:
            return step


def _problem_sentence(step: dict[str, Any], pron: str, item: str, rng: random.Random) -> str:
    """Word-problem sentence describing one step."""
    op = step["op"]
    p = pron.capitalize()
    if op == "add":
        verb = rng.choice(("buys", "finds", "gets", "is given"))
        return f"{p} {verb} {step['a']} more {item}."
    if op == "sub":
        kind = rng.randrange(3)
        if kind == 0:
            return f"{p} gives {step['a']} {item} to {rng.choice(_FRIENDS + _FAMILY[pron])}."
        if kind == 1:
            return f"{p} loses {step['a']} {item}."
        return f"{p} sells {step['a']} {item}."
    if op == "groups":
        cont = rng.choice(_CONTAINERS)
        return f"{p} buys {step['k']} {cont} with {step['m']} {item} in each."
    if op == "times":
        word = "doubles" if step["k"] == 2 else "triples"
        return f"Then the number of {item} {pron} has {word}."
    if op == "share":
        return f"{p} splits the {item} into {step['k']} equal groups and keeps one group."
    raise AssertionError(op)  # pragma: no cover


Levels = dict[int, tuple[tuple[int, int], int, int, int, tuple[str, ...]]]


def _draw_problem(rng: random.Random, difficulty: int, levels: Levels | None = None) -> dict[str, Any]:
    """Draw one structured problem of the given difficulty (text, steps, answer)."""
    (lo, hi), max_start, max_operand, cap, ops = (levels or _LEVELS)[difficulty]
    n_ops = rng.randint(lo, hi)
    if rng.random() < 0.5:
        name, pron, poss = rng.choice(_NAMES_SHE), "she", "her"
    else:
        name, pron, poss = rng.choice(_NAMES_HE), "he", "his"
    item_sg, item = rng.choice(_ITEMS)
    start = rng.randint(3, max_start)
    steps: list[dict[str, Any]] = []
    value = start
    for _ in range(n_ops):
        step = _pick_op(rng, value, ops, max_operand, cap)
        steps.append(step)
        value = step["after"]
    sentences = [f"{name} has {start} {item}."]
    for step in steps:
        sentences.append(_problem_sentence(step, pron, item, rng))
    question = rng.choice(
        (
            f"How many {item} does {name} have now?",
            f"How many {item} does {name} have at the end?",
            f"How many {item} are left with {name}?",
        )
    )
    text = " ".join(sentences) + " " + question
    return {
        "problem": text,
        "answer": value,
        "difficulty": difficulty,
        "name": name,
        "pronoun": pron,
        "possessive": poss,
        "item": item,
        "item_singular": item_sg,
        "start": start,
        "steps": steps,
    }


def generate_problems(
    n: int,
    split: str = "test",
    seed: int = 0,
    difficulty: int | None = None,
    levels: Levels | None = None,
    family: str = "synth",
) -> list[dict[str, Any]]:
    """Generate ``n`` seeded arithmetic word problems of one split.

    Args:
        n: number of problems.
        split: ``"train"``, ``"validation"`` or ``"test"``. Splits never share a problem text.
        seed: seed of the set; the same ``(n, split, seed, difficulty)`` always gives the same
            problems, and a shorter list is a prefix of a longer one.
        difficulty: 1 (easiest) to 4 (hardest), or ``None`` for a seeded mix of all of them.
        levels: the table of difficulty levels (default: this module's; the hard testbed passes
            its own, :data:`reasonexit.data.synthetic_hard.HARD_LEVELS`).
        family: the problem family, the first part of every id and of every RNG seed string, so
            two families never draw the same problems.

    Returns:
        A list of dicts with keys ``id`` (``"<family>-<split>-<seed>-<index>"``), ``problem`` (text),
        ``answer`` (int), ``difficulty`` (int) plus the structured fields used by
        :func:`make_trace` (``steps``, ``start``, ``name``, ``pronoun``, ``item``, ...).
    """
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if difficulty is not None and difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES} or None, got {difficulty!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    buckets = _SPLIT_BUCKETS[split]
    mix = list(DIFFICULTY_MIX)
    weights = [DIFFICULTY_MIX[d] for d in mix]
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for index in range(n):
        for attempt in range(10_000):
            rng = _rng_for(split, seed, index, attempt, family)
            level = difficulty if difficulty is not None else rng.choices(mix, weights)[0]
            prob = _draw_problem(rng, level, levels)
            text = prob["problem"]
            if _bucket(text) in buckets and text not in seen:
                break
        else:  # pragma: no cover - the problem space is far larger than this
            raise RuntimeError(f"could not draw a fresh {split} problem at index {index}")
        seen.add(text)
        out.append({"id": f"{family}-{split}-{seed}-{index}", **prob})
    return out


def solve(problem: dict[str, Any]) -> int:
    """Recompute the answer of a generated problem from its structured ``start`` and ``steps``."""
    value = int(problem["start"])
    for step in problem["steps"]:
        op = step["op"]
        if op == "add":
            value += step["a"]
        elif op == "sub":
            value -= step["a"]
        elif op == "groups":
            value += step["k"] * step["m"]
        elif op == "times":
            value *= step["k"]
        elif op == "share":
            if value % step["k"]:
                raise ValueError("share step does not divide evenly")
            value //= step["k"]
        else:
            raise ValueError(f"unknown op {op!r}")
    return value


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------


def _apply(op: str, step: dict[str, Any], value: int) -> int:
    """Apply one step's operation to ``value`` (which may differ from the true ``before``)."""
    if op in ("add", "groups"):
        return value + step["a"]
    if op == "sub":
        return value - step["a"]
    if op == "times":
        return value * step["k"]
    if op == "share":
        return value // step["k"]
    raise AssertionError(op)  # pragma: no cover


def _eq(step: dict[str, Any], before: int, after: int) -> str:
    """The equation of a step, e.g. ``"29 - 9 = 20"`` (groups: ``"14 + 15 = 29"``)."""
    op = step["op"]
    operand = step["a"] if op in ("add", "sub", "groups") else step["k"]
    return f"{before} {_OP_SYMBOL[op]} {operand} = {after}"


def _step_line(step: dict[str, Any], before: int, after: int, pron: str, rng: random.Random) -> str:
    """One thinking paragraph deriving a step."""
    op = step["op"]
    p = pron.capitalize()
    if op == "add":
        lead = rng.choice((f"{p} gets {step['a']} more", f"Then {step['a']} more are added"))
        return f"{lead}, so {_eq(step, before, after)}."
    if op == "sub":
        lead = rng.choice((f"{p} gives away {step['a']}", f"Then {step['a']} are taken away"))
        return f"{lead}, so {_eq(step, before, after)}."
    if op == "groups":
        k, m = step["k"], step["m"]
        return f"{p} buys {k} groups of {m}, so {k} * {m} = {k * m} more. Then {_eq(step, before, after)}."
    if op == "times":
        word = "doubles" if step["k"] == 2 else "triples"
        return f"The number {word}, so {_eq(step, before, after)}."
    if op == "share":
        return f"{p} keeps one of {step['k']} equal groups, so {_eq(step, before, after)}."
    raise AssertionError(op)  # pragma: no cover


def _wrong_value(rng: random.Random, right: int) -> int:
    """A plausible arithmetic slip near ``right`` (never equal to it, never negative)."""
    while True:
        delta = rng.choice((-10, -2, -1, 1, 1, 2, 10))
        if right + delta >= 0 and delta != 0:
            return right + delta


def _chain(problem: dict[str, Any]) -> str:
    """All equations of the correct derivation, comma-separated."""
    parts = []
    for step in problem["steps"]:
        if step["op"] == "groups":
            parts.append(f"{step['k']} * {step['m']} = {step['a']}")
        parts.append(_eq(step, step["before"], step["after"]))
    return ", ".join(parts)


def _recheck_full(problem: dict[str, Any], rng: random.Random, opener: str) -> str:
    """Re-derive the whole chain."""
    ans = problem["answer"]
    closer = rng.choice((f"Yes, the answer is {ans}.", f"So it is {ans} again.", f"Yes, {ans}."))
    return f"{opener} {problem['name']} starts with {problem['start']}. {_chain(problem)}. {closer}"


def _recheck_last(problem: dict[str, Any], rng: random.Random) -> str:
    """Re-check only the last step."""
    last = problem["steps"][-1]
    opener = rng.choice(("Hmm, let me double-check the last step.", "Wait, let me double-check the last step."))
    return f"{opener} {_eq(last, last['before'], last['after'])}. Yes, that is right, {problem['answer']}."


def _recheck_other(problem: dict[str, Any], rng: random.Random) -> str:
    """Re-read the question, or (additive problems) re-derive through the total change."""
    ans, steps = problem["answer"], problem["steps"]
    additive = all(s["op"] in ("add", "sub", "groups") for s in steps) and len(steps) >= 2
    if not additive or rng.random() < 0.4:
        opener = rng.choice(("Wait, did I answer the right question?", "Hmm, what does the question ask?"))
        return f"{opener} It asks how many {problem['item']} {problem['name']} has at the end. That is {ans}."
    signed = [(-s["a"] if s["op"] == "sub" else s["a"]) for s in steps]
    shown = ", ".join(f"+{c}" if c >= 0 else f"-{-c}" for c in signed)
    total = 0
    sums = []
    for c in signed:
        new = total + c
        if total != 0:
            sums.append(f"{total} {'+' if c >= 0 else '-'} {abs(c)} = {new}")
        total = new
    start = problem["start"]
    final = f"{start} + {total} = {ans}" if total >= 0 else f"{start} - {-total} = {ans}"
    sum_text = (", ".join(sums) + ". ") if sums else ""
    return (
        f"Alternatively, I can add up the changes: {shown}. {sum_text}"
        f"The total change is {total}, and {final}. Same answer, {ans}."
    )


def _recheck_first(problem: dict[str, Any], rng: random.Random) -> str:
    """Re-check only the first step, then restate the final answer."""
    first = problem["steps"][0]
    opener = rng.choice(("Wait, let me double-check the first step.", "Hmm, let me double-check the first step."))
    eq = _eq(first, first["before"], first["after"])
    return f"{opener} {eq}. Yes, that is right, so the answer is still {problem['answer']}."


def _recheck(problem: dict[str, Any], rng: random.Random, position: int) -> str:
    """The ``position``-th (0-based) redundant re-check passage; it re-derives the final answer.

    Re-checks come in a fixed order of kinds (whole chain, last step, question or total change,
    first step, whole chain once more), as a real model's successive checks differ: which ones
    were already done is visible in the text, so a learned model knows how far along it is.
    """
    if position == 0:
        opener = rng.choice(("Wait, let me check.", "Wait, let me check again.", "Wait, is that right?"))
        return _recheck_full(problem, rng, opener)
    if position == 1:
        return _recheck_last(problem, rng)
    if position == 2:
        return _recheck_other(problem, rng)
    if position == 3:
        return _recheck_first(problem, rng)
    return _recheck_full(problem, rng, "Wait, let me go through it all once more.")


#: Probability of each number of redundant re-checks after the answer (0-5). The mass is on the
#: late counts, as real reasoning models keep checking an answer they already have: the chance of
#: stopping after the k-th check is low for k < 4, so a greedy learner re-checks about 4 times.
RECHECK_WEIGHTS: tuple[float, ...] = (0.04, 0.08, 0.14, 0.22, 0.28, 0.24)


def _recheck_count(rng: random.Random) -> int:
    """Number of redundant re-checks after the answer, drawn from :data:`RECHECK_WEIGHTS`."""
    return rng.choices(range(len(RECHECK_WEIGHTS)), weights=RECHECK_WEIGHTS)[0]


def make_trace(
    problem: dict[str, Any], rng: random.Random, error_rate: float = 0.12
) -> tuple[str, str]:
    """Build a reasoning trace for a generated problem.

    Args:
        problem: a dict from :func:`generate_problems` (needs the structured fields).
        rng: source of randomness for phrasing, re-check count and injected slips.
        error_rate: probability that one intermediate step is computed wrongly and later fixed
            by the first "Wait" passage.

    Returns:
        ``(thinking, answer_text)``. ``thinking`` is the body of the ``<think>`` block (without
        the markers): paragraphs separated by ``"\\n\\n"``, with the answer first stated as
        "So the answer is N." followed by re-check passages, each opening a paragraph with
        "Wait", "Hmm" or "Alternatively". ``answer_text`` is a short answer ending in
        ``\\boxed{N}.`` with the correct answer.
    """
    steps = problem["steps"]
    ans = problem["answer"]
    name, pron, item = problem["name"], problem["pronoun"], problem["item"]
    paras = [rng.choice((f"{name} starts with {problem['start']} {item}.", f"{name} has {problem['start']} {item}."))]

    slip = None
    if steps and rng.random() < error_rate:
        slip = rng.randrange(len(steps))
    value = problem["start"]
    wrong: tuple[int, int] | None = None  # (value before the slip, wrong result)
    for i, step in enumerate(steps):
        right = _apply(step["op"], step, value)
        after = right
        if i == slip:
            after = _wrong_value(rng, right)
            wrong = (value, after)
        paras.append(_step_line(step, value, after, pron, rng))
        value = after
    paras.append(f"So the answer is {value}.")

    if slip is not None and wrong is not None:
        step = steps[slip]
        bad = _eq(step, wrong[0], wrong[1])
        later = [_eq(s, s["before"], s["after"]) for s in steps[slip + 1 :]]
        redo = (" Then " + ", ".join(later) + ".") if later else ""
        opener = rng.choice(("Wait, let me check.", "Wait, let me check that again.", "Wait, is that right?"))
        paras.append(
            f"{opener} {bad} is wrong. {_eq(step, step['before'], step['after'])}.{redo} "
            f"So the answer is actually {ans}, not {value}."
        )
        first = 1  # the fix took the place of the first whole-chain re-check
    else:
        first = 0
    for position in range(first, max(first, _recheck_count(rng))):
        paras.append(_recheck(problem, rng, position))

    thinking = "\n\n".join(paras)
    noun = problem["item_singular"] if ans == 1 else item
    answer_text = rng.choice(
        (
            f"{name} has {ans} {noun} at the end. The answer is \\boxed{{{ans}}}.",
            f"The answer is \\boxed{{{ans}}}.",
            f"{name} ends up with {ans} {noun}, so the final answer is \\boxed{{{ans}}}.",
        )
    )
    return thinking, answer_text


# --------------------------------------------------------------------------------------------
# Trace analysis (used by the testbed report)
# --------------------------------------------------------------------------------------------

TRANSITION_WORDS: tuple[str, ...] = ("Wait", "Alternatively", "Hmm")
_ANSWER_RE = r"answer is (?:actually )?{n}(?![0-9])"


def first_answer_position(thinking: str, answer: int | str) -> int | None:
    """Char offset in ``thinking`` just after the answer ``answer`` is first reached.

    "Reached" means a sentence "... the answer is N" (or "the answer is actually N") with
    ``N == answer``; the offset points just past the number (and its full stop, if any).
    Everything after it is redundant re-checking. Returns ``None`` if it never appears.
    """
    n = re.escape(str(answer).strip())
    m = re.search(_ANSWER_RE.format(n=n), thinking)
    if m is None:
        return None
    end = m.end()
    if thinking[end : end + 1] == ".":
        end += 1
    return end


def count_rechecks(thinking: str, start: int = 0) -> int:
    """Number of paragraphs after char offset ``start`` that open with a transition word."""
    paras = thinking[start:].split("\n\n")
    return sum(1 for p in paras if p.lstrip().startswith(TRANSITION_WORDS))


def completion_text(thinking: str, answer_text: str) -> str:
    """The assistant completion the model is trained on, after the prompt's ``<think>\\n``."""
    return f"{thinking}\n</think>\n\n{answer_text}"
