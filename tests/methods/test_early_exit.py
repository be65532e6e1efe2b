"""The shared early-exit controller: DEER on it makes the decisions DEER made before it existed."""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES

from reasonexit.data.datasets import load_problems
from reasonexit.methods import Decoding, make_method
from reasonexit.runs.runner import jobs_for, solve_all

REFERENCE = json.loads((FIXTURES / "deer_reference.json").read_text())


@pytest.fixture(scope="module")
def reference_jobs(session):
    jobs = jobs_for(session, load_problems("synthetic", limit=REFERENCE["n"]))
    assert [j.id for j in jobs] == REFERENCE["ids"]
    return jobs


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
@pytest.mark.parametrize("setting", sorted(REFERENCE["settings"]))
def test_deer_reproduces_recorded_decisions(session, reference_jobs, setting, mode):
    """Exit position, exit reason and answer on 128 problems equal the recorded pre-controller DEER."""
    entry = REFERENCE["settings"][setting]
    method = make_method("deer", {**entry["options"], "mode": mode})
    dec = Decoding(max_tokens=entry["max_tokens"], seed=0)
    results = session.run(solve_all(session, method, reference_jobs, dec, 1024))
    got = [[r.info.get("exit_pos"), r.exit_reason, r.answer] for r in results]
    diff = [(j.id, w, g) for j, w, g in zip(reference_jobs, entry[mode], got, strict=True) if w != g]
    assert not diff, f"{len(diff)}/{len(got)} differ, first: {diff[:3]}"


def test_thinking_tracker_follows_markers():
    from reasonexit.thinking import ThinkingTracker

    t = ThinkingTracker([7], [8, 9], opened=False)
    t.feed_many([1, 2])
    assert not t.in_thinking and t.think_from is None and t.thinking_tokens == 0
    t.feed(7)
    assert t.in_thinking and t.think_from == 3 and t.thinking_tokens == 0
    t.feed_many([4, 5, 8])  # a partly written end marker is still thinking
    assert t.in_thinking and t.thinking_tokens == 3
    t.feed(9)
    assert t.closed and not t.in_thinking and t.thinking_tokens == 2
    t.feed_many([8, 9, 7])  # nothing after the close changes the span
    assert t.thinking_tokens == 2 and t.n == 10
    opened = ThinkingTracker([7], [8], opened=True)
    opened.feed_many([1, 8, 1])
    assert opened.think_from == 0 and opened.closed and opened.thinking_tokens == 1


def test_exit_reasons_are_the_row_strings():
    import json

    from reasonexit.methods.base import ExitReason

    assert [r.value for r in ExitReason] == ["confident", "budget", "eos", "length", "error", "repetition", "pattern"]
    assert json.dumps({"r": ExitReason.BUDGET}) == '{"r": "budget"}'
    assert ExitReason.from_finish("stop") == "eos" and ExitReason.from_finish("length") == "length"


def test_auto_mode_is_sequential_on_cpu_and_parallel_on_gpu_or_with_checks_elsewhere(session):
    from reasonexit.engine.platform import on_gpu
    from reasonexit.methods.early_exit import resolve_mode

    assert resolve_mode("auto") == ("parallel" if on_gpu() else "sequential")
    assert resolve_mode("auto", checks_elsewhere=True) == "parallel"
    assert resolve_mode("parallel") == "parallel" and resolve_mode("sequential") == "sequential"
    assert resolve_mode("sequential", checks_elsewhere=True) == "sequential"
    assert make_method("deer").limits().mode == "auto" and make_method("flashthink").limits().mode == "auto"
    # The verifier's engine decides: the testbed's trained verifier runs elsewhere, ``self`` on the same engine.
    assert make_method("flashthink").limits(session).checks_elsewhere  # auto = trained on the testbed
    assert not make_method("flashthink", {"verifier": "self"}).limits(session).checks_elsewhere
    assert make_method("flashthink", {"verifier": "model", "verifier_model": "x"}).limits().checks_elsewhere
    assert not make_method("deer").limits(session).checks_elsewhere
