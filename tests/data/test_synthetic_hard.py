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
    CLOSE_THINKING,
    HARD_LEVELS,
    PROBE_INDUCER,
    QUICK_ERROR,
    STEP_ERROR,
    generate_hard_problems,
    make_hard_trace,
    make_probe_example,
    transition_cuts,
)
from reasonexit.errors import UserError

HARD_DIR = ROOT / "reasonexit" / "assets" / "tiny_reasoner_hard"
STATED = re.compile(r"answer is (?:actually |still )?(\d+)")


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
    assert max(p["answer"] for p in probs) >= 300  # values reach three digits, unlike the quick set
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
    """Estimate, step by step, check of every step, redundant re-checks; the answer settles late."""
    quick_wrong = {n: [] for n in QUICK_ERROR}
    step_wrong = {n: [] for n in STEP_ERROR}
    for prob, thinking, answer in traces():
        n_ops, gold = len(prob["steps"]), prob["answer"]
        paras = thinking.split("\n\n")
        assert paras[1].startswith("Quick estimate:")
        quick = int(STATED.search(paras[1]).group(1))
        quick_wrong[n_ops].append(quick != gold)
        assert paras[2].startswith("Wait")  # the step-by-step pass opens with a transition
        stated = [int(x) for x in STATED.findall(thinking)]
        assert stated[-1] == gold and answer.endswith(f"\\boxed{{{gold}}}") or answer.endswith(f"\\boxed{{{gold}}}.")
        assert stated[-1] == gold
        # the step-by-step answer: its "actually" marks a change from the estimate
        step_para = next(p for p in paras[3:] if p.startswith("So the answer is"))
        reached = int(STATED.search(step_para).group(1))
        assert ("actually" in step_para) == (reached != quick)
        step_wrong[n_ops].append(reached != gold)
        check = next(
            p
            for p in paras
            if p.startswith(("Wait, let me check each", "Wait, let me verify every", "Wait, let me go over"))
        )
        assert ("is wrong" in check) == (reached != gold)  # the check finds exactly the slips
        assert len(transition_cuts(thinking)) >= 2
        assert all(not p.startswith(("Wait", "Hmm", "Alternatively")) or i >= 2 for i, p in enumerate(paras))
    for n, rate in QUICK_ERROR.items():
        seen = sum(quick_wrong[n]) / len(quick_wrong[n])
        assert abs(seen - rate) < 0.08, (n, seen, rate)
    for n, rate in STEP_ERROR.items():
        seen = sum(step_wrong[n]) / len(step_wrong[n])
        assert abs(seen - rate) < 0.07, (n, seen, rate)
    # errors grow with the number of steps, as on real hard problems
    assert QUICK_ERROR[5] > QUICK_ERROR[2] and STEP_ERROR[5] > STEP_ERROR[2]


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
