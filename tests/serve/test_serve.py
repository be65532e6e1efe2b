"""``reasonexit serve``: the official ``openai`` client against a server started in this process
on a loopback port, on the test session's engine (no second engine)."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import uvicorn
from conftest import free_port

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.methods.base import Decoding
from reasonexit.serve import create_app, start_server

KEY = "test-key"
MAX = 192
PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(4, split="test", seed=321)]


@pytest.fixture(scope="module")
def server(session):
    """The server on a free loopback port, on the engine's loop as ``reasonexit serve`` runs it;
    stopped after the module. Chunks go out per engine step (``stream_interval=0``), so that the
    tests of what is streamed when do not depend on how fast this machine is at the moment; the
    default interval's coalescing is served by ``thread_server``."""
    app = create_app(session, decoding=Decoding(max_tokens=MAX), api_key=KEY, served_model_name="tiny",
                     stream_interval=0)
    port = free_port()
    srv = start_server(app, session, port=port)
    yield f"http://127.0.0.1:{port}"
    srv.stop()


@pytest.fixture(scope="module")
def thread_server(session):
    """The same app under uvicorn on a loop and thread of its own (an app embedded elsewhere)."""
    app = create_app(session, decoding=Decoding(max_tokens=MAX), api_key=KEY, served_model_name="tiny")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _reference(session, prompt, method="vanilla", seed=0, **opts):
    return generate([prompt], method, session=session, max_tokens=MAX, seed=seed, **opts)[0]


# compute_tokens of DEER counts the tokens the main trace decoded past a check before the check
# stopped it; how many depends on timing (in both modes; sequential keeps it small), so equality
# is checked for vanilla only.
@pytest.mark.parametrize("method,opts", [("vanilla", {}), ("deer", {"threshold": 0.5, "mode": "sequential"})])
def test_chat_matches_in_process_api(session, client, method, opts):
    resp = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX, seed=3,
        extra_body={"reasonexit": {"method": method, **opts}},
    )
    ref = _reference(session, PROMPTS[0], method, seed=3, **opts)
    msg = resp.choices[0].message
    assert msg.content == ref.answer_text
    assert msg.model_extra["reasoning_content"] == ref.thinking
    assert ref.thinking and ref.thinking not in msg.content  # the split is real
    usage = resp.usage.model_extra
    assert resp.usage.prompt_tokens == ref.prompt_tokens
    assert resp.usage.completion_tokens == ref.output_tokens
    if method == "vanilla":
        assert usage["compute_tokens"] == ref.compute_tokens
    else:
        # not >= completion_tokens either: DEER's inserted tokens (the end of thinking, the
        # answer inducer) are in the completion without having been decoded
        assert usage["compute_tokens"] > 0
    assert usage["exit_reason"] == ref.exit_reason
    assert resp.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "method,opts",
    [
        ("budget", {"max_thinking_tokens": 24}),
        ("flashthink", {"verifier": "self", "threshold": 0.5, "mode": "sequential"}),
        ("majority", {"n": 2}),
    ],
)
def test_every_method_streamed_or_not_matches_in_process_api(session, client, method, opts, stream):
    """The methods not covered above, through the server with and without streaming."""
    ref = _reference(session, PROMPTS[2], method, seed=4, **opts)
    kwargs = dict(
        model="tiny", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=MAX, seed=4,
        extra_body={"reasonexit": {"method": method, **opts}},
    )  # fmt: skip
    if stream:
        thinking, answer, usage = "", "", None
        for chunk in client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for c in chunk.choices:
                thinking += (c.delta.model_extra or {}).get("reasoning_content") or ""
                answer += c.delta.content or ""
    else:
        resp = client.chat.completions.create(**kwargs)
        msg, usage = resp.choices[0].message, resp.usage
        thinking, answer = msg.model_extra["reasoning_content"] or "", msg.content
    assert (thinking, answer) == (ref.thinking, ref.answer_text)
    assert usage.completion_tokens == ref.output_tokens
    assert usage.model_extra["exit_reason"] == ref.exit_reason
    if method != "flashthink":  # the verifier's timing does not enter budget's or majority's count
        assert usage.model_extra["compute_tokens"] == ref.compute_tokens


def test_completions_with_token_ids_and_n(session, client):
    ids = session.chat_prompt_ids(PROMPTS[1])
    resp = client.completions.create(model="tiny", prompt=ids, max_tokens=MAX, n=2, temperature=0.8, seed=5)
    assert [c.index for c in resp.choices] == [0, 1]
    refs = generate([PROMPTS[1]] * 2, session=session, max_tokens=MAX, temperature=0.8, seed=5)
    # choice j runs with index j, as prompt j of a list does in the API
    assert [c.text for c in resp.choices] == [r.text for r in refs]
    assert resp.usage.completion_tokens == sum(r.output_tokens for r in refs)
    assert resp.usage.model_extra["exit_reason"] == [r.exit_reason for r in refs]


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=16)
    text = httpx.get(server + "/metrics").text
    assert 'reasonexit_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "reasonexit_compute_tokens_total" in text and "reasonexit_exits_total" in text


def test_auth(server):
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(server + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "extra,param,words",
    [
        ({"reasonexit": {"method": "nope"}}, "reasonexit.method", "unknown method"),
        ({"reasonexit": {"method": "deer", "thresh": 0.9}}, "reasonexit.thresh", "--thresh"),
        ({"reasonexit": {"method": "deer", "threshold": "high"}}, "reasonexit.threshold", "--threshold"),
        ({"n": 0}, "n", "n must be"),
        ({"stop": ["\n", 3]}, "stop", "stop must be"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"temperature": -1}, "temperature", "temperature"),
    ],
)
def test_bad_input_is_400_naming_the_field(client, extra, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "2+2?"}], max_tokens=8, extra_body=extra
        )
    body = err.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param
    assert words in body["message"]


def test_prompt_over_context_is_400(client, session):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=[5] * (session.max_model_len + 1), max_tokens=8)
    assert "longer than the model context" in err.value.body["message"]
    assert err.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("loop", ["engine", "thread"])
def test_streaming_chat_with_usage(session, request, loop):
    url = request.getfixturevalue("server" if loop == "engine" else "thread_server")
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=MAX, seed=1, stream=True,
        stream_options={"include_usage": True},
        extra_body={"reasonexit": {"method": "deer", "threshold": 0.5, "mode": "sequential"}},
    )
    thinking, answer, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            thinking += (c.delta.model_extra or {}).get("reasoning_content") or ""
            answer += c.delta.content or ""
            finish = c.finish_reason or finish
    ref = _reference(session, PROMPTS[3], "deer", seed=1, threshold=0.5, mode="sequential")
    assert (thinking, answer) == (ref.thinking, ref.answer_text)
    assert finish in ("stop", "length")
    assert usage.completion_tokens == ref.output_tokens
    assert usage.model_extra["compute_tokens"] > 0  # timing-dependent for DEER (see above)
    assert usage.model_extra["exit_reason"] == ref.exit_reason


class _EngineWatch:
    """The request ids vLLM holds, sampled every 2 ms on the engine's own loop (the loop every
    request of every controller is added and aborted on), so even a one-token verifier call is seen."""

    def __init__(self, session) -> None:
        self.session = session
        self.first_seen: dict[str, float] = {}  # request id -> time.monotonic() it was first seen
        self.live: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=session.run, args=(self._watch(),), daemon=True)

    async def _watch(self) -> None:
        import asyncio

        states = self.session.engine.output_processor.request_states
        while not self._stop.is_set():
            self.live = {st.external_req_id for st in list(states.values())}
            now = time.monotonic()
            for rid in self.live:
                self.first_seen.setdefault(rid, now)
            await asyncio.sleep(0.002)

    def __enter__(self) -> _EngineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def seen(self) -> set[str]:
        return set(self.first_seen)

    def of(self, ids: set[str], call_id: str) -> set[str]:
        return {r for r in ids if r.startswith(call_id + ".")}


def _completed_calls(server: str) -> int:
    for line in httpx.get(server + "/metrics").text.splitlines():
        if line.startswith('reasonexit_requests_total{endpoint="/v1/chat/completions",status="200"}'):
            return int(float(line.split()[-1]))
    return 0


# Request ids are "<response id>.<prompt>.<purpose>-<k>" (branches add ".b<i>"); each case waits
# until the call has had requests of every kind listed, then disconnects while it still runs.
@pytest.mark.parametrize("method,opts,kinds", [
    ("deer", {"threshold": 1.01, "mode": "parallel", "paragraph_breaks": True}, (r"\.main\d+-", r"\.probe-")),
    ("flashthink", {"threshold": 1.01, "verifier": "self", "mode": "parallel"}, (r"\.main\d+-", r"\.verify-")),
    ("ffs", {"n": 3, "inner": "deer", "threshold": 1.01, "mode": "parallel", "paragraph_breaks": True},
     (r"\.b0\.main", r"\.b1\.main", r"\.b2\.main", r"\.b\d\.probe-")),
])
def test_disconnect_aborts_engine_requests(server, session, method, opts, kinds):
    """A client that goes away mid-stream leaves no request of its call on the engine: main
    traces, probes, verifier calls and branches are all aborted, and none starts afterwards."""
    import json
    import re

    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 1800,
            "n": 16, "temperature": 1.0, "seed": 11, "stream": True, "reasonexit": {"method": method, **opts}}
    before = _completed_calls(server)
    with _EngineWatch(session) as watch:
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", server + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
                assert resp.status_code == 200
                # Keep the line iterator: a dropped one closes the connection (httpx closes the
                # stream when its generator is closed), which is a disconnect before the call starts.
                lines = resp.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                call_id = json.loads(first[len("data: "):])["id"]
                deadline = time.time() + 60  # generous: the CPU is shared with other test runs
                while not (all(any(re.search(k, r) for r in watch.of(watch.seen, call_id)) for k in kinds)
                           and watch.of(watch.live, call_id)):
                    seen = sorted(watch.of(watch.seen, call_id))[:6]
                    assert time.time() < deadline, f"the call never had {kinds} running: {seen}"
                    time.sleep(0.005)
            # leaving the block closes the connection mid-call
        # Left to run, the call would go on for seconds (16 sampled choices of up to 1800 tokens,
        # starting new probes, verifier calls and segments); cut short, its requests are aborted
        # at once (measured: within 0.01 s). 2 s and 0.5 s leave room for a shared CPU.
        disconnected = time.monotonic()
        while watch.of(watch.live, call_id) and time.monotonic() < disconnected + 2:
            time.sleep(0.005)
        left = sorted(watch.of(watch.live, call_id))[:6]
        assert not left, f"left on the engine after 2 s: {left}"
        time.sleep(1.0)
        assert not watch.of(watch.live, call_id)
        late = {r for r in watch.of(watch.seen, call_id) if watch.first_seen[r] > disconnected + 0.5}
        assert not late, f"the call started requests after the disconnect: {sorted(late)[:6]}"
    assert _completed_calls(server) == before  # the call was cut short, not finished


@pytest.mark.parametrize("method,opts", [
    ("deer", {"threshold": 0.5, "mode": "sequential"}),
    ("deer", {"threshold": 0.5, "mode": "parallel"}),
    # a 4-token transition: the cut lies 3 tokens before the token that completes it (hold 3)
    ("deer", {"threshold": 0.5, "mode": "parallel", "transitions": ["Wait, let me"]}),
    ("flashthink", {"threshold": 0.5, "verifier": "self", "mode": "sequential"}),
    ("flashthink", {"threshold": 0.5, "verifier": "self", "mode": "parallel"}),
])
def test_early_exit_streams_final_tokens_live(server, session, client, method, opts):
    """DEER and FlashThink stream thinking and answer while the call runs, and the streamed
    text adds up to the non-streamed response of the same request and seed."""
    args = dict(model="tiny", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=MAX, seed=7,
                extra_body={"reasonexit": {"method": method, **opts}})
    whole = client.chat.completions.create(**args)
    assert whole.usage.model_extra["exit_reason"] == "confident"  # the exit path is what is tested
    thinking, answer, pieces, live_at_first = "", "", {"reasoning": 0, "content": 0}, None
    with _EngineWatch(session) as watch:
        for chunk in client.chat.completions.create(**args, stream=True):
            for c in chunk.choices:
                r = (c.delta.model_extra or {}).get("reasoning_content") or ""
                a = c.delta.content or ""
                if (r or a) and live_at_first is None:
                    live_at_first = bool(watch.of(watch.live, chunk.id))  # the call still runs on the engine
                thinking, answer = thinking + r, answer + a
                pieces["reasoning"] += bool(r)
                pieces["content"] += bool(a)
    msg = whole.choices[0].message
    assert (thinking, answer) == (msg.model_extra["reasoning_content"], msg.content)
    assert live_at_first, "the first text arrived after the call had left the engine"
    # streamed as decoded, not as one block at the end
    assert pieces["reasoning"] > 1 and pieces["content"] > 1, pieces


@pytest.mark.parametrize("method,opts", [("vanilla", {}), ("deer", {"threshold": 0.5, "mode": "sequential"})])
@pytest.mark.parametrize("include", [False, True])
def test_stop_strings_end_the_answer(session, client, method, opts, include):
    """``stop`` ends the completion with the token that completes the stop string; the text ends
    before the stop string, as the OpenAI API's does, or with it (vLLM's
    ``include_stop_str_in_output``); streamed or not; here it falls in the answer."""
    ref = generate([PROMPTS[3]], method, session=session, max_tokens=400, seed=2, **opts)[0]
    stop = "boxed"
    assert stop in ref.answer_text and stop not in ref.thinking
    extra = {"reasonexit": {"method": method, **opts}, **({"include_stop_str_in_output": True} if include else {})}
    args = dict(model="tiny", messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=400, seed=2,
                stop=[stop, "never written"], extra_body=extra)
    resp = client.chat.completions.create(**args)
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "stop"
    assert msg.model_extra["reasoning_content"] == ref.thinking
    upto = ref.answer_text[: ref.answer_text.index(stop)]
    if include:
        assert ref.answer_text.startswith(msg.content) and msg.content.startswith(upto + stop)
        assert len(msg.content) < len(upto + stop) + 8  # ends with the stop's token
    else:
        assert msg.content == upto
    assert resp.usage.completion_tokens < ref.output_tokens
    answer, finish = "", None
    for chunk in client.chat.completions.create(**args, stream=True):
        for c in chunk.choices:
            answer += c.delta.content or ""
            finish = c.finish_reason or finish
    assert (answer, finish) == (msg.content, "stop")


def test_stop_string_hold_back():
    """What the stream holds back: the end of the text that may begin a stop string, and nothing
    from a complete one on."""
    from reasonexit.serve.responses import cut_at_stop as _cut_at_stop
    from reasonexit.serve.responses import stop_prefix_start as _stop_prefix_start

    assert _stop_prefix_start("the answer is \\bo", ["boxed"]) == len("the answer is \\")
    assert _stop_prefix_start("the answer is 4", ["boxed", "\n\n"]) == len("the answer is 4")
    assert _stop_prefix_start("x\n", ["boxed", "\n\n"]) == 1
    assert _stop_prefix_start("ab", ["abc", "b"]) == 0  # the longest possible start wins
    assert _cut_at_stop("a boxed b boxed", ["boxed"]) == ("a ", True)
    assert _cut_at_stop("one two", ["two", "one t"]) == ("", True)  # the first in the text
    assert _cut_at_stop("no stop here", ["boxed"]) == ("no stop here", False)


@pytest.mark.parametrize("args,words", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "deer", "--thresh", "0.9"], "unknown option --thresh for method deer"),
    (["--port", "0"], "--port must be in 1..65535"),
])
def test_cli_serve_bad_settings_fail_before_the_engine(capsys, args, words):
    from reasonexit.cli import main

    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reasonexit: error:") and words in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_32_concurrent_streaming_clients_get_complete_answers(server, session):
    """32 streaming calls at once (vanilla, greedy): each gets a complete answer (end of sequence
    after the end of thinking), with the same text, tokens and answer as the in-process API."""
    import asyncio

    from reasonexit.data.answers import extract_answer

    prompts = [format_prompt(p["problem"]) for p in generate_problems(32, split="test", seed=77)]
    refs = generate(prompts, session=session, max_tokens=600)
    assert all(r.exit_reason == "eos" and r.answer for r in refs)  # complete answers to compare with

    async def one(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str, int, str | None]:
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=600, stream=True,
            stream_options={"include_usage": True},
        )
        thinking = answer = ""
        tokens, finish = -1, None
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for c in chunk.choices:
                thinking += (c.delta.model_extra or {}).get("reasoning_content") or ""
                answer += c.delta.content or ""
                finish = c.finish_reason or finish
        return thinking, answer, tokens, finish

    async def all_of_them() -> list[tuple[str, str, int, str | None]]:
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=300)
        try:
            return list(await asyncio.gather(*(one(client, p) for p in prompts)))
        finally:
            await client.close()

    got = asyncio.run(all_of_them())
    assert got == [(r.thinking, r.answer_text, r.output_tokens, "stop") for r in refs]
    assert [extract_answer(g[1], "math") for g in got] == [r.answer for r in refs]


def test_request_methods_are_built_once_per_name_and_options(session):
    """A server keeps the methods requests ask for (as a run keeps one for all its problems):
    the same name and options give the same object, other options another."""
    import collections

    from reasonexit.methods import make_method
    from reasonexit.serve.serving import _request_method

    default = make_method("vanilla")
    cache = collections.OrderedDict()

    def method(extra):
        return _request_method(extra, "vanilla", {}, default, session, cache)

    first = method({"method": "deer", "threshold": 0.9})
    assert method({"threshold": 0.9, "method": "deer"}) is first
    assert method({"method": "deer", "threshold": 0.8}) is not first
    assert method({"method": "deer", "threshold": 0.8}).params.threshold == 0.8
    assert method(None) is default and method({"method": "vanilla"}) is default
    assert len(cache) == 2


def test_serve_leaves_the_front_end_a_core_before_the_engine_starts(session, monkeypatch):
    """``serve`` notes, before it starts the engine, that the HTTP front end needs a core, so a CPU
    engine on a small machine leaves vLLM's spare core free instead of taking every core."""
    import reasonexit.engine.platform as eng
    from reasonexit.serve import ServeOptions, serve

    monkeypatch.setattr(eng, "_SPARE_CORE_WANTED", False)  # as in a fresh process
    seen: list[bool] = []

    class Started(Exception):
        pass

    def start() -> None:  # the (already running) test engine: record, then stop before serving
        seen.append(eng._SPARE_CORE_WANTED)
        raise Started

    monkeypatch.setattr(session, "start", start)
    with pytest.raises(Started):
        serve(session, ServeOptions())
    assert seen == [True]
