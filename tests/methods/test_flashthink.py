"""FlashThink on the real engine (CPU, tiny testbed model, greedy) with the ``self`` verifier."""

from __future__ import annotations

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.methods import make_method
from reasonexit.methods.flashthink import _Chunks
from reasonexit.methods.verifiers import DEFAULT_JUDGE_PROMPT, score_record

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(16, split="test", seed=321)]
MAX = 1024
SELF = {"verifier": "self"}


@pytest.fixture(scope="module")
def vanilla(session):
    return generate(PROMPTS, "vanilla", session=session, max_tokens=MAX)


def first_check(session, ids: list[int], think_end: int, every: int, min_tokens: int) -> int | None:
    """Where FlashThink's first check falls on a vanilla trace (the template opened thinking at 0)."""
    chunks = _Chunks(session, ("\n\n",))
    seen = 0
    for n in range(1, think_end + 1):
        if chunks.ends_chunk(ids[:n], 0):
            seen += 1
            if seen % every == 0 and n >= min_tokens:
                return n
    return None


def test_threshold_above_one_equals_vanilla(session, vanilla):
    res = generate(PROMPTS, "flashthink", session=session, max_tokens=MAX, threshold=1.01, budget_ratio=1.0, **SELF)
    assert [r.text for r in res] == [r.text for r in vanilla]
    assert all(r.exit_reason in ("eos", "length") and r.info["exit_pos"] is None for r in res)
    assert sum(len(r.info["checks"]) for r in res) > len(res)  # the verifier was asked and refused
    for r in res:
        # the verifier's decoded tokens are paid for
        assert r.info["verifier_tokens"] == len(r.info["checks"]) > 0
        assert r.compute_tokens == r.output_tokens + r.info["discarded_tokens"] + r.info["verifier_tokens"]


@pytest.mark.parametrize(("every", "min_tokens"), [(1, 0), (2, 40)])
def test_threshold_zero_exits_at_first_checked_boundary(session, vanilla, every, min_tokens):
    res = generate(
        PROMPTS, "flashthink", session=session, max_tokens=MAX, threshold=0.0,
        every=every, min_thinking_tokens=min_tokens, **SELF,
    )  # fmt: skip
    exited = 0
    for v, r in zip(vanilla, res, strict=True):
        first = first_check(session, v.token_ids, v.thinking_tokens, every, min_tokens)
        if first is None:
            assert r.info["exit_pos"] is None
            continue
        exited += 1
        assert r.exit_reason == "confident" and r.info["exit_pos"] == first
        assert len(r.info["checks"]) == 1 and r.info["checks"][0]["pos"] == first
        # thinking closed right after that chunk with the model's own end marker
        close = session.encode("\n" + session.markers.end + "\n\n")
        assert r.token_ids[:first] == v.token_ids[:first] and r.token_ids[first : first + len(close)] == close
    assert exited == len(PROMPTS)


@pytest.mark.slow
def test_sequential_and_parallel_agree(session):
    # a threshold that splits the self verifier's scores: the median of all checks on these traces
    never = generate(PROMPTS, "flashthink", session=session, max_tokens=MAX, threshold=1.01, **SELF)
    all_scores = sorted(c["score"] for r in never for c in r.info["checks"])
    threshold = all_scores[len(all_scores) // 2]
    opts = dict(threshold=threshold, max_tokens=MAX, **SELF)
    seq = generate(PROMPTS, "flashthink", session=session, mode="sequential", **opts)
    par = generate(PROMPTS, "flashthink", session=session, mode="parallel", **opts)
    assert [r.info["mode"] for r in seq + par] == ["sequential"] * len(seq) + ["parallel"] * len(par)
    assert [r.info["exit_pos"] for r in seq] == [r.info["exit_pos"] for r in par]
    assert [r.answer for r in seq] == [r.answer for r in par]
    assert [[c["score"] for c in r.info["checks"]] for r in seq] == [
        [c["score"] for c in r.info["checks"]] for r in par
    ]
    # the threshold splits the checks: some refused, some exits
    scores = [c["score"] for r in seq for c in r.info["checks"]]
    assert any(s < threshold for s in scores) and any(r.exit_reason == "confident" for r in seq)


def test_recorded_scores_match_logprobs_and_cache_grows(session):
    res = generate(PROMPTS[:6], "flashthink", session=session, max_tokens=MAX, threshold=1.01, **SELF)
    judge_len = len(session.encode(DEFAULT_JUDGE_PROMPT))
    for r in res:
        checks = r.info["checks"]
        assert len(checks) >= 3
        for c in checks:
            assert 0.0 <= c["score"] <= 1.0
            assert c["score"] == pytest.approx(score_record(c["yes_logprob"], c["no_logprob"]), abs=1e-5)
            # question and reasoning come first, so all but the judging question and the last partial
            # KV block (32 tokens on CPU) were already in vLLM's prefix cache
            assert c["cached_tokens"] >= c["prompt_tokens"] - judge_len - 32
        cached = [c["cached_tokens"] for c in checks]
        assert cached == sorted(cached) and cached[-1] > cached[0]


def test_verifier_input_is_question_and_reasoning_never_gold(session):
    sentinel = "9817263"
    method = make_method("flashthink", {"threshold": 1.01, **SELF})
    verifier = session.run(method.verifier(session))
    seen: list[list[int]] = []
    inner = verifier.verifier_input

    def spy(ids):
        out = inner(ids)
        seen.append(out)
        return out

    verifier.verifier_input = spy
    res = generate(PROMPTS[:4], method, session=session, max_tokens=MAX, golds=[sentinel] * 4)
    assert seen and all(r.gold == sentinel for r in res)
    judge = session.encode(DEFAULT_JUDGE_PROMPT)
    prompts = [session.chat_prompt_ids(p) for p in PROMPTS[:4]]
    for ids in seen:
        assert sentinel not in session.decode(ids)
        assert ids[-len(judge) :] == judge
        body = ids[: -len(judge)]
        # exactly a problem's prompt followed by a prefix of its trace
        k = next(i for i, p in enumerate(prompts) if body[: len(p)] == p)
        trace = res[k].token_ids
        assert body[len(prompts[k]) :] == trace[: len(body) - len(prompts[k])]


def test_chunks_match_on_token_ids(session):
    chunks = _Chunks(session, ("\n\n", "Step"))
    ids = session.encode("So 3 + 4 = 7.\n\nThen")
    ends = [n for n in range(1, len(ids) + 1) if chunks.ends_chunk(ids[:n], 0)]
    assert len(ends) == 1 and session.decode(ids[: ends[0]]).endswith("7.\n\n")
    ids = session.encode("a Step b")
    assert [n for n in range(1, len(ids) + 1) if chunks.ends_chunk(ids[:n], 0)]
    assert not chunks.ends_chunk(session.encode("no delimiter here"), 0)


def test_ffs_runs_flashthink_branches(session):
    res = generate(PROMPTS[:4], "ffs", session=session, max_tokens=MAX, n=2, inner="flashthink", threshold=0.0, **SELF)
    for r in res:
        assert r.info["inner"]["checks"] and r.exit_reason == "confident"
        assert r.compute_tokens >= r.output_tokens
