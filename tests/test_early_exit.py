"""The shared early-exit controller: DEER on it makes the decisions DEER made before it existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reasonexit.bench import jobs_for
from reasonexit.datasets import load_problems
from reasonexit.methods import Decoding, make_method
from reasonexit.runner import solve_all

REFERENCE = json.loads((Path(__file__).parent / "data" / "deer_reference.json").read_text())


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
    method = make_method("deer", {**entry["options"], "sequential": mode == "sequential"})
    dec = Decoding(max_tokens=entry["max_tokens"], seed=0)
    results = session.run(solve_all(session, method, reference_jobs, dec, 1024))
    got = [[r.info.get("exit_pos"), r.exit_reason, r.answer] for r in results]
    diff = [(j.id, w, g) for j, w, g in zip(reference_jobs, entry[mode], got, strict=True) if w != g]
    assert not diff, f"{len(diff)}/{len(got)} differ, first: {diff[:3]}"
