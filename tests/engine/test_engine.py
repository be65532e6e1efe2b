"""The engine session and the baseline methods on the real vLLM engine (CPU, tiny model)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import weakref

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.engine import EngineConfig, Usage
from reasonexit.methods.base import Decoding
from reasonexit.runs.runner import Job, solve_all

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(6, split="test", seed=123)]


def test_markers_found_through_the_chat_template(session):
    m = session.markers
    assert m.has_thinking and m.start == "<think>" and m.end == "</think>"
    assert m.opened_by_template  # DeepSeek-R1 style: the generation prompt ends with <think>
    ids = session.chat_prompt_ids("What is 2 + 3?")
    assert session.decode(ids).rstrip().endswith("<think>")


def test_decode_matches_the_tokenizer_and_a_callers_params_stay_untouched(session):
    """``decode`` skips transformers' wrapper but not its result; a caller's SamplingParams (not
    built for one request) is copied deeply before the engine changes anything, so it can be reused."""
    from vllm import SamplingParams

    rng = random.Random(5)
    vocab = len(session.tokenizer)
    for _ in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(60))]
        assert session.decode(ids) == session.tokenizer.decode(ids, skip_special_tokens=False)
    params = SamplingParams(max_tokens=6, temperature=0.0)
    before = (params.output_kind, params.skip_clone, set(params._all_stop_token_ids))
    prompt = session.chat_prompt_ids("What is 2 + 3?")
    first = session.run(session.complete(prompt, params, Usage()))
    second = session.run(session.complete(prompt, params, Usage()))
    assert (params.output_kind, params.skip_clone, set(params._all_stop_token_ids)) == before
    assert first.token_ids == second.token_ids and len(first.token_ids) == 6


def test_vanilla_greedy_is_deterministic_and_accounted(session):
    a = generate(PROMPTS[:3], "vanilla", session=session, max_tokens=256)
    b = generate(PROMPTS[:3], "vanilla", session=session, max_tokens=256)
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text
        assert x.output_tokens > 0
        # vanilla decodes exactly what it returns
        assert x.compute_tokens == x.output_tokens
        assert x.prompt_tokens == len(session.chat_prompt_ids(PROMPTS[int(x.id)]))
        assert x.exit_reason in ("eos", "length")
        assert x.thinking_tokens + x.answer_tokens <= x.output_tokens


def _thinking_in_prompt(session, prompt: str) -> int:
    """Thinking tokens the prompt already holds (after a template-opened start marker)."""
    ids = session.chat_prompt_ids(prompt)
    start = list(session.markers.start_ids)
    last = max(i for i in range(len(ids) - len(start) + 1) if ids[i : i + len(start)] == start)
    return len(ids) - last - len(start)


@pytest.mark.parametrize("impl", ["vllm", "reasonexit"])
def test_budget_forces_end_of_thinking_at_the_cap(session, impl):
    budget = 12
    res = generate(PROMPTS[:4], "budget", session=session, max_tokens=200, max_thinking_tokens=budget, impl=impl)
    end = list(session.markers.end_ids)
    for r in res:
        # vLLM's budget also counts thinking tokens the prompt already holds (the newline after the
        # template's <think>); reasonexit's counts the completion's thinking only.
        cap = budget - _thinking_in_prompt(session, PROMPTS[int(r.id)]) if impl == "vllm" else budget
        assert r.exit_reason == "budget", r.text
        assert r.thinking_tokens == cap
        assert r.closed_thinking
        # the forced end-of-thinking marker sits right after the budget
        assert r.token_ids[cap : cap + len(end)] == end
        if impl == "reasonexit":  # reasonexit's rule also forces the lead-in
            lead = session.encode("\n\n")
            assert r.token_ids[cap + len(end) : cap + len(end) + len(lead)] == lead
        assert r.answer_tokens >= 1


@pytest.mark.parametrize("impl", ["vllm", "reasonexit"])
def test_budget_above_trace_length_equals_vanilla(session, impl):
    van = generate(PROMPTS[:3], "vanilla", session=session, max_tokens=128)
    big = generate(PROMPTS[:3], "budget", session=session, max_tokens=128, max_thinking_tokens=100000, impl=impl)
    assert [r.text for r in van] == [r.text for r in big]
    assert all(r.exit_reason != "budget" for r in big)


def test_abort_stops_decoding(session):
    usage = Usage()
    ids = session.chat_prompt_ids(PROMPTS[0])
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True, detokenize=False)

    async def take(n: int) -> int:
        got = 0
        async with contextlib.aclosing(session.stream(ids, params, usage)) as st:
            async for d in st:
                got += len(d.token_ids)
                if got >= n:
                    break
        await asyncio.sleep(0.5)
        return got

    got = session.run(take(5))
    assert got >= 5
    assert usage.compute_tokens == got  # nothing streamed after the abort
    assert session.engine.get_num_unfinished_requests() == 0


def test_prefix_cache_is_reused(session):
    usage = Usage()
    ids = session.chat_prompt_ids(PROMPTS[1] + " " + PROMPTS[2])  # long enough to fill cache blocks
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=4, temperature=0.0, detokenize=False)
    session.run(session.complete(ids, params, usage))
    session.run(session.complete(ids, params, usage))
    assert usage.requests == 2
    assert usage.cached_prompt_tokens > 0


def test_all_problems_in_flight_results_in_order(session):
    jobs = [Job(id=f"j{i}", prompt_ids=session.chat_prompt_ids(p)) for i, p in enumerate(PROMPTS)]
    from reasonexit.methods import make_method

    res = session.run(solve_all(session, make_method("vanilla"), jobs, Decoding(max_tokens=64), max_in_flight=6))
    assert [r.id for r in res] == [j.id for j in jobs]


def test_async_api_from_another_loop(session):
    from reasonexit import agenerate

    async def main():
        return await agenerate(PROMPTS[:2], "vanilla", session=session, max_tokens=32)

    res = asyncio.run(main())
    assert len(res) == 2 and all(r.output_tokens > 0 for r in res)


def test_prompt_longer_than_context_is_a_user_error(session):
    from reasonexit.errors import UserError

    with pytest.raises(UserError, match="longer than the model context"):
        generate(["word " * 5000], "vanilla", session=session)


def test_cpu_binding_takes_every_core_of_a_small_machine_only_for_a_lone_engine(monkeypatch):
    """The rule behind a lone CPU engine's thread binding, on pretend machines."""
    import reasonexit.engine.platform as eng

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(eng, "_SPARE_CORE_WANTED", False)
    monkeypatch.setattr(eng, "RUNNING_CPU_ENGINES", weakref.WeakSet())
    cfg = EngineConfig()
    monkeypatch.setattr(eng, "_allowed_cores", lambda: [0, 1])
    assert eng.cpu_binding(cfg) == "0,1"
    assert eng.cpu_binding(EngineConfig(cpu_cores="1")) == "1"  # the user's choice wins
    assert eng.cpu_binding(EngineConfig(tensor_parallel_size=2)) is None  # vLLM binds each rank
    monkeypatch.setattr(eng, "_allowed_cores", lambda: [0, 1, 2, 3])
    assert eng.cpu_binding(cfg) is None  # vLLM's own choice: all cores but one
    monkeypatch.setattr(eng, "_allowed_cores", lambda: [3])
    assert eng.cpu_binding(cfg) is None
    monkeypatch.setattr(eng, "_allowed_cores", lambda: [2, 5])
    assert eng.cpu_binding(cfg) == "2,5"

    class Running:  # another CPU engine in this process
        pass

    other = Running()
    eng.RUNNING_CPU_ENGINES.add(other)
    assert eng.cpu_binding(cfg) is None
    eng.RUNNING_CPU_ENGINES.discard(other)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert eng.cpu_binding(cfg) is None  # the user's variable stands
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    eng.reserve_spare_core()  # a FlashThink verifier engine will need a core
    assert eng.cpu_binding(cfg) is None
    assert eng.spare_cpu_core() == "5"
