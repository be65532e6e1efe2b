"""The series exit rules (dynasor, consistency, entropy): their decisions on scripted readings, then
the real engine (CPU, tiny testbed model, greedy)."""

from __future__ import annotations

import asyncio
import math

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.methods import make_method
from reasonexit.methods.consistency import run_jumped, runs
from reasonexit.methods.dynasor import window_agrees
from reasonexit.methods.entropy import entropy_of, moving_variance
from reasonexit.methods.series import Reading, SeriesMethod, _SeriesHooks

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(10, split="test", seed=321)]
MAX = 1024


# ---------------------------------------------------------------- rules on scripted readings


def test_dynasor_window_must_agree() -> None:
    """The paper's rule: all of the last ``window`` answers equal, none hesitant. The authors'
    servers exit on a full window without comparing answers; here a window that differs never exits."""
    same = [("12", False), ("12", False), ("12", False)]
    assert window_agrees(same, 3)
    assert not window_agrees([("11", False), ("12", False), ("12", False)], 3)  # full window, answers differ
    assert window_agrees([("11", False), ("12", False), ("12", False)], 2)
    assert not window_agrees([("12", False), ("12", True), ("12", False)], 3)  # one probe hesitated
    assert not window_agrees([("", False)] * 3, 3)  # no answer is not an answer
    assert not window_agrees(same[:2], 3)  # too few probes yet


def test_dynasor_hesitation_words() -> None:
    m = make_method("dynasor", {"hesitations": "wait,Hmm"})

    class P:
        def __init__(self, answer: str) -> None:
            self.answer = answer

    assert m.value_of(P("12 wait")) == ("12 wait", True)
    assert m.value_of(P("HMM 3")) == ("HMM 3", True)
    assert m.value_of(P("awaited 3")) == ("awaited 3", False)  # whole words only
    assert make_method("dynasor", {"hesitations": ""}).value_of(P("wait")) == ("wait", False)


def test_consistency_run_jump() -> None:
    assert runs(["1", "1", "2", "2", "2"]) == [("1", 2), ("2", 3)]
    assert run_jumped(["3", "3", "3"], 3, 2.0) == (True, 3, 0)  # settled from the first probe: the minimum only
    assert run_jumped(["3", "3"], 3, 2.0)[0] is False
    # a run as long as an earlier one is no jump; twice as long is
    assert run_jumped(["1", "1", "1", "2", "2", "2"], 3, 2.0) == (False, 3, 3)
    assert run_jumped(["1", "1", "1", "2", "2", "2", "2", "2", "2"], 3, 2.0) == (True, 6, 3)
    assert run_jumped(["1", "2", "1", "2", "2"], 2, 2.0) == (True, 2, 1)
    assert run_jumped(["", "", ""], 1, 0.0)[0] is False  # empty answers never settle


def test_eat_moving_variance_and_entropy() -> None:
    assert moving_variance([0.7, 0.7, 0.7], 0.2) == [0.0, 0.0, 0.0]
    # the paper's recursions by hand: mean 1 -> 0.8, variance 0.2 * (0 - 0.8)^2
    assert moving_variance([1.0, 0.0], 0.2) == pytest.approx([0.0, 0.128])
    m = make_method("entropy", {"min_checks": 3, "threshold": 0.01})
    assert m.decide([0.5, 0.5])[0] is False  # before min_checks
    assert m.decide([0.5, 0.5, 0.5])[0] is True
    assert m.decide([0.0, 2.0, 0.0])[0] is False  # still moving
    assert entropy_of({1: math.log(0.25), 2: math.log(0.25), 3: math.log(0.25), 4: math.log(0.25)}) == pytest.approx(
        math.log(4)
    )
    # missing mass counts as one more outcome: two tokens of 0.25 and 0.5 left over
    assert entropy_of({1: math.log(0.25), 2: math.log(0.25)}) == pytest.approx(
        -2 * 0.25 * math.log(0.25) - 0.5 * math.log(0.5)
    )
    assert entropy_of({1: 0.0}) == 0.0


class _Scripted(SeriesMethod):
    """Readings given in advance, each taking its own time; the rule records what it was shown."""

    name = "scripted"

    def __init__(self, values: list[float], delays: list[float]) -> None:
        self.params = None
        self.inner = None
        self.values, self.delays, self.seen = values, delays, []

    async def measure(self, ctx, trace, cut, think_from):  # noqa: ANN001, ANN201
        await asyncio.sleep(self.delays[cut])
        return Reading(self.values[cut], {"pos": cut})

    def decide(self, values):  # noqa: ANN001, ANN201
        self.seen.append(list(values))
        return False, {}


def test_series_is_decided_in_trace_order_whatever_finishes_first() -> None:
    method = _Scripted([10.0, 20.0, 30.0], delays=[0.06, 0.03, 0.0])  # the last check finishes first
    hooks = _SeriesHooks(method, lambda trace, start: None, 0)

    async def run() -> None:
        await asyncio.gather(*(hooks.judge(None, [], cut) for cut in range(3)))

    asyncio.run(run())
    assert sorted(method.seen, key=len) == [[10.0], [10.0, 20.0], [10.0, 20.0, 30.0]]


# ---------------------------------------------------------------- real engine


def _accounted(r, session) -> bool:  # noqa: ANN001
    """Compute tokens = decoded output (the closing an exit inserts is not decoded) + discarded + probes."""
    from reasonexit.thinking import closing_ids

    inserted = len(closing_ids(session.encode, session.markers)) if r.info["exit_pos"] is not None else 0
    probes = sum(p["tokens"] for p in r.info["probes"])
    return r.compute_tokens == r.output_tokens - inserted + r.info["discarded_tokens"] + probes


@pytest.mark.slow
def test_dynasor_on_the_testbed(session) -> None:
    res = generate(PROMPTS, "dynasor", session=session, max_tokens=MAX, every=16, window=2)
    exited = [r for r in res if r.exit_reason == "confident"]
    assert len(exited) >= len(res) // 2
    for r in res:
        assert _accounted(r, session)
        assert all(p["pos"] % 16 == 0 for p in r.info["probes"])
    for r in exited:
        last = [p["answer"] for p in r.info["probes"][-2:]]
        assert last[0] == last[1] and r.info["probes"][-1]["exit"] and r.info["exit_pos"] == r.info["probes"][-1]["pos"]
        assert not any(p["exit"] for p in r.info["probes"][:-1])


@pytest.mark.slow
def test_consistency_on_the_testbed(session) -> None:
    """A run of one is enough at min_run 1, jump 0: the exit is at the first transition, as DEER's at
    threshold 0; a longer minimum exits later or not at all, after that many equal answers."""
    first = generate(PROMPTS, "consistency", session=session, max_tokens=MAX, min_run=1, jump=0)
    deer0 = generate(PROMPTS, "deer", session=session, max_tokens=MAX, threshold=0.0)
    assert [r.info["exit_pos"] for r in first] == [r.info["exit_pos"] for r in deer0]
    two = generate(PROMPTS, "consistency", session=session, max_tokens=MAX, min_run=2, jump=1)
    for a, b in zip(first, two, strict=True):
        assert _accounted(b, session)
        if b.exit_reason == "confident":
            probes = b.info["probes"]
            assert probes[-1]["run"] >= 2 and probes[-1]["answer"] == probes[-2]["answer"]
            assert b.info["exit_pos"] > a.info["exit_pos"]


@pytest.mark.slow
def test_entropy_on_the_testbed(session) -> None:
    vanilla = generate(PROMPTS, "vanilla", session=session, max_tokens=MAX)
    never = generate(PROMPTS, "entropy", session=session, max_tokens=MAX, threshold=0.0, after="The answer is \\boxed{")
    assert [r.text for r in never] == [r.text for r in vanilla]  # a variance below 0 never happens
    probes = [p for r in never for p in r.info["probes"]]
    assert probes and all(p["tokens"] == 1 and p["entropy"] >= 0 for p in probes)
    assert any(p["entropy"] > 0.01 for p in probes)  # the first answer digit is not always certain
    at_once = generate(PROMPTS, "entropy", session=session, max_tokens=MAX, threshold=1e9, min_checks=2)
    for r, v in zip(at_once, never, strict=True):
        assert _accounted(r, session)
        if len(v.info["probes"]) >= 2:  # exits at the second paragraph break
            assert r.exit_reason == "confident" and r.info["exit_pos"] == v.info["probes"][1]["pos"]


@pytest.mark.slow
def test_new_methods_run_inside_ffs(session) -> None:
    for inner, opts in (("dynasor", {"every": 16}), ("consistency", {}), ("entropy", {})):
        res = generate(PROMPTS[:3], "ffs", session=session, max_tokens=MAX, n=2, inner=inner, **opts)
        assert all(r.answer is not None for r in res), inner
        assert all(r.compute_tokens >= r.output_tokens for r in res)
