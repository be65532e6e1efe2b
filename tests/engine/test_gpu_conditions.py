"""What the CUDA build of vLLM 0.32 does that the CPU build cannot show, reproduced on CPU.

The GPU build forks its engine core when CUDA is not initialised in the parent, gives each engine a
share of the device's memory, sizes a step's token budget by device and entrypoint, and runs
Model Runner V2. Each test builds the condition here: a fresh interpreter that records every CUDA
probe, a platform patched to a GPU, vLLM's config built as the CUDA build builds it, and engine
start stopped just before ``AsyncLLM`` so that what it would register is checked by vLLM's own
V2 loader.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TEST_MODEL
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs

from reasonexit import step_rules
from reasonexit.engine import EngineConfig, EngineSession
from reasonexit.engine import platform as device
from reasonexit.engine.platform import shutdown_env
from reasonexit.errors import EngineStartError, UserError
from reasonexit.methods import make_method
from reasonexit.methods.flashthink import verifier_engine_config
from reasonexit.methods.verifiers import TESTBED_VERIFIER
from reasonexit.step_rules.budget import budget_args

GiB = 1 << 30

# A fresh interpreter as a user's script starts: vLLM not imported yet. Every CUDA probe records
# whether torch would answer it from NVML (PYTORCH_NVML_BASED_CUDA_CHECK=1) or by initialising CUDA.
_PROBE = r"""
import json, os, sys
import torch
calls = []
real = torch.cuda.is_available
def probe():
    calls.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))
    return real()
torch.cuda.is_available = probe
assert "vllm" not in sys.modules
from reasonexit.engine import EngineConfig, get_session
from reasonexit.methods import make_method, method_names
from reasonexit.training.config import load_recipe
from reasonexit.training.trainer import grpo_config_kwargs
# as scripts/gpu_check.py does without --reasoning-parser: methods first, then the session
methods = [make_method(name) for name in method_names()]
session = get_session(EngineConfig(model=sys.argv[1]))
kwargs = grpo_config_kwargs(load_recipe(sys.argv[2]), "/tmp/unused")
print(json.dumps({"calls": calls, "initialized": torch.cuda.is_initialized()}))
"""


def test_no_cuda_probe_initialises_cuda_before_the_engine_starts():
    """vLLM's CUDA build forks its engine unless CUDA is initialised in the parent; a probe that
    initialises it (torch's check without NVML) makes the forked engine core fail."""
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    recipe = ROOT / "rl" / "tiny_sgrpo.yaml"
    assert recipe.is_file(), sorted(p.name for p in (ROOT / "rl").glob("*.yaml"))
    proc = subprocess.run([sys.executable, "-c", _PROBE, TEST_MODEL, str(recipe)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(v == "1" for v in seen["calls"]), f"CUDA probed without NVML: {seen['calls']}"
    assert not seen["initialized"]


@pytest.fixture
def gpu(monkeypatch):
    """reasonexit sees a GPU platform; no second engine reserved a share yet."""
    monkeypatch.setattr(device, "on_gpu", lambda: True)
    monkeypatch.setattr(device, "_SECOND_ENGINES", [])


@pytest.fixture
def new_session():
    """Sessions built here (a tokenizer and a loop each, no engine), closed after the test."""
    made = []

    def make(**kw) -> EngineSession:
        s = EngineSession(EngineConfig(model=TEST_MODEL, dtype="float32", **kw))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_flashthink_verifier_and_main_engine_shares_fit_on_one_gpu(gpu, new_session):
    """The verifier engine and the main engine on one GPU: vLLM refuses a share larger than the
    memory left free, so 0.9 + 0.2 could never start; the main engine's default makes room."""
    make_method("flashthink", {"verifier": "trained"})  # built before the engine, as runs do
    main = new_session()
    args, _ = main.vllm_args(on_gpu=True)
    main.gpu_memory_utilization = args["gpu_memory_utilization"]
    params = make_method("flashthink", {"verifier": "trained"}).params
    verifier_cfg = verifier_engine_config(main, params, TESTBED_VERIFIER)
    verifier = EngineSession(verifier_cfg)
    try:
        vargs, venv = verifier.vllm_args(on_gpu=True)
    finally:
        verifier.close()
    assert (args["gpu_memory_utilization"], vargs["gpu_memory_utilization"]) == (pytest.approx(0.7), 0.2)
    assert args["gpu_memory_utilization"] + vargs["gpu_memory_utilization"] <= 1.0
    assert "CUDA_VISIBLE_DEVICES" not in venv
    AsyncEngineArgs(**args), AsyncEngineArgs(**vargs)  # both are vLLM engine arguments

    # the user's own main share that leaves no room: one line at start, before vLLM
    with pytest.raises(UserError) as err:
        new_session(gpu_memory_utilization=0.9).vllm_args(on_gpu=True)
    assert "GPU memory shares do not fit" in str(err.value) and "\n" not in str(err.value)
    main.gpu_memory_utilization = 0.9  # a main engine already running with 0.9
    with pytest.raises(UserError, match="GPU memory shares do not fit"):
        verifier_engine_config(main, params, TESTBED_VERIFIER)


def test_flashthink_verifier_on_another_gpu_keeps_the_main_share(gpu, new_session):
    params = make_method("flashthink", {"verifier": "trained", "verifier_gpu_devices": "1"}).params
    main = new_session()
    args, env = main.vllm_args(on_gpu=True)
    assert args["gpu_memory_utilization"] == 0.9 and "CUDA_VISIBLE_DEVICES" not in env
    main.gpu_memory_utilization = 0.9
    verifier = EngineSession(verifier_engine_config(main, params, TESTBED_VERIFIER))
    try:
        vargs, venv = verifier.vllm_args(on_gpu=True)
    finally:
        verifier.close()
    assert vargs["gpu_memory_utilization"] == 0.2 and venv["CUDA_VISIBLE_DEVICES"] == "1"


def test_self_verifier_and_other_methods_leave_the_default_share(gpu, new_session):
    make_method("flashthink", {"verifier": "self"})
    make_method("deer")
    args, _ = new_session().vllm_args(on_gpu=True)
    assert args["gpu_memory_utilization"] == 0.9


def test_shutdown_grace_is_vllms_on_gpu():
    """CUDA/NCCL teardown needs more than the 1 s that suits CPU workers."""
    assert shutdown_env(on_gpu=False) == {"VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1"}
    assert shutdown_env(on_gpu=True) == {}


class _Stop(Exception):
    pass


def _built_config(session: EngineSession, monkeypatch) -> VllmConfig:
    """Run the session's engine start up to ``AsyncLLM`` and return the config it would start with."""
    built: list[VllmConfig] = []

    def stop(vllm_config, *args, **kwargs):
        built.append(vllm_config)
        raise _Stop

    monkeypatch.setattr(AsyncLLM, "from_vllm_config", stop)
    with pytest.raises(EngineStartError) as err:
        asyncio.run(session._start_engine())
    assert built, err.value
    return built[0]


def _h100(monkeypatch) -> None:
    """vLLM's batch defaults read the device: answer as an 80 GB H100 would, for that call only."""
    from vllm.platforms import current_platform

    real = EngineArgs.get_batch_defaults.__func__

    def as_h100(cls, world_size):
        with monkeypatch.context() as m:
            m.setattr(current_platform, "get_device_total_memory", lambda device_id=0: 80 * GiB)
            m.setattr(current_platform, "get_device_name", lambda device_id=0: "NVIDIA H100 80GB HBM3")
            m.setattr(current_platform, "is_cpu", lambda: False)
            return real(cls, world_size)

    monkeypatch.setattr(EngineArgs, "get_batch_defaults", classmethod(as_h100))


@pytest.mark.parametrize("serving,usage,tokens", [(True, UsageContext.OPENAI_API_SERVER, 8192),
                                                  (False, UsageContext.LLM_CLASS, 16384)])  # fmt: skip
def test_step_token_budget_is_vllms_own_for_the_entrypoint(gpu, new_session, monkeypatch, serving, usage, tokens):
    """On an H100, `vllm serve` batches 8192 tokens a step and vLLM's LLM class 16384; with no
    usage context the engine fell back to 2048."""
    _h100(monkeypatch)
    session = new_session(max_model_len=2048)
    session.serving = serving
    ours = _built_config(session, monkeypatch).scheduler_config
    args, _ = session.vllm_args(on_gpu=True)
    theirs = AsyncEngineArgs(**args).create_engine_config(usage_context=usage).scheduler_config
    assert (ours.max_num_batched_tokens, ours.max_num_seqs) == (theirs.max_num_batched_tokens, theirs.max_num_seqs)
    assert ours.max_num_batched_tokens == tokens


def test_v2_engine_start_registers_what_vllms_v2_loader_loads(new_session, monkeypatch):
    """The CUDA build's default runner: engine start registers the V2 adapters, which vLLM's V2
    loader loads as V2 processors and whose validator accepts the rule's arguments."""
    real = AsyncEngineArgs.create_engine_config

    def as_on_gpu(self, *args, **kwargs):
        # vLLM's CPU platform rejects V2 while it builds the config; the CUDA build chooses V2 there
        config = real(self, *args, **kwargs)
        monkeypatch.setattr(VllmConfig, "use_v2_model_runner", property(lambda self: True))
        return config

    monkeypatch.setattr(AsyncEngineArgs, "create_engine_config", as_on_gpu)
    session = new_session(max_model_len=2048, step_rules=("budget",))
    config = _built_config(session, monkeypatch)
    names = config.model_config.logits_processors
    assert names == step_rules.processors_for(["budget"], v2_runner=True)
    assert all(issubclass(c, V2LogitsProcessor) for c in _load_v2_logitsprocs(names))
    m = session.markers
    validate = build_custom_logits_processors_params_validator(tuple(names))
    validate(SamplingParams(extra_args=budget_args(8, m.start_ids, m.end_ids, [*m.end_ids], m.opened_by_template)))
