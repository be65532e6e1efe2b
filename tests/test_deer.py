"""DEER on the real engine (CPU, tiny testbed model, greedy)."""

from __future__ import annotations

import pytest

from reasonexit import generate
from reasonexit.methods.deer import TransitionMatcher, confidence_of
from reasonexit.prompts import format_prompt
from reasonexit.synthetic import generate_problems

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(24, split="test", seed=321)]
MAX = 1024


@pytest.fixture(scope="module")
def vanilla(session):
    return generate(PROMPTS, "vanilla", session=session, max_tokens=MAX)


def first_transition(session, ids: list[int], think_end: int) -> int | None:
    """Where DEER's matcher first fires on a vanilla trace (the template opened thinking at 0)."""
    m = TransitionMatcher(session, ("Wait",), False)
    trace: list[int] = []
    for tok in ids[:think_end]:
        trace.append(tok)
        cut = m.match(trace, 0)
        if cut is not None:
            return cut
    return None


def test_threshold_above_one_never_exits_and_equals_vanilla(session, vanilla):
    res = generate(PROMPTS, "deer", session=session, max_tokens=MAX, threshold=1.01, budget_ratio=1.0)
    assert all(r.exit_reason in ("eos", "length") for r in res)
    assert [r.text for r in res] == [r.text for r in vanilla]
    assert sum(len(r.info["probes"]) for r in res) > 0  # probes ran and were all refused
    # probes are paid for: compute exceeds output by their tokens
    for r in res:
        assert r.compute_tokens == r.output_tokens + sum(p["tokens"] for p in r.info["probes"])


def test_threshold_zero_exits_at_first_transition(session, vanilla):
    res = generate(PROMPTS, "deer", session=session, max_tokens=MAX, threshold=0.0)
    with_wait = 0
    for v, r in zip(vanilla, res, strict=True):
        first = first_transition(session, v.token_ids, v.thinking_tokens)
        if first is None:
            assert r.info["exit_pos"] is None
            continue
        with_wait += 1
        assert r.exit_reason == "confident"
        assert r.info["exit_pos"] == first
        assert r.thinking_tokens <= v.thinking_tokens
    assert with_wait >= len(PROMPTS) // 2  # the testbed overthinks: most traces have a "Wait"


def test_sequential_and_parallel_agree(session):
    par = generate(PROMPTS, "deer", session=session, max_tokens=MAX, mode="parallel")
    seq = generate(PROMPTS, "deer", session=session, max_tokens=MAX, mode="sequential")
    agree = sum(
        a.info["exit_pos"] == b.info["exit_pos"] and a.answer == b.answer for a, b in zip(par, seq, strict=True)
    )
    assert agree >= 0.95 * len(PROMPTS)
    assert any(r.exit_reason == "confident" for r in par)


@pytest.mark.parametrize("how", ["mean", "min", "gmean"])
def test_recorded_confidence_matches_probe_logprobs(session, how):
    res = generate(PROMPTS[:8], "deer", session=session, max_tokens=MAX, confidence=how, threshold=0.5)
    probes = [p for r in res for p in r.info["probes"]]
    assert probes
    for p in probes:
        assert p["confidence"] == pytest.approx(confidence_of(p["logprobs"], how), abs=1e-5)
        assert 0.0 <= p["confidence"] <= 1.0
        if p["closed"]:
            assert p["answer"] != ""


def test_exit_closes_thinking_with_model_markers(session):
    res = generate(PROMPTS[:8], "deer", session=session, max_tokens=MAX, threshold=0.0)
    exited = [r for r in res if r.exit_reason == "confident"]
    assert exited
    end = list(session.markers.end_ids)
    for r in exited:
        assert r.closed_thinking
        close = session.encode("\n" + session.markers.end + "\n\n")
        cut = r.info["exit_pos"]
        assert r.token_ids[cut : cut + len(close)] == close and end[0] in close
        assert r.answer is not None  # the model wrote a final answer after the exit


def test_matcher_handles_merged_leads(session):
    m = TransitionMatcher(session, ("Wait", "Hmm"), False)
    for text in ("so 5.\n\nWait", "so 5. Wait", "so 5.\nHmm"):
        ids = session.encode(text)
        cut = m.match(ids, 0)
        assert cut is not None and session.decode(ids[cut:]).strip() in ("Wait", "Hmm")
    assert m.match(session.encode("so we await it"), 0) is None


def test_budget_exit_respects_max_tokens(session):
    res = generate(PROMPTS[:8], "deer", session=session, max_tokens=160, threshold=1.01, budget_ratio=0.5)
    assert any(r.exit_reason == "budget" for r in res)
    for r in res:
        assert r.output_tokens <= 160
        if r.exit_reason == "budget":
            # exit after 80 thinking tokens; the closing "\n</think>" adds its newline to the thinking
            assert r.info["exit_pos"] == 80 and r.closed_thinking
            assert 80 <= r.thinking_tokens <= 81
