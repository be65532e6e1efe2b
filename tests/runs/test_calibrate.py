"""``reasonexit calibrate``: the p-values, fixed-sequence selection, settings files, and a real run."""

from __future__ import annotations

import math
import random

import pytest
import yaml
from conftest import CLI_ENGINE_ARGS

from reasonexit import generate
from reasonexit.cli import main
from reasonexit.errors import UserError
from reasonexit.runs.calibrate import (
    binom_cdf,
    binomial_pvalue,
    fixed_sequence,
    hb_pvalue,
    load_settings,
    losses,
    ordered_grid,
    select,
    with_settings,
    write_settings,
)


def test_binomial_tail() -> None:
    assert binom_cdf(0, 3, 0.5) == pytest.approx(1 / 8)
    assert binom_cdf(1, 3, 0.5) == pytest.approx(4 / 8)
    assert binom_cdf(3, 3, 0.5) == 1.0 and binom_cdf(-1, 3, 0.5) == 0.0
    assert binom_cdf(5, 300, 0.02) == pytest.approx(
        sum(math.comb(300, i) * 0.02**i * 0.98 ** (300 - i) for i in range(6))
    )


@pytest.mark.parametrize("pvalue", [hb_pvalue, binomial_pvalue])
def test_pvalues_are_valid_under_the_null(pvalue) -> None:
    """At risk exactly alpha, P(p <= delta) <= delta: the guarantee the selection rests on."""
    rng = random.Random(0)
    n, alpha, delta, trials = 200, 0.1, 0.1, 2000
    rejected = 0
    for _ in range(trials):
        k = sum(rng.random() < alpha for _ in range(n))
        rejected += pvalue(k / n, n, alpha) <= delta
    assert rejected / trials <= delta + 0.02
    # and they have power: a risk far below the bound is accepted on enough problems
    assert pvalue(0.0, 300, 0.05) < 1e-5 and pvalue(0.02, 300, 0.05) < 0.1
    assert pvalue(0.06, 300, 0.05) > 0.5  # above the bound: never accepted


def test_losses_and_fixed_sequence() -> None:
    # reference right and setting wrong costs 1; both wrong, or only the setting right, cost 0
    assert losses([True, True, False, False, None], [True, False, False, True, False]) == [0, 1, 0, 0, 0]
    assert fixed_sequence([0.01, 0.02, 0.5, 0.01], 0.1) == 1  # stops at the first failure
    assert fixed_sequence([0.5, 0.01], 0.1) is None
    assert ordered_grid(["0.5", "0.99", "0.9"], "high") == ["0.99", "0.9", "0.5"]
    assert ordered_grid(["64", "256", "128"], "low") == ["64", "128", "256"]
    with pytest.raises(UserError):
        ordered_grid(["a", "b"], "high")
    ref = [True] * 100
    cal = select(
        ["0.99", "0.9", "0.5"],
        ref,
        [[True] * 100, [True] * 99 + [False], [True] * 80 + [False] * 20],
        [300, 200, 100],
        320,
        max_loss=0.05,
        delta=0.1,
    )
    assert cal.chosen == 1 and cal.loss == [0.0, 0.01, 0.2] and "| 0.5 |" in cal.table()
    # no value qualifies: the most conservative already fails, so none is chosen
    none = select(["0.99", "0.5"], ref, [[True] * 90 + [False] * 10, [True] * 100], [300, 100], 320, 0.05, 0.1)
    assert none.chosen is None  # the later, better-looking value is never reached (fixed sequence)


def test_settings_files(tmp_path) -> None:
    path = write_settings(tmp_path / "s.yaml", "deer", {"threshold": 0.9, "confidence": "min"}, {"model": "m"})
    body = yaml.safe_load(path.read_text())
    assert body["method"] == "deer" and body["calibration"]["model"] == "m" and "date" in body["calibration"]
    assert load_settings(path) == ("deer", {"threshold": 0.9, "confidence": "min"})
    assert with_settings(path, "vanilla", {"threshold": "0.5"}) == ("deer", {"threshold": "0.5", "confidence": "min"})
    assert with_settings(None, "budget", {}) == ("budget", {})
    with pytest.raises(UserError, match="for method deer"):
        with_settings(path, "budget", {})
    (tmp_path / "bad.yaml").write_text("- just a list\n")
    for bad in (tmp_path / "bad.yaml", tmp_path / "missing.yaml"):
        with pytest.raises(UserError):
            load_settings(bad)


@pytest.mark.slow
def test_calibrate_writes_settings_that_eval_and_the_api_use(session, tmp_path, capsys) -> None:
    out = tmp_path / "budget.yaml"
    common = ["calibrate", "--method", "budget", "--param", "max_thinking_tokens", "--grid", "8,512",
              "--limit", "8", "--split", "validation", "--runs", str(tmp_path / "runs"), "--max-tokens", "384",
              "--quiet", *CLI_ENGINE_ARGS]  # fmt: skip
    status = main([*common, "--max-loss", "0.3", "--delta", "0.2", "--out", str(out), "--check-split", "test"])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "chosen: budget max_thinking_tokens=" in text and "held out (test, 8 problems)" in text
    body = yaml.safe_load(out.read_text())
    chosen = body["options"]["max_thinking_tokens"]
    assert chosen in (8, 512) and body["calibration"]["split"] == "validation"
    assert body["calibration"]["calibration_loss"] <= 0.3

    # the file drives the API and eval
    res = generate(["Tom has 3 apples and buys 4 more. How many apples?"], settings=str(out), session=session,
                   max_tokens=384)  # fmt: skip
    assert res[0].method == "budget" and res[0].params["max_thinking_tokens"] == chosen
    run = tmp_path / "eval.jsonl"
    assert main(["eval", "--settings", str(out), "--limit", "2", "--out", str(run), "--quiet", *CLI_ENGINE_ARGS]) == 0
    assert '"method": "budget"' in run.read_text()

    # a bound no setting can meet on 8 problems: said in one line, nothing written
    none = tmp_path / "none.yaml"
    assert main([*common, "--max-loss", "0.001", "--delta", "0.05", "--out", str(none)]) == 1
    assert "no value of max_thinking_tokens qualifies" in capsys.readouterr().out and not none.exists()


@pytest.mark.slow
def test_settings_file_sets_the_default_method_of_serve(tmp_path) -> None:
    """`reasonexit serve --settings F` as a user starts it: requests naming no method run F's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from conftest import free_port
    from openai import APIConnectionError, OpenAI

    path = write_settings(tmp_path / "b.yaml", "budget", {"max_thinking_tokens": 8}, {"model": "testbed"})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "REASONEXIT_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reasonexit.cli", "serve", "--settings", str(path), "--port", str(port),
         "--dtype", "float32", "--max-model-len", "2048"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 300
        while True:  # until it listens and the engine is up
            try:
                models = client.models.list()
                if httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok":
                    break
            except (httpx.HTTPError, APIConnectionError):
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start within 300 s"
            time.sleep(1)
        resp = client.chat.completions.create(
            model=models.data[0].id, messages=[{"role": "user", "content": "Tom has 3 apples and buys 4. How many?"}],
            max_tokens=256,
        )  # fmt: skip
        usage = resp.usage.model_extra
        assert usage["exit_reason"] == "budget"  # the file's budget, not the default vanilla
        assert len(resp.choices[0].message.model_extra["reasoning_content"]) < 80
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
