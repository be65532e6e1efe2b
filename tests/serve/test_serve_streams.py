"""Streams read as OpenAI clients read them: ``choices[0]`` of each chunk (per index for ``n > 1``).

For every method (and both budget implementations, and FlashThink with each verifier that runs on
CPU), 16 prompts are sent at once through the server at stream intervals of 0, 0.1 and 0.5 s; each
stream, concatenated, must equal the non-streamed response to the same request byte for byte, and
no chunk may hold two entries for one choice index.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from conftest import TEST_MODEL, free_port

from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.engine import session as engine_mod
from reasonexit.methods.base import Decoding
from reasonexit.serve import create_app, start_server

pytestmark = pytest.mark.slow

KEY = "test-key"
MAX = 320  # long enough that many answers start, and a step's text often spans the end of thinking
INTERVALS = (0.0, 0.1, 0.5)
PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(16, split="test", seed=2026)]

METHODS = [
    ("vanilla", {}),
    ("budget", {"max_thinking_tokens": 40}),
    ("budget", {"max_thinking_tokens": 40, "impl": "reasonexit"}),
    ("deer", {}),
    ("flashthink", {"verifier": "self"}),
    ("flashthink", {"verifier": "trained"}),
    ("flashthink", {"verifier": "model", "verifier_model": TEST_MODEL}),
    ("ffs", {"n": 3}),
    ("majority", {"n": 3}),
]


@pytest.fixture(scope="module")
def servers(session):
    """One server per stream interval, all on the test session's engine loop (as ``serve`` runs)."""
    running, urls = [], {}
    for interval in INTERVALS:
        app = create_app(session, decoding=Decoding(max_tokens=MAX), api_key=KEY, served_model_name="tiny",
                         stream_interval=interval)  # fmt: skip
        port = free_port()
        running.append(start_server(app, session, port=port))
        urls[interval] = f"http://127.0.0.1:{port}/v1"
    yield urls
    for srv in running:
        srv.stop()
    verifier = engine_mod._SESSIONS.get("verifier")  # started by the FlashThink verifiers
    if verifier is not None:
        verifier.close()


def _reasoning(delta_or_message: Any) -> str:
    return (delta_or_message.model_extra or {}).get("reasoning_content") or ""


def _one_entry_per_index(chunk: Any) -> None:
    indexes = [c.index for c in chunk.choices]
    assert len(indexes) == len(set(indexes)), f"a chunk repeats a choice index: {indexes}"


async def _chat_pairs(url: str, requests: list[dict[str, Any]], stream: bool) -> list[tuple[str, str, str | None]]:
    """(reasoning_content, content, finish_reason) of each request, all sent at once; a stream is
    read as clients read it: ``choices[0]`` of each chunk."""

    async def one(client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> tuple[str, str, str | None]:
        if not stream:
            resp = await client.chat.completions.create(**kwargs)
            msg = resp.choices[0].message
            return _reasoning(msg), msg.content or "", resp.choices[0].finish_reason
        thinking = answer = ""
        finish = None
        async for chunk in await client.chat.completions.create(**kwargs, stream=True):
            _one_entry_per_index(chunk)
            if not chunk.choices:
                continue
            first = chunk.choices[0]
            thinking += _reasoning(first.delta)
            answer += first.delta.content or ""
            finish = first.finish_reason or finish
        return thinking, answer, finish

    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
    try:
        return list(await asyncio.gather(*(one(client, kw) for kw in requests)))
    finally:
        await client.close()


@pytest.mark.parametrize("method,opts", METHODS, ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in METHODS])
def test_chat_stream_read_at_choices_0_equals_the_response(servers, method, opts):
    requests = [
        dict(model="tiny", messages=[{"role": "user", "content": p}], max_tokens=MAX, temperature=0, seed=i,
             extra_body={"reasonexit": {"method": method, **opts}})
        for i, p in enumerate(PROMPTS)
    ]  # fmt: skip
    whole = asyncio.run(_chat_pairs(servers[0.0], requests, stream=False))
    # the cases this test is about occur: answers that start within the run, thinking that ends
    assert sum(bool(a) for _, a, _ in whole) >= 4, whole
    for interval in INTERVALS:
        streamed = asyncio.run(_chat_pairs(servers[interval], requests, stream=True))
        for k, (got, want) in enumerate(zip(streamed, whole, strict=True)):
            assert got == want, f"interval {interval}, prompt {k}"


def test_completions_stream_with_n_has_one_entry_per_index(servers):
    """``/v1/completions`` with ``n = 2`` (sampled, seeded): per choice index, the chunks' text adds
    up to the non-streamed choice; no chunk holds two entries for one index."""
    body = {"model": "tiny", "prompt": PROMPTS[:4], "max_tokens": MAX, "n": 2, "temperature": 0.8, "seed": 7}
    headers = {"Authorization": f"Bearer {KEY}"}
    whole = httpx.post(servers[0.0] + "/completions", json=body, headers=headers, timeout=600).json()
    want = {c["index"]: (c["text"], c["finish_reason"]) for c in whole["choices"]}
    assert sorted(want) == list(range(8))
    for interval in INTERVALS:
        got: dict[int, list[Any]] = {i: ["", None] for i in range(8)}
        with httpx.stream("POST", servers[interval] + "/completions", json={**body, "stream": True}, headers=headers,
                          timeout=600) as resp:  # fmt: skip
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                indexes = [c["index"] for c in chunk["choices"]]
                assert len(indexes) == len(set(indexes)), f"a chunk repeats a choice index: {indexes}"
                for c in chunk["choices"]:
                    got[c["index"]][0] += c["text"]
                    got[c["index"]][1] = c["finish_reason"] or got[c["index"]][1]
        assert {i: tuple(v) for i, v in got.items()} == want, f"interval {interval}"
