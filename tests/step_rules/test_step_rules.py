"""Per-step rules on both of vLLM's model runners, checked against vLLM's own loaders.

The CPU build runs the V1 model runner, so the engine tests exercise the V1 adapters. Model
Runner V2 (the CUDA build's default) cannot run here, but its loader and params validator are
plain Python: the V2 adapters are loaded by vLLM's V2 loader and driven through the V2 interface
types on CPU tensors, replaying a real V1 engine run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor import validate_logits_processors_parameters
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    build_custom_logits_processors,
    build_custom_logits_processors_params_validator,
)
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
from vllm.v1.worker.gpu.states import RequestState

import reasonexit
from reasonexit import generate, step_rules
from reasonexit.data.prompts import format_prompt
from reasonexit.data.synthetic import generate_problems
from reasonexit.step_rules.budget import budget_args
from reasonexit.step_rules.vllm_v1 import V1RuleProcessor
from reasonexit.step_rules.vllm_v2 import V2RuleProcessor

PROMPTS = [format_prompt(p["problem"]) for p in generate_problems(4, split="test", seed=123)]


def _budget_params(session, budget: int, lead_in: str = "\n\n") -> SamplingParams:
    m = session.markers
    forced = [*m.end_ids, *session.encode(lead_in)]
    return SamplingParams(extra_args=budget_args(budget, m.start_ids, m.end_ids, forced, m.opened_by_template))


def test_v2_loader_and_validator_accept_what_is_registered_for_v2(session):
    v2 = step_rules.processors_for(step_rules.RULES, v2_runner=True)
    validate = build_custom_logits_processors_params_validator(tuple(v2))
    validate(_budget_params(session, 8))  # well-formed arguments pass
    with pytest.raises(VLLMValidationError):
        validate(SamplingParams(extra_args={"reasonexit_budget": {"budget": -1}}))
    # and V2 rejects the V1 classes, which is what broke GPU engines before
    with pytest.raises(ValueError, match="not a subclass"):
        build_custom_logits_processors_params_validator(tuple(step_rules.processors_for(["budget"], v2_runner=False)))


def test_v1_loader_accepts_what_is_registered_for_v1(session):
    v1 = step_rules.processors_for(step_rules.RULES, v2_runner=False)
    validate_logits_processors_parameters(v1, _budget_params(session, 8))
    with pytest.raises(VLLMValidationError):
        validate_logits_processors_parameters(v1, SamplingParams(extra_args={"reasonexit_budget": {"budget": 3}}))


def test_engine_registers_only_the_adapters_of_its_runner(session):
    assert session.runner == "v1"  # the CPU build has no Triton CPU backend, so no Model Runner V2
    registered = session.engine.model_config.logits_processors
    assert registered == step_rules.processors_for(session.step_rules, v2_runner=False)
    assert "budget" in session.step_rules


def test_every_v1_processor_has_a_v2_counterpart():
    """Guard: no module of reasonexit may define a V1-interface processor the V2 runner would lack."""
    found_v1, found_v2 = set(), set()
    for mod in pkgutil.walk_packages(reasonexit.__path__, "reasonexit."):
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ != module.__name__ or obj in (V1RuleProcessor, V2RuleProcessor):
                continue  # defined elsewhere, or the generic adapter bases (no rule of their own)
            fqcn = f"{obj.__module__}:{obj.__qualname__}"
            if issubclass(obj, V1LogitsProcessor):
                found_v1.add(fqcn)
            if issubclass(obj, V2LogitsProcessor):
                found_v2.add(fqcn)
    pairs = {pair for _, pair in step_rules.RULES.items()}
    assert found_v1 == {v1 for v1, _ in pairs}, "a V1 processor outside the rule registry"
    assert found_v2 == {v2 for _, v2 in pairs}, "a V2 processor outside the rule registry"
    assert found_v1 and found_v2


def test_v2_adapter_forces_what_the_v1_adapter_forced_on_the_engine(session):
    budget = 12
    res = generate(PROMPTS[:1], "budget", session=session, max_tokens=64, max_thinking_tokens=budget, impl="reasonexit")
    prompt = session.chat_prompt_ids(PROMPTS[0])
    out = res[0].token_ids
    forced = [*session.markers.end_ids, *session.encode("\n\n")]
    assert out[budget : budget + len(forced)] == forced  # what the V1 adapter forced in the real engine

    vocab = len(session.tokenizer)
    # vLLM's RequestState cannot be built here: its UVA buffers ask for pinned memory, which the CPU
    # build reports as available (is_uva_available) but cannot allocate. So the model runner's
    # per-slot buffers are given as plain CPU tensors with the same attributes (``.gpu`` device
    # tensor, ``.np`` host view) and everything else is vLLM's own: its V2 loader builds the
    # processor (through LogitsProcRequestState.from_request_state) and its LogitsContext drives it.
    with pytest.raises(RuntimeError):
        RequestState(4, 256, 256, 0, vocab, torch.device("cpu"))

    def buffer(*shape: int) -> SimpleNamespace:
        t = torch.zeros(*shape, dtype=torch.int32)
        return SimpleNamespace(gpu=t, cpu=t, np=t.numpy())

    states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=4,
        vocab_size=vocab,
        all_token_ids=buffer(4, 256),
        prompt_len=buffer(4),
        prefill_len=buffer(4),
        total_len=buffer(4),
    )
    (proc,) = build_custom_logits_processors(
        session.engine.vllm_config, states, False, step_rules.processors_for(["budget"], v2_runner=True)
    )
    slot, other = 2, 0  # the budgeted request in slot 2, an unbudgeted one in slot 0
    assert proc.add_request(slot, _budget_params(session, budget)) is True
    assert proc.add_request(other, SamplingParams()) is False
    proc.apply_staged_writes()
    states.prompt_len.np[slot] = len(prompt)
    states.all_token_ids.gpu[slot, : len(prompt)] = torch.tensor(prompt, dtype=torch.int32)
    idx = np.array([other, slot])
    seen: dict[int, int] = {}
    gen = torch.Generator().manual_seed(0)
    for t in range(len(out)):
        states.total_len.gpu[slot] = len(prompt) + t  # committed tokens: prompt + out[:t]
        if t:
            states.all_token_ids.gpu[slot, len(prompt) + t - 1] = out[t - 1]
        logits = torch.randn(2, vocab, generator=gen)
        before = logits.clone()
        ctx = LogitsContext(
            expanded_idx_mapping=torch.tensor(idx),
            idx_mapping=torch.tensor(idx),
            idx_mapping_np=idx,
            expanded_local_pos=torch.zeros(2, dtype=torch.int64),
            input_ids=torch.zeros(2, dtype=torch.int64),
            pos=torch.zeros(2, dtype=torch.int64),
            seq_lens_upper_bound_np=np.array([1, len(prompt) + t]),
        )
        after = proc.apply(logits, ctx)
        assert torch.equal(after[0], before[0])  # the other request's row is untouched
        finite = torch.isfinite(after[1]).nonzero().flatten().tolist()
        if len(finite) == 1:
            seen[t] = finite[0]
        else:
            assert torch.equal(after[1], before[1])
    assert seen == {budget + i: tok for i, tok in enumerate(forced)}
