"""``scripts/gpu_check.py`` run as a user runs it, and thinking markers taken from vLLM's reasoning parsers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from reasonexit.errors import UserError
from reasonexit.thinking import detect_markers

pytestmark = pytest.mark.slow

# vLLM's own import-time FutureWarnings (torch.distributed.reduce_op in its triton dispatcher): not
# caused by anything reasonexit does, and printed by any program that imports vLLM here.
VLLM_IMPORT_WARNING = re.compile(r"site-packages/(vllm|torch)/.*torch\.distributed\.reduce_op")


def test_gpu_check_runs_every_method_and_no_deprecation():
    """As a GPU owner runs it first: no --reasoning-parser (which imported vLLM early and so hid a
    CUDA probe before the engine start), every method, the rule's cost and the verifier engine."""
    # vLLM logging at WARNING (reasonexit is quiet by default), so a deprecation warning would show
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")} | {"VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dtype", "float32", "--limit", "2", "--max-tokens", "96"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "== model runner v1 (VLLM_USE_V2_MODEL_RUNNER=0)" in out and "model runner: v1" in out
    assert " WARNING " in out  # vLLM's own log is back when the user asks for it (quiet by default)
    assert re.search(r"v1: per-step rule cost: budget \(impl=reasonexit\) decoded \d+ tok/s vs vanilla \d+ tok/s "
                     r"\(x[\d.]+\), same tokens: True", out), out[-3000:]  # fmt: skip
    assert "v1: flashthink verifier: trained on its own engine" in out
    assert "gpu_check: every method ran on v1" in out
    steps = re.search(r"v1: engine steps \(vanilla\): (\d+) for (\d+) tokens; vLLM's statistics saw (\d+)", out)
    assert steps and 0 < int(steps[1]) < int(steps[2]) == int(steps[3])  # 2 problems in flight share steps
    from reasonexit.methods import BUILTIN  # not method_names(): other test modules register test-only methods

    for name in BUILTIN:
        assert re.search(rf"^\| {re.escape(name)} \|", out, re.M), f"no row for {name}"
    assert "| budget (impl=reasonexit) |" in out
    deprecations = [
        line for line in out.splitlines() if "deprecat" in line.lower() and not VLLM_IMPORT_WARNING.search(line)
    ]
    assert not deprecations, deprecations


def test_parser_markers_and_formats_early_exit_cannot_close(session):
    tok = session.tokenizer
    m = detect_markers(tok, reasoning_parser="qwen3")
    assert (m.start, m.end) == ("<think>", "</think>") and m.closable and "qwen3" in m.source
    assert m.end_ids == session.markers.end_ids
    # granite's parser has no start/end span: early exit must refuse, in one line
    g = detect_markers(tok, reasoning_parser="granite")
    assert not g.closable
    for method in ("deer", "budget"):
        with pytest.raises(UserError, match="early exit is not supported for this model's reasoning format"):
            g.require_span(method)
    with pytest.raises(UserError, match=r"unknown --reasoning-parser 'nope'; vLLM's parsers: .*deepseek_r1"):
        detect_markers(tok, reasoning_parser="nope")
