"""DEER on the hard testbed: its threshold decides accuracy (the quick testbed cannot show that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasonexit import generate
from reasonexit.data.datasets import load_problems
from reasonexit.engine import HARD_MODEL, EngineConfig, get_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(HARD_MODEL) / "config.json").is_file(), reason="tiny_reasoner_hard not committed"),
]


@pytest.fixture(scope="module")
def hard_session(session):
    """A second engine, on the hard testbed, beside the suite's (closed with the module)."""
    s = get_session(EngineConfig(model="hard", dtype="float32", max_model_len=2048, seed=0), name="hard")
    s.start()
    yield s
    s.close()


def test_deer_accuracy_rises_with_its_threshold(hard_session) -> None:
    problems = load_problems("synthetic_hard", limit=64)
    prompts = [p.prompt for p in problems]
    golds = [p.gold for p in problems]

    def run(threshold: float) -> tuple[float, float]:
        res = generate(prompts, "deer", session=hard_session, golds=golds, max_tokens=1024, threshold=threshold)
        assert all(r.exit_reason != "error" for r in res)
        return sum(bool(r.correct) for r in res) / len(res), sum(r.output_tokens for r in res) / len(res)

    low_acc, low_tokens = run(0.5)
    high_acc, high_tokens = run(0.99)
    assert low_acc < high_acc, (low_acc, high_acc)
    assert low_tokens < high_tokens  # the low threshold exits earlier, and pays for it in accuracy
