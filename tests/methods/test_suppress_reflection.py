"""``--suppress-reflection`` (NoWait): vLLM's own bad_words bar the reflection words from the output."""

from __future__ import annotations

import re

import pytest

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.errors import UserError
from reasonexit.methods.base import REFLECTION_WORDS, Decoding

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(10, split="test", seed=321)]
REFLECT = re.compile(r"\b(Wait|wait|Hmm|hmm|Alternatively|alternatively)\b")


def test_barred_words_fit_the_gpu_runner(session) -> None:
    """vLLM's V2 runner (GPU) holds at most VLLM_MAX_NUM_BAD_WORDS sequences and
    VLLM_MAX_BAD_WORDS_TOTAL_TOKENS tokens a request; V1 on CPU has no such limit, so the sizes
    are checked here as vLLM's front end builds them from our sampling parameters."""
    from vllm import SamplingParams, envs
    from vllm.tokenizers import get_tokenizer

    params = SamplingParams(bad_words=list(REFLECTION_WORDS))
    params.update_from_tokenizer(get_tokenizer(session.config.model))  # as vLLM's front end does
    ids = params.bad_words_token_ids
    assert ids and len(ids) <= envs.VLLM_MAX_NUM_BAD_WORDS
    assert sum(len(x) for x in ids) <= envs.VLLM_MAX_BAD_WORDS_TOTAL_TOKENS
    with pytest.raises(UserError, match="VLLM_MAX_NUM_BAD_WORDS"):
        Decoding(suppress_reflection=True, reflection_words=tuple(f"w{i}" for i in range(65)))
    with pytest.raises(UserError, match="at least one"):
        Decoding(suppress_reflection=True, reflection_words=("",))


@pytest.mark.slow
@pytest.mark.parametrize(("method", "opts"), [("vanilla", {}), ("deer", {"threshold": 2.0})])
def test_reflection_words_are_never_written(session, method, opts) -> None:
    """The testbed re-checks after every answer, always opening with a reflection word: barred,
    it never writes one (DEER at a threshold it never reaches: its probes still run). Trained on
    nothing else, it then loses its way to the answer; R1-style models write on, which is what
    NoWait measured."""
    plain = generate(PROMPTS, method, session=session, max_tokens=512, **opts)
    barred = generate(PROMPTS, method, session=session, max_tokens=512, suppress_reflection=True, **opts)
    assert sum(bool(REFLECT.search(r.text)) for r in plain) >= len(PROMPTS) // 2  # the testbed reflects
    assert not any(REFLECT.search(r.text) for r in barred)
    # only the listed words are barred
    only_wait = generate(
        PROMPTS, method, session=session, max_tokens=512, suppress_reflection=True, reflection_words=["Wait"], **opts
    )
    assert not any("Wait" in r.text for r in only_wait)
    assert any(re.search(r"\b(Hmm|Alternatively)\b", r.text) for r in only_wait)
