"""First Finish Search and majority voting on the real engine (CPU, tiny model).

Branches sample at temperature 0.6 (the methods' default on a greedy run) with seeds derived from
the problem's seed, so every comparison between runs below compares the same samples.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest

from reasonexit import generate
from reasonexit.data.answers import grade
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.engine import Usage
from reasonexit.errors import UserError
from reasonexit.methods import make_method
from reasonexit.methods.base import Context, Decoding, Method, Outcome
from reasonexit.methods.parallel import ABORTED, FINISHED, LENGTH, Branch, BranchUsage, branch_seed, vote

PROBLEMS = generate_problems(6, split="test", seed=4242)
PROMPTS = [format_prompt(p["problem"]) for p in PROBLEMS]
GOLDS = [str(p["answer"]) for p in PROBLEMS]
#: Enough for the testbed's traces (200-600 tokens) to end; the random test model mostly ends too.
MAX = 768


def _branch_index(ctx: Context) -> int:
    return int(ctx.request_prefix.rsplit(".b", 1)[1])


@dataclass
class _NoParams:
    pass


class _Scripted(Method):
    """Test inner with a fixed script: branch i decodes ``decode[i]`` tokens (EOS ignored) and returns
    its first ``keep[i]`` as finished (``finished[i]``) or token-limited, like an early-exit method
    that cuts its trace. It makes finish order and lengths independent of the model's quality.
    """

    name = "test-scripted"
    Params = _NoParams

    def __init__(self, decode: list[int], keep: list[int] | None = None, finished: list[bool] | None = None):
        super().__init__()
        self.decode, self.keep = decode, keep or decode
        self.finished = finished or [True] * len(decode)

    async def solve(self, ctx: Context) -> Outcome:
        i = _branch_index(ctx)
        params = ctx.sampling(max_tokens=self.decode[i], ignore_eos=True, stop_token_ids=[])
        comp = await ctx.session.complete(ctx.prompt_ids, params, ctx.usage, ctx.request_id("s"))
        assert len(comp.token_ids) == self.decode[i]
        done = self.finished[i]
        return Outcome(comp.token_ids[: self.keep[i]], "eos" if done else "length", finished=done)


class _Recording(Method):
    """Test inner: vanilla, keeping every branch's token ids."""

    name = "test-recording"
    Params = _NoParams

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, list[int]] = {}

    async def solve(self, ctx: Context) -> Outcome:
        out = await make_method("vanilla").solve(ctx)
        self.seen[_branch_index(ctx)] = list(out.token_ids)
        return out


class _FailingFirst(_Scripted):
    """Test inner: branch 0 fails while the others decode a long trace."""

    async def solve(self, ctx: Context) -> Outcome:
        if _branch_index(ctx) == 0:
            await asyncio.sleep(0.2)  # the others are decoding by now
            raise ValueError("branch 0 failed")
        return await super().solve(ctx)


def _ffs(**opts) -> Method:
    return make_method("ffs", opts)


# ----------------------------------------------------------------------------- no engine
def test_options_reach_the_inner_method_generically():
    m = make_method("ffs", {"n": "3", "inner": "budget", "max-thinking-tokens": "32"})
    assert m.params.n == 3 and m.inner is not None and m.inner.name == "budget"
    assert m.inner.params.max_thinking_tokens == 32
    assert m.describe()["inner_options"] == {"max_thinking_tokens": 32, "impl": "vllm", "lead_in": "\n\n"}
    # nesting nests: ffs of (majority of budget); names both levels take go in --inner-options
    m2 = make_method(
        "ffs", {"inner": "majority", "n": 2, "inner-options": '{"inner": "budget"}', "max_thinking_tokens": 16}
    )
    assert m2.inner.name == "majority" and m2.inner.inner.name == "budget"
    assert m2.inner.inner.params.max_thinking_tokens == 16
    assert m2.params.n == 2 and m2.inner.params.n == 8  # the outer takes the options it knows
    with pytest.raises(UserError, match=r"unknown option --bogus for method budget .*budget runs inside ffs"):
        make_method("ffs", {"inner": "budget", "bogus": "1"})
    with pytest.raises(UserError, match="--k must be between 1 and --n"):
        make_method("ffs", {"n": 4, "k": 5})
    with pytest.raises(UserError, match="unknown method"):
        make_method("ffs", {"inner": "no-such-method"})


def test_deer_nests_when_registered():
    from reasonexit.methods import method_names

    if "deer" not in method_names():
        pytest.skip("deer is not registered")
    m = make_method("ffs", {"inner": "deer", "threshold": "0.9"})
    assert m.inner.name == "deer" and m.inner.params.threshold == 0.9


def test_branch_seeds_and_live_branch_ledgers():
    assert branch_seed(7, 0) == 7
    seeds = [branch_seed(7, i) for i in range(8)]
    assert len(set(seeds)) == 8 and all(0 <= s < 2**62 for s in seeds)
    assert branch_seed(8, 1) != branch_seed(7, 1)
    parent = Usage(prompt_tokens=10)
    a, b = BranchUsage(parent), BranchUsage(parent)
    a.compute_tokens += 5
    b.compute_tokens += 3
    a.requests += 1
    assert (a.compute_tokens, b.compute_tokens, parent.compute_tokens, parent.requests) == (5, 3, 8, 1)
    assert parent.prompt_tokens == 10


def _voter(i: int, answer: str | None) -> Branch:
    return Branch(index=i, seed=i, usage=BranchUsage(Usage()), answer=answer)


def test_vote_majority_and_ties_to_the_earliest():
    chosen = [_voter(3, "5"), _voter(0, "7"), _voter(1, "7.0"), _voter(2, None), _voter(4, "5")]
    # 5 and 7 both have two votes: 5 was given first
    best, answer, counts = vote(chosen)
    assert (best.index, answer, counts) == (3, "5", {"5": 2, "7": 2})
    best, answer, _ = vote([_voter(0, "1"), _voter(1, "2"), _voter(2, "\\boxed{2}")])
    assert (best.index, answer) == (1, "2")
    best, answer, counts = vote([_voter(5, None), _voter(6, None)])
    assert (best.index, answer, counts) == (5, None, {})


# ----------------------------------------------------------------------------- real engine
def test_branches_are_independent_samples_sharing_the_prefix_cache(session):
    # A fresh prompt (nothing cached yet) longer than two cache blocks.
    bs = int(session.engine.vllm_config.cache_config.block_size)
    text = f"{uuid.uuid4().hex} " + " ".join(PROMPTS)
    prompt_ids = session.chat_prompt_ids(text)
    assert len(prompt_ids) >= 2 * bs
    n = 4
    runs = []
    for _ in range(2):
        method = make_method("majority", {"n": n})
        method.inner = rec = _Recording()
        (r,) = generate([text], method, session=session, max_tokens=MAX, seed=3)
        runs.append((r, rec.seen))
    (r, seen), (r2, seen2) = runs
    assert [b["seed"] for b in r.info["branches"]] == [branch_seed(3 * 1_000_003, i) for i in range(n)]
    # The first branch computes the prompt; the others, launched in the same step, reuse its full blocks.
    assert r.info["requests"] == n
    # (the last prompt token is always computed, so a prompt of m tokens can hit (m - 1) // bs blocks)
    assert r.info["cached_prompt_tokens"] >= (n - 1) * ((len(prompt_ids) - 1) // bs) * bs
    # different seeds give different traces; the same seeds give the same traces
    traces = [tuple(seen[i]) for i in range(n)]
    assert len(set(traces)) == n
    assert [tuple(seen2[i]) for i in range(n)] == traces
    assert r2.text == r.text


@pytest.fixture(scope="module")
def majority4(session):
    """Majority of 4 on the test prompts, one problem at a time (the reference for the same samples)."""
    return generate(PROMPTS, "majority", session=session, max_tokens=MAX, golds=GOLDS, n=4, max_in_flight=1)


def test_winner_is_the_shortest_finished_sample_and_aborts_stop_decoding(session, majority4):
    n = 4
    ffs = generate(PROMPTS, "ffs", session=session, max_tokens=MAX, golds=GOLDS, n=n, max_in_flight=1)
    assert session.engine.get_num_unfinished_requests() == 0  # every loser was aborted, none left running
    some_finished = 0
    for f, m in zip(ffs, majority4, strict=True):
        full = m.info["branches"]
        assert ABORTED not in [b["status"] for b in full]
        finished = [b for b in full if b["status"] == FINISHED]
        rec = f.info["branches"]
        w = rec[f.info["winner"]]
        # accounting: output = the returned sample; compute = every branch's decoded tokens
        assert f.output_tokens == w["tokens"]
        assert f.compute_tokens == sum(b["compute_tokens"] for b in rec)
        if not finished:  # nobody can finish: a token-limited sample is returned
            assert w["status"] == LENGTH and f.exit_reason == "length"
            continue
        some_finished += 1
        # the same sample as the shortest finished one when all run to the end
        shortest = min(finished, key=lambda b: (b["tokens"], b["index"]))
        assert w["status"] == FINISHED and f.exit_reason == "eos"
        assert (w["index"], w["tokens"], w["answer"]) == (shortest["index"], shortest["tokens"], shortest["answer"])
        # the others were aborted as the winner finished: about the winner's length each
        length = w["tokens"]
        for b in rec:
            if b["index"] != w["index"]:
                assert b["status"] in (ABORTED, FINISHED)
                assert b["compute_tokens"] <= length + 3
                if b["status"] == ABORTED:
                    assert b["compute_tokens"] < full[b["index"]]["tokens"]
        assert f.compute_tokens <= 1.1 * n * length + n
        assert f.compute_tokens <= m.compute_tokens
    assert some_finished >= 1


def test_aborted_branches_stop_growing(session):
    ids = session.chat_prompt_ids(PROMPTS[0])
    method = _ffs(n=4)
    method.inner = _Scripted(decode=[8, 300, 300, 300])
    usage = Usage()
    ctx = Context(session=session, prompt_ids=ids, decoding=Decoding(max_tokens=400), usage=usage, seed=11)

    async def solve_then_watch(task_of):
        out = await task_of
        at_return = usage.compute_tokens
        left = session.engine.get_num_unfinished_requests()
        await asyncio.sleep(0.5)
        return out, at_return, left

    out, at_return, left = session.run(solve_then_watch(method.solve(ctx)))
    rec = out.info["branches"]
    assert [b["status"] for b in rec] == [FINISHED, ABORTED, ABORTED, ABORTED]
    assert left == 0 and usage.compute_tokens == at_return  # nothing decoded after the aborts
    assert at_return == sum(b["compute_tokens"] for b in rec) <= 4 * (8 + 3)

    # cancelling the outer controller cancels its branches and aborts their requests too
    usage2 = Usage()
    ctx2 = Context(session=session, prompt_ids=ids, decoding=Decoding(max_tokens=400), usage=usage2, seed=12)
    method.inner = _Scripted(decode=[400] * 4)

    async def cancel_midway():
        task = asyncio.ensure_future(method.solve(ctx2))
        while usage2.compute_tokens < 12:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        frozen = usage2.compute_tokens
        left = session.engine.get_num_unfinished_requests()
        await asyncio.sleep(0.5)
        return frozen, left

    frozen, left = session.run(cancel_midway())
    assert left == 0 and usage2.compute_tokens == frozen < 4 * 100


def test_a_failing_branch_fails_the_problem_and_aborts_the_others(session):
    method = _ffs(n=3)
    method.inner = _FailingFirst(decode=[0, 400, 400])
    # the problem gets an error result (the other problems of a run would go on) ...
    (res,) = generate(PROMPTS[:1], method, session=session, max_tokens=400)
    assert res.exit_reason == "error" and res.error is not None and "branch 0 failed" in res.error
    assert res.output_tokens == 0 and res.correct is None
    # ... and its other branches were aborted
    assert session.engine.get_num_unfinished_requests() == 0


def test_ties_within_one_engine_step_go_to_the_shorter_trace(session):
    # Every branch decodes 8 tokens, but keeps 8, 7, 6, 5 of them: branches that started in the
    # same step end in the same step, with different lengths. (When the engine was idle, the first
    # branch may start a step before the others; it then finishes alone, first.)
    method = _ffs(n=4)
    method.inner = _Scripted(decode=[8] * 4, keep=[8, 7, 6, 5])
    ties = 0
    for r in generate(PROMPTS, method, session=session, max_tokens=64, max_in_flight=1):
        rec = r.info["branches"]
        w = rec[r.info["winner"]]
        tied = [b for b in rec if b["wakeup"] == w["wakeup"]]
        assert all(b["status"] == FINISHED for b in tied)
        assert w == min(tied, key=lambda b: (b["tokens"], b["index"]))  # the shortest of its step wins
        assert [b["tokens"] for b in sorted(tied, key=lambda b: b["order"])] == sorted(b["tokens"] for b in tied)
        assert r.output_tokens == w["tokens"] and r.compute_tokens == sum(b["compute_tokens"] for b in rec)
        assert all(b["compute_tokens"] == 8 for b in rec if b["status"] == FINISHED)
        ties += len(tied) > 1
    assert ties >= 1


def test_length_capped_samples_never_win_while_another_can_finish(session):
    method = _ffs(n=3)
    method.inner = _Scripted(decode=[2, 12, 12], finished=[False, True, True])
    (r,) = generate(PROMPTS[:1], method, session=session, max_tokens=64)
    rec = r.info["branches"]
    assert rec[0]["status"] == LENGTH and rec[0]["order"] == 0  # it completed first...
    assert r.info["winner"] == 1 and rec[1]["status"] == FINISHED  # ...but did not win
    assert r.output_tokens == 12 and r.exit_reason == "eos"
    # when no branch can finish, the first token-limited one is returned
    method.inner = _Scripted(decode=[2, 12, 12], finished=[False] * 3)
    (r,) = generate(PROMPTS[:1], method, session=session, max_tokens=64)
    assert r.info["winner"] == 0 and r.exit_reason == "length" and r.output_tokens == 2
    assert [b["status"] for b in r.info["branches"]] == [LENGTH] * 3


@pytest.mark.slow
def test_k_equal_n_reproduces_majority(session, majority4):
    ffs = generate(PROMPTS, "ffs", session=session, max_tokens=MAX, golds=GOLDS, n=4, k=4, max_in_flight=1)
    keep = ("seed", "status", "tokens", "answer")
    for f, m in zip(ffs, majority4, strict=True):
        assert f.text == m.text and f.answer == m.answer and f.correct == m.correct
        assert f.compute_tokens == m.compute_tokens
        assert f.info["votes"] == m.info["votes"] and f.info["winner"] == m.info["winner"]
        assert [{k: b[k] for k in keep} for b in f.info["branches"]] == [
            {k: b[k] for k in keep} for b in m.info["branches"]
        ]
        # majority: all samples to the end, the vote's answer returned, pass@n from the same samples
        answers = [b["answer"] for b in m.info["branches"]]
        if m.info["answer"] is None:
            assert all(a is None for a in answers)
        else:
            assert m.answer == m.info["answer"]
            assert m.info["votes"][m.answer] == max(m.info["votes"].values())
        assert m.info["pass_at_n"] == any(grade(a, m.gold) for a in answers)
        assert m.info["pass_at_n"] >= bool(m.correct)


@pytest.mark.slow
def test_first_k_finish_votes_among_the_first_finishers(session, majority4):
    res = generate(PROMPTS, "ffs", session=session, max_tokens=MAX, golds=GOLDS, n=4, k=2, max_in_flight=1)
    for r, m in zip(res, majority4, strict=True):
        full = m.info["branches"]
        pool = sorted(full, key=lambda b: (b["status"] != FINISHED, b["order"]))
        voters = r.info["voters"]
        assert voters == [b["index"] for b in pool[:2]]
        given = [full[i]["answer"] for i in voters if full[i]["answer"] is not None]
        assert r.info["answer"] == (given[0] if given else None)  # 1-1 ties go to the earlier finisher
        assert r.compute_tokens <= m.compute_tokens


def test_ffs_runs_an_early_exit_method_in_each_branch(session):
    budget = 32
    # reasonexit's budget rule: it counts the completion's thinking only, so the cap is exact
    res = generate(
        PROMPTS[:3], "ffs", session=session, max_tokens=160, n=3, inner="budget", max_thinking_tokens=budget,
        impl="reasonexit",
    )  # fmt: skip
    for r in res:
        assert r.params["inner"] == "budget" and r.params["inner_options"]["max_thinking_tokens"] == budget
        done = [b for b in r.info["branches"] if b["status"] != ABORTED]
        assert done and all(b["exit_reason"] in ("budget", "eos", "length") for b in done)
        assert r.thinking_tokens <= budget
        if r.exit_reason == "budget":
            assert r.thinking_tokens == budget and r.closed_thinking


def test_ffs_over_deer(session):
    from reasonexit.methods import method_names

    if "deer" not in method_names():
        pytest.skip("deer is not registered")
    (r,) = generate(PROMPTS[:1], "ffs", session=session, max_tokens=MAX, n=2, inner="deer", threshold=0.5)
    assert r.params["inner"] == "deer" and r.params["inner_options"]["threshold"] == 0.5
    assert "probes" in r.info["inner"]
    assert r.compute_tokens >= sum(b["tokens"] for b in r.info["branches"] if b["status"] != ABORTED)
