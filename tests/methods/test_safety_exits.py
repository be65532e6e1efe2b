"""Safety exits that always answer: a loop, a pattern or a thinking cap ends the thinking, then the
model answers (vLLM's own guards end the request instead)."""

from __future__ import annotations

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.errors import UserError
from reasonexit.methods import Decoding
from reasonexit.methods.safety import loop_period

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(12, split="test", seed=321)]
WRAP = "Considering the limited time, I have to give the answer now."


def test_loop_period() -> None:
    loop = [9, 8, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    assert loop_period(loop, 0, 6) == 3  # the last 6 tokens equal the 6 before them, shifted by 3
    assert loop_period(loop, 0, 9) is None  # not enough repetition for a window of 9
    assert loop_period(loop, 3, 6) is None  # the loop may not reach before the thinking
    assert loop_period([7] * 8, 0, 4) == 1
    assert loop_period(list(range(20)), 0, 8) is None


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="on-pattern"):
        Decoding(on_pattern="(unclosed")
    with pytest.raises(UserError, match="on-repetition"):
        Decoding(on_repetition=2)
    with pytest.raises(UserError, match="grace"):
        Decoding(grace_tokens=-1)


def _thinking_before_close(r) -> str:  # noqa: ANN001
    return r.text.split("</think>")[0]


@pytest.mark.slow
def test_pattern_ends_thinking_then_the_model_answers(session) -> None:
    plain = generate(PROMPTS, "vanilla", session=session, max_tokens=1024)
    cut = generate(PROMPTS, "vanilla", session=session, max_tokens=1024, on_pattern=r"Wait", wrap_up=WRAP)
    fired = 0
    for p, r in zip(plain, cut, strict=True):
        if "Wait" not in p.thinking:
            assert r.text == p.text  # nothing matched: plain decoding
            continue
        fired += 1
        assert r.exit_reason == "pattern" and r.info["safety"]["match"] == "Wait"
        head = _thinking_before_close(r)
        assert head.rstrip().endswith(WRAP) and head.count("Wait") == 1
        # the thinking up to the match is the plain trace's, and the model then answered
        assert p.thinking.startswith(head[: head.index("Wait")])
        assert r.closed_thinking and r.answer is not None
    assert fired >= len(PROMPTS) // 2


@pytest.mark.slow
def test_grace_tokens_finish_the_sentence(session) -> None:
    """The trigger fires mid-sentence (an equation's "="); the model may finish the sentence, up to 24 tokens."""
    res = generate(
        PROMPTS, "deer", session=session, max_tokens=1024, threshold=2.0, on_pattern=r"\d+ = ", grace_tokens=24
    )
    used = 0
    for r in res:
        assert r.exit_reason == "pattern" and r.answer is not None
        extra = r.info["exit_pos"] - r.info["safety"]["at"]
        assert 0 <= extra <= 24
        used += extra > 0
        head = _thinking_before_close(r).rstrip()
        assert head.endswith((".", "!", "?")) or extra == 24
    assert used == len(res)  # "= " never ends a sentence: every trace wrote on to the full stop


@pytest.mark.slow
def test_budget_with_a_wrap_up_answers_after_a_whole_sentence(session) -> None:
    res = generate(
        PROMPTS, "budget", session=session, max_tokens=1024, max_thinking_tokens=40, wrap_up=WRAP, grace_tokens=30
    )
    for r in res:
        assert r.exit_reason == "budget" and r.info["forced"] and r.info["safety"]["at"] == 40
        head = _thinking_before_close(r).rstrip()
        assert head.endswith(WRAP)
        before = head[: -len(WRAP)].rstrip()
        assert before.endswith((".", "!", "?")) or r.info["exit_pos"] == 40 + 30
        assert r.answer is not None


LOOP = "She gets 3 more, so 5 + 3 = 8.\n\n"
CHANT = "5 + 3 = 8, " * 4  # the loop the testbed falls into after that prompt


def _looping_jobs(session, n: int = 4):  # noqa: ANN001, ANN202
    """Prompts whose thinking already repeats one line: the testbed goes on to chant "5 + 3 = 8, "."""
    from dataclasses import replace

    from reasonexit.runs.runner import prompt_job

    jobs = []
    for i, prompt in enumerate(PROMPTS[:n]):
        job = prompt_job(session, f"loop-{i}", prompt, f"prompt {i}")
        jobs.append(replace(job, prompt_ids=job.prompt_ids + session.encode("Mia has 5 apples.\n\n" + LOOP * 6)))
    return jobs


@pytest.mark.slow
@pytest.mark.parametrize(("method", "opts"), [("vanilla", {}), ("deer", {"threshold": 2.0})])
def test_a_loop_is_ended_by_an_answer_not_a_truncation(session, method, opts) -> None:
    from reasonexit.methods import make_method
    from reasonexit.runs.runner import solve_all

    jobs = _looping_jobs(session)
    plain = session.run(solve_all(session, make_method(method, opts), jobs, Decoding(max_tokens=300)))
    assert all(CHANT in r.text for r in plain)  # the loop, left to itself
    guarded = session.run(
        solve_all(session, make_method(method, opts), jobs, Decoding(max_tokens=300, on_repetition=24))
    )
    for p, r in zip(plain, guarded, strict=True):
        # "5 + 3 = 8, " is 9 tokens: the last 24 equal the 24 before them one turn earlier
        assert r.exit_reason == "repetition" and r.info["safety"]["period"] == 9
        head = r.text.split("</think>")[0]
        assert "5 + 3 = 8, " * 3 in head
        # then the model answered and ended by itself
        assert r.closed_thinking and r.answer is not None and r.info["exit_pos"] < p.thinking_tokens
