"""The hard testbed's problems and traces: early answers that are often wrong and settle late.

This module feeds ``reasonexit/assets/tiny_reasoner_hard``, the testbed on which exit rules are
measured. It reuses the word problems of :mod:`reasonexit.data.synthetic` with larger numbers
(:data:`HARD_LEVELS`: up to five steps and values up to 800, beyond what a network of a few million
parameters computes reliably) and writes traces in which the answer changes as thinking goes on:

1. **Quick estimate.** After restating the start, the trace runs the whole chain at once, without
   intermediate results ("Quick estimate: 148 + 7*12 - 35 x2 gives 394. So the answer is 394.").
   In :data:`QUICK_ERROR` of the traces (more often the more steps a problem has) the estimate is
   off, as real first answers on hard problems often are.
2. **Step by step** ("Wait, that was only an estimate. Let me work it out step by step."), one
   paragraph per step. It ends "So the answer is N." or, when the estimate was off, "So the answer
   is actually N, not M.". In :data:`STEP_ERROR` of the traces one step here slips.
3. **Check of every step** ("Wait, let me check each step again."), which finds and fixes that slip.
4. Zero to three redundant re-checks (last step, the question, first step), mostly opening with
   "Wait", as the overthinking that early exit should cut.

A model trained on these traces is wrong at first on many problems for two reasons: the estimate
in the data is noisy, and the model itself cannot compute a five-step chain in one go. Its
confidence in a trial answer is meant to be informative and imperfect. :func:`make_probe_example`
makes it so: a share of the training examples stop the thinking at a transition and ask for the
answer there (with DEER's inducer, or by closing thinking), and the target is the *true* answer,
so the model learns how likely the answer it has so far is right.

The estimate's and the step's slips are drawn from each trace's RNG and never depend on the split,
so every split of :func:`generate_hard_problems` shares one distribution.
"""

from __future__ import annotations

import random
from typing import Any

from .synthetic import Levels, _apply, _eq, _step_line, generate_problems

#: Family name of the hard problems: ids read ``hard-<split>-<seed>-<index>``.
FAMILY = "hard"

#: difficulty -> (number of operations, max start value, max operand, cap on any value, operations)
HARD_LEVELS: Levels = {
    1: ((2, 2), 50, 30, 150, ("add", "sub", "groups")),
    2: ((3, 3), 100, 50, 300, ("add", "sub", "groups", "times", "share")),
    3: ((4, 4), 150, 70, 500, ("add", "sub", "groups", "times", "share")),
    4: ((5, 5), 200, 90, 800, ("add", "sub", "groups", "times", "share")),
}

#: Probability that the quick estimate is off, by number of steps in the problem.
QUICK_ERROR: dict[int, float] = {2: 0.25, 3: 0.35, 4: 0.45, 5: 0.55}
#: Probability that one step of the step-by-step pass slips (found by the check of every step).
STEP_ERROR: dict[int, float] = {2: 0.08, 3: 0.12, 4: 0.16, 5: 0.2}
#: Probability of 0-3 redundant re-checks after the check of every step.
REDUNDANT_WEIGHTS: tuple[float, ...] = (0.1, 0.3, 0.35, 0.25)

#: The inducer DEER appends to a probed prefix (:data:`reasonexit.methods.deer.DEFAULT_INDUCER`).
PROBE_INDUCER = "\n**Final Answer**\n\\boxed{"

_OPENERS_STEPWISE = (
    "Wait, that was only an estimate. Let me work it out step by step.",
    "Wait, I should not trust a quick estimate. Let me go step by step.",
    "Wait, let me compute it properly, one step at a time.",
)
_OPENERS_CHECK = (
    "Wait, let me check each step again.",
    "Wait, let me verify every step.",
    "Wait, let me go over each step.",
)


def generate_hard_problems(
    n: int, split: str = "test", seed: int = 0, difficulty: int | None = None
) -> list[dict[str, Any]]:
    """Generate ``n`` seeded hard word problems (see :func:`reasonexit.data.synthetic.generate_problems`)."""
    return generate_problems(n, split=split, seed=seed, difficulty=difficulty, levels=HARD_LEVELS, family=FAMILY)


def _slip(rng: random.Random, right: int) -> int:
    """A plausible wrong result near ``right``: off by a little, by ten or twenty, never negative."""
    while True:
        delta = rng.choice((-20, -10, -10, -2, -1, 1, 1, 2, 10, 10, 20))
        if right + delta >= 0:
            return right + delta


def _quick_chain(problem: dict[str, Any]) -> str:
    """The whole chain in one line, without intermediate results: ``148 +7*12 -35 x2 /3``."""
    parts = [str(problem["start"])]
    for step in problem["steps"]:
        op = step["op"]
        if op == "add":
            parts.append(f"+{step['a']}")
        elif op == "sub":
            parts.append(f"-{step['a']}")
        elif op == "groups":
            parts.append(f"+{step['k']}*{step['m']}")
        elif op == "times":
            parts.append(f"x{step['k']}")
        else:
            parts.append(f"/{step['k']}")
    return " ".join(parts)


def _run_steps(
    problem: dict[str, Any], rng: random.Random, slip_at: int | None
) -> tuple[list[str], int, tuple[int, int, int] | None, bool]:
    """The step paragraphs with step ``slip_at`` slipping; also whether every share came out even."""
    paras = []
    value = problem["start"]
    slipped = None
    even = True
    for i, step in enumerate(problem["steps"]):
        even = even and not (step["op"] == "share" and value % step["k"])
        after = _apply(step["op"], step, value)
        if i == slip_at:
            after = _slip(rng, after)
            slipped = (i, value, after)
        paras.append(_step_line(step, value, after, problem["pronoun"], rng))
        value = after
    return paras, value, slipped, even


def _stepwise(
    problem: dict[str, Any], rng: random.Random, slip_at: int | None
) -> tuple[list[str], int, tuple[int, int, int] | None]:
    """Step-by-step paragraphs; step ``slip_at`` (if any) slips and later steps carry the error.

    Returns the paragraphs, the value reached and ``(index, before, wrong)`` of the slip. A slip
    that a later step would hide or make uneven (a share that does not divide, a final value that
    comes out right anyway) is not made: the pass is then written without one. The trial run uses
    a copy of ``rng``, so traces with a slip draw exactly what they would without the check.
    """
    if slip_at is not None:
        trial = random.Random()
        trial.setstate(rng.getstate())
        _, reached, _, even = _run_steps(problem, trial, slip_at)
        if not even or reached == problem["answer"]:
            slip_at = None
    paras, reached, slipped, _ = _run_steps(problem, rng, slip_at)
    return paras, reached, slipped


def _check_all(problem: dict[str, Any], rng: random.Random, slipped: tuple | None, reached: int) -> str:
    """The check of every step: the right chain, naming and fixing a slip if there was one."""
    ans = problem["answer"]
    opener = rng.choice(_OPENERS_CHECK)
    chain = ", ".join(_eq(s, s["before"], s["after"]) for s in problem["steps"])
    if slipped is None:
        return f"{opener} {chain}. Every step is right, so the answer is {ans}."
    i, before, wrong = slipped
    bad = _eq(problem["steps"][i], before, wrong)
    return f"{opener} {bad} is wrong. {chain}. So the answer is actually {ans}, not {reached}."


def _redundant(problem: dict[str, Any], rng: random.Random, position: int) -> str:
    """The ``position``-th redundant re-check (last step, the question, first step)."""
    ans, steps = problem["answer"], problem["steps"]
    if position == 0:
        last = steps[-1]
        opener = rng.choice(("Wait, let me double-check the last step.", "Wait, one more look at the last step."))
        return f"{opener} {_eq(last, last['before'], last['after'])}. Yes, that is right, {ans}."
    if position == 1:
        opener = rng.choice(("Wait, did I answer the right question?", "Hmm, what does the question ask?"))
        return f"{opener} It asks how many {problem['item']} {problem['name']} has at the end. That is {ans}."
    first = steps[0]
    opener = rng.choice(("Wait, let me double-check the first step.", "Alternatively, I can start again from the top."))
    return f"{opener} {_eq(first, first['before'], first['after'])}. Yes, so the answer is still {ans}."


def make_hard_trace(problem: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """Build a hard-testbed reasoning trace for a problem of :func:`generate_hard_problems`.

    Returns ``(thinking, answer_text)`` as :func:`reasonexit.data.synthetic.make_trace` does: the
    thinking's paragraphs are separated by ``"\\n\\n"`` and every re-check opens a paragraph with a
    transition word; the answer text ends with ``\\boxed{N}`` and the correct answer. The
    thinking's last stated answer is always the correct one.
    """
    steps, ans = problem["steps"], problem["answer"]
    n_ops = len(steps)
    name, item = problem["name"], problem["item"]
    paras = [rng.choice((f"{name} starts with {problem['start']} {item}.", f"{name} has {problem['start']} {item}."))]

    quick = _slip(rng, ans) if rng.random() < QUICK_ERROR.get(n_ops, 0.55) else ans
    paras.append(f"Quick estimate: {_quick_chain(problem)} gives {quick}. So the answer is {quick}.")

    slip_at = rng.randrange(n_ops) if rng.random() < STEP_ERROR.get(n_ops, 0.2) else None
    body, reached, slipped = _stepwise(problem, rng, slip_at)
    paras.append(rng.choice(_OPENERS_STEPWISE))
    paras.extend(body)
    if reached == quick:
        paras.append(f"So the answer is {reached}.")
    else:
        paras.append(f"So the answer is actually {reached}, not {quick}.")

    paras.append(_check_all(problem, rng, slipped, reached))
    n_more = rng.choices(range(len(REDUNDANT_WEIGHTS)), weights=REDUNDANT_WEIGHTS)[0]
    for position in range(n_more):
        paras.append(_redundant(problem, rng, position))

    thinking = "\n\n".join(paras)
    noun = problem["item_singular"] if ans == 1 else item
    answer_text = rng.choice(
        (
            f"{name} has {ans} {noun} at the end. The answer is \\boxed{{{ans}}}.",
            f"The answer is \\boxed{{{ans}}}.",
            f"**Final Answer**\n\\boxed{{{ans}}}",
        )
    )
    return thinking, answer_text


def transition_cuts(thinking: str) -> list[int]:
    """Char offsets where a paragraph opening with a transition word starts (a probe point)."""
    cuts = []
    offset = 0
    for para in thinking.split("\n\n"):
        if offset and para.startswith(("Wait", "Hmm", "Alternatively")):
            cuts.append(offset)
        offset += len(para) + 2
    return cuts


#: How thinking is closed early (:func:`reasonexit.thinking.closing_ids`, as every early exit closes it).
CLOSE_THINKING = "\n</think>\n\n"


def make_probe_example(problem: dict[str, Any], thinking: str, rng: random.Random) -> tuple[str, str, str] | None:
    """A training example that asks for the answer partway through ``thinking``.

    The thinking is cut where a transition paragraph starts, as DEER probes (the cut keeps the
    paragraph break before the transition word), and either DEER's inducer or the early closing of
    thinking follows. Returns ``(head, marker, target)``: the partial thinking, the inducer or
    closing (both belong to the prompt, so the model is not trained to write them), and the
    *true* answer (after a closed thinking, in an answer sentence). A model trained on it learns
    how likely the answer it has so far is right. ``None`` if the thinking has no transition.
    """
    cuts = transition_cuts(thinking)
    if not cuts:
        return None
    cut = rng.choice(cuts)
    ans = problem["answer"]
    head = thinking[:cut]
    if rng.random() < 0.5:
        return head, PROBE_INDUCER, f"{ans}}}"
    return head, CLOSE_THINKING, f"The answer is \\boxed{{{ans}}}.<|im_end|>"
