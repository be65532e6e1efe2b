"""The hard testbed's problems and traces: trial answers that are uncertain and settle late.

This module feeds ``reasonexit/assets/tiny_reasoner_hard``, the testbed on which exit rules are
measured. It reuses the word problems of :mod:`reasonexit.data.synthetic` with longer chains and
every operation at every level (:data:`HARD_LEVELS`: two to six steps, values up to 100), and
writes traces whose transitions come *inside* the
computation, as a real reasoning model's "Wait" does:

1. **Step by step**, one paragraph per step.
2. **A check after every hard step** (groups, doubling, sharing): a paragraph opening with "Wait"
   that recomputes the step ("Wait, let me check that: 3 * 5 = 15, and 14 + 15 = 29. Yes."). The
   hesitation goes with the steps where errors happen. In :data:`STEP_ERROR` of the traces one step
   slips: a hard step's slip is caught by its own check ("..., not 27. So it is 29."), an easy
   step's slip is carried on and caught only by the check of every step.
3. "So the answer is N.", then **a check of every step** ("Wait, let me check each step again."),
   which fixes a carried slip ("So the answer is actually N, not M.").
4. Zero to three **redundant re-checks** (last step, the question, first step), the overthinking
   early exit should cut.

The trace never states an early answer the model could copy. The trial answers are the ones a probe
asks for at a transition: before the last steps are done, the model has to compute the rest in one
go, which it can do for one easy step and rarely for four. :func:`make_probe_example` teaches it to answer
there: a share of the training examples stop the thinking at a transition and ask for the answer
(with DEER's inducer, or by closing thinking), and the target is the *true* answer, so the model's
confidence in a trial answer follows how likely it is to be right, imperfectly.

The slips are drawn from each trace's RNG and never depend on the split, so every split of
:func:`generate_hard_problems` shares one distribution.
"""

from __future__ import annotations

import random
from typing import Any

from .synthetic import Levels, _apply, _eq, _step_line, generate_problems

#: Family name of the hard problems: ids read ``hard-<split>-<seed>-<index>``.
FAMILY = "hard"

_OPS = ("add", "sub", "groups", "times", "share")
#: difficulty -> (number of operations, max start value, max operand, cap on any value, operations)
HARD_LEVELS: Levels = {
    1: ((2, 3), 20, 9, 40, _OPS),
    2: ((3, 4), 25, 12, 60, _OPS),
    3: ((4, 5), 30, 12, 80, _OPS),
    4: ((5, 6), 30, 15, 100, _OPS),
}

#: Operations whose step is followed by a check paragraph (the hard ones).
CHECKED_OPS = frozenset({"groups", "times", "share"})
#: Probability that one step of a trace slips, by number of steps in the problem.
STEP_ERROR: dict[int, float] = {2: 0.08, 3: 0.1, 4: 0.12, 5: 0.15, 6: 0.18}
#: Probability of 0-3 redundant re-checks after the check of every step.
REDUNDANT_WEIGHTS: tuple[float, ...] = (0.2, 0.4, 0.3, 0.1)

#: The inducer DEER appends to a probed prefix (:data:`reasonexit.methods.deer.DEFAULT_INDUCER`).
PROBE_INDUCER = "\n**Final Answer**\n\\boxed{"

_OPENERS_STEP_CHECK = ("Wait, let me check that:", "Wait, is that right?", "Wait, let me recompute:")
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
    """A plausible wrong result near ``right``: off by one or two, or by ten; never negative."""
    while True:
        delta = rng.choice((-10, -2, -1, -1, 1, 1, 2, 10))
        if right + delta >= 0:
            return right + delta


def _check_eq(step: dict[str, Any], before: int, after: int) -> str:
    """What a check recomputes: a group step's product and sum, another step's equation."""
    if step["op"] == "groups":
        return f"{step['k']} * {step['m']} = {step['a']}, and {_eq(step, before, after)}"
    return _eq(step, before, after)


def _plan_slip(problem: dict[str, Any], slip_at: int | None, wrong: int) -> int | None:
    """``slip_at`` if its slip is visible and sound: a carried slip must change the answer, keep every
    later share whole and every later value >= 0; a slip at a checked step is fixed at once, so it
    always stays."""
    if slip_at is None or problem["steps"][slip_at]["op"] in CHECKED_OPS:
        return slip_at
    value = wrong
    for step in problem["steps"][slip_at + 1 :]:
        if step["op"] == "share" and value % step["k"]:
            return None
        value = _apply(step["op"], step, value)
        if value < 0:
            return None
    return None if value == problem["answer"] else slip_at


def _steps(
    problem: dict[str, Any], rng: random.Random, slip_at: int | None
) -> tuple[list[str], int, tuple[int, int, int] | None]:
    """Step paragraphs with their checks; returns them, the value reached and a carried slip.

    A slip at a checked step is shown and fixed by the check that follows; a slip at another step
    is carried to the end (``(index, before, wrong)`` is returned so the check of every step can
    name it).
    """
    paras: list[str] = []
    value = problem["start"]
    carried = None
    for i, step in enumerate(problem["steps"]):
        right = _apply(step["op"], step, value)
        shown = _slip(rng, right) if i == slip_at else right
        if i == slip_at and _plan_slip(problem, slip_at, shown) is None:
            shown = right
        paras.append(_step_line(step, value, shown, problem["pronoun"], rng))
        if step["op"] in CHECKED_OPS:
            opener = rng.choice(_OPENERS_STEP_CHECK)
            if shown == right:
                paras.append(f"{opener} {_check_eq(step, value, right)}. {rng.choice(('Yes.', 'Right.'))}")
            else:
                paras.append(f"{opener} {_check_eq(step, value, right)}, not {shown}. So it is {right}.")
                shown = right
        elif shown != right:
            carried = (i, value, shown)
        value = shown
    return paras, value, carried


def _check_all(problem: dict[str, Any], rng: random.Random, carried: tuple | None, reached: int) -> str:
    """The check of every step: the right chain, naming and fixing a carried slip if there was one."""
    ans = problem["answer"]
    opener = rng.choice(_OPENERS_CHECK)
    chain = ", ".join(_eq(s, s["before"], s["after"]) for s in problem["steps"])
    if carried is None:
        return f"{opener} {chain}. Every step is right, so the answer is {ans}."
    i, before, wrong = carried
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
    thinking's paragraphs are separated by ``"\\n\\n"`` and every check opens a paragraph with a
    transition word; the answer text ends with ``\\boxed{N}`` and the correct answer. The
    thinking's last stated answer is always the correct one.
    """
    steps, ans = problem["steps"], problem["answer"]
    n_ops = len(steps)
    name, item = problem["name"], problem["item"]
    paras = [rng.choice((f"{name} starts with {problem['start']} {item}.", f"{name} has {problem['start']} {item}."))]

    slip_at = rng.randrange(n_ops) if rng.random() < STEP_ERROR.get(n_ops, 0.18) else None
    body, reached, carried = _steps(problem, rng, slip_at)
    paras.extend(body)
    paras.append(f"So the answer is {reached}.")
    paras.append(_check_all(problem, rng, carried, reached))
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
