"""Tests of the hard testbed's generator: problems, splits, trace kinds and probe examples."""

from __future__ import annotations

import json
import random
import re

import pytest
from conftest import ROOT

from reasonexit.data.datasets import load_problems
from reasonexit.data.synthetic import generate_problems, solve
from reasonexit.data.synthetic_hard import (
    CHECKED_OPS,
    CLOSE_THINKING,
    HARD_LEVELS,
    PROBE_INDUCER,
    STEP_ERROR,
    generate_hard_problems,
    make_hard_trace,
    make_probe_example,
    transition_cuts,
)
from reasonexit.errors import UserError

HARD_DIR = ROOT / "reasonexit" / "assets" / "tiny_reasoner_hard"
STATED = re.compile(r"answer is (?:actually |still )?(-?\d+)")


def traces(n: int = 2000, seed: int = 5) -> list[tuple[dict, str, str]]:
    out = []
    for prob in generate_hard_problems(n, split="train", seed=seed):
        thinking, answer = make_hard_trace(prob, random.Random(prob["id"]))
        out.append((prob, thinking, answer))
    return out


def test_problems_are_harder_and_separate_from_the_quick_set() -> None:
    probs = generate_hard_problems(400, split="test", seed=0)
    assert all(p["id"].startswith("hard-test-0-") for p in probs)
    for p in probs:
        (lo, hi), *_, cap, _ = HARD_LEVELS[p["difficulty"]]
        assert lo <= len(p["steps"]) <= hi
        assert solve(p) == p["answer"]
        assert max(s["after"] for s in p["steps"]) <= cap
    assert max(len(p["steps"]) for p in probs) == 6  # longer chains than the quick set's
    assert sum(len(p["steps"]) for p in probs) > sum(len(p["steps"]) for p in generate_problems(400, "test", 0))
    assert max(p["answer"] for p in generate_problems(400, split="test", seed=0)) <= 120
    easy = {p["problem"] for p in generate_problems(400, split="test", seed=0)}
    assert not easy & {p["problem"] for p in probs}
    assert generate_hard_problems(50, split="test", seed=0) == probs[:50]  # deterministic, prefix-stable


def test_splits_are_disjoint() -> None:
    texts = {
        s: {p["problem"] for p in generate_hard_problems(600, split=s, seed=1)} for s in ("train", "validation", "test")
    }
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    loaded = load_problems("synthetic_hard", limit=20, split="validation", synthetic_seed=1)
    assert [p.problem for p in loaded] == [p["problem"] for p in generate_hard_problems(20, "validation", 1)]
    assert all(p.id.startswith("hard-validation-1-") and p.meta["difficulty"] in HARD_LEVELS for p in loaded)


def test_trace_kinds() -> None:
    """Steps with a check after every hard one, a check of every step, redundant re-checks."""
    slipped = {n: [] for n in STEP_ERROR}
    caught_at_once = carried = 0
    for prob, thinking, answer in traces():
        n_ops, gold = len(prob["steps"]), prob["answer"]
        paras = thinking.split("\n\n")
        assert not paras[0].startswith(("Wait", "Hmm", "Alternatively"))
        assert answer.endswith((f"\\boxed{{{gold}}}", f"\\boxed{{{gold}}}."))
        stated = [int(x) for x in STATED.findall(thinking)]
        assert stated[-1] == gold and min(stated) >= 0  # the last stated answer is always right; none negative
        # no answer is stated before the steps are done: trial answers come from probes only
        first_answer = next(i for i, p in enumerate(paras) if p.startswith("So the answer is"))
        assert not any(STATED.search(p) for p in paras[:first_answer])
        step_checks = [p for p in paras[:first_answer] if p.startswith("Wait")]
        hard_steps = sum(s["op"] in CHECKED_OPS for s in prob["steps"])
        assert len(step_checks) == hard_steps  # a check follows every hard step, and only those
        fixed_now = sum(", not " in p for p in step_checks)
        reached = stated[0]
        check = next(
            p
            for p in paras
            if p.startswith(("Wait, let me check each", "Wait, let me verify every", "Wait, let me go over"))
        )
        assert ("is wrong" in check) == (reached != gold)  # the check of every step finds a carried slip
        assert ("actually" in check) == (reached != gold)
        assert fixed_now + (reached != gold) <= 1
        caught_at_once += fixed_now
        carried += reached != gold
        slipped[n_ops].append(fixed_now + (reached != gold))
        # probe points: every step check, the check of every step, each redundant re-check
        assert len(transition_cuts(thinking)) == hard_steps + 1 + len(paras) - paras.index(check) - 1
    assert caught_at_once > 50 and carried > 50  # both kinds of slip occur
    for n, rate in STEP_ERROR.items():
        seen = sum(slipped[n]) / len(slipped[n])
        # a carried slip that would not change the answer (or would split unevenly) is not made
        assert rate - 0.08 < seen <= rate + 0.05, (n, seen, rate)
    assert STEP_ERROR[6] > STEP_ERROR[2]  # errors grow with the number of steps


def test_probe_examples_ask_for_the_true_answer() -> None:
    kinds = set()
    for prob, thinking, _ in traces(400, seed=9):
        ex = make_probe_example(prob, thinking, random.Random(prob["id"] + "probe"))
        assert ex is not None
        head, marker, target = ex
        # cut where DEER cuts: before the transition word, after the paragraph break
        assert thinking.startswith(head) and len(head) in transition_cuts(thinking) and head.endswith(".\n\n")
        if marker == PROBE_INDUCER:
            kinds.add("inducer")
            assert target == f"{prob['answer']}}}"
        else:
            kinds.add("closed")
            assert marker == CLOSE_THINKING and target == f"The answer is \\boxed{{{prob['answer']}}}.<|im_end|>"
    assert kinds == {"inducer", "closed"}
    assert make_probe_example(traces(1)[0][0], "no transitions here", random.Random(0)) is None


def test_short_model_names() -> None:
    from reasonexit.engine import DEFAULT_MODEL, HARD_MODEL, EngineConfig, resolve_model

    assert resolve_model("tiny") == DEFAULT_MODEL and EngineConfig(model="tiny").model == DEFAULT_MODEL
    assert resolve_model("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    if (HARD_DIR / "config.json").is_file():
        assert resolve_model("hard") == HARD_MODEL and EngineConfig(model="hard").model == HARD_MODEL
    else:  # not trained into this checkout yet: one line saying how to get it
        with pytest.raises(UserError, match="train_tiny_reasoner.py --hard"):
            EngineConfig(model="hard")


@pytest.mark.skipif(not (HARD_DIR / "config.json").exists(), reason="tiny_reasoner_hard checkpoint not committed")
def test_bundled_hard_checkpoint_files() -> None:
    weights = list(HARD_DIR.glob("*.safetensors"))
    assert len(weights) == 1 and weights[0].stat().st_size < 20 * 2**20
    config = json.loads((HARD_DIR / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "float32"
    info = json.loads((HARD_DIR / "training_info.json").read_text())
    assert "--hard" in info["command"] and info["train_minutes"] <= 60
