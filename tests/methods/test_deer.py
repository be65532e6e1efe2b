"""DEER on the real engine (CPU, tiny testbed model, greedy)."""

from __future__ import annotations

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.methods.deer import TransitionMatcher, confidence_of

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


@pytest.mark.slow
def test_threshold_above_one_never_exits_and_equals_vanilla(session, vanilla):
    res = generate(PROMPTS, "deer", session=session, max_tokens=MAX, threshold=1.01, budget_ratio=1.0)
    assert all(r.exit_reason in ("eos", "length") for r in res)
    assert [r.text for r in res] == [r.text for r in vanilla]
    assert sum(len(r.info["probes"]) for r in res) > 0  # probes ran and were all refused
    # probes are paid for: compute exceeds output by their tokens
    for r in res:
        assert r.compute_tokens == r.output_tokens + r.info["discarded_tokens"] + sum(
            p["tokens"] for p in r.info["probes"]
        )


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


def _official(**kw):
    from reasonexit.methods import make_method

    return make_method("deer", {"compat": "official", **kw})


def test_official_compat_confidence_and_decision_on_constructed_probes(session):
    """--compat official: confidence over the probe tokens after the first (closing token included),
    strict threshold, forced exit near the thinking limit; default rules on the same probe differ."""
    import math

    from reasonexit.methods import make_method
    from reasonexit.methods.deer import _BoxReader

    def read(method, text: str, lps: list[float], opened: bool, pos: int = 10):
        ids = session.encode(text)
        assert len(ids) == len(lps), (text, ids)
        box = _BoxReader(session, opened=opened)
        for i in range(1, len(ids) + 1):
            if box.closed_at is None:
                box.read(ids[:i])
        return method.read_probe(session, ids, lps, box, cut=pos, pos=pos)

    official = _official(threshold=0.5)
    # Official: no brace in the inducer, the model writes "{42}." and more; the closing token counts.
    text = "{42}.\nok"
    n = len(session.encode(text))
    lps = [math.log(0.1 + 0.1 * i) for i in range(n)]
    probe = read(official, text, lps, opened=False)
    closing = probe.closed and session.decode(session.encode(text)[: len(probe.logprobs) + 1]).endswith("}")
    assert probe.answer == "42" and closing
    k = len(probe.logprobs) + 1  # tokens up to and including the closing one
    want = sum(math.exp(x) for x in lps[1:k]) / (k - 1)
    assert probe.confidence == pytest.approx(want)
    assert probe.logprobs == lps[1:k]
    # The default rules on a braced inducer: answer tokens only.
    default = make_method("deer", {"threshold": 0.5})
    text2 = "42}.\nok"
    lps2 = [math.log(0.9)] * len(session.encode(text2))
    lps2[-3] = math.log(0.2)
    p2 = read(default, text2, lps2, opened=True)
    assert p2.answer == "42" and p2.closed
    n_ans = len(session.encode("42"))
    assert p2.logprobs == lps2[:n_ans] and p2.confidence == pytest.approx(0.9)

    # Decisions: strict ">" in official, ">=" by default.
    probe.confidence = 0.5
    assert not official.decide(probe, 1024).exit
    assert default.decide(probe, 1024).exit
    probe.confidence = 0.51
    assert official.decide(probe, 1024).exit and official.decide(probe, 1024).reason == "confident"
    # Forced exit once thinking reaches 0.9 x max_tokens - 50 (= 871 of 1024), whatever the confidence.
    probe.confidence = 0.0
    probe.pos = 870
    assert not official.decide(probe, 1024).exit
    probe.pos = 871
    verdict = official.decide(probe, 1024)
    assert verdict.exit and verdict.reason == "budget"
    assert not default.decide(probe, 1024).exit


def test_official_compat_limits_and_inducer(session):
    method = _official()
    limits = method.limits()
    assert limits.max_checks == 10 and limits.check_at_end
    ctx = type("C", (), {"kind": "math"})()
    assert method._inducer(ctx) == "\n**Final Answer**\n\\boxed"
    res = generate(PROMPTS[:8], method, session=session, max_tokens=MAX)
    for r in res:
        assert len(r.info["probes"]) <= 11  # 10 transition chunks plus the end chunk
        assert r.info["exit_pos"] is not None or r.exit_reason in ("eos", "length")
