"""Per-step rules under the GPU build's conditions, reproduced on CPU with vLLM's own objects.

* V1 runner with async scheduling (the GPU default): vLLM's real ``InputBatch`` drives the V1
  adapter, with the ``-1`` placeholders the runner appends for the token in flight and the repair
  (``update_async_output_token_ids``) it makes just before sampling.
* Model Runner V2: vLLM's real ``RequestState`` and ``Sampler`` (their pinned-memory buffers
  fall back to plain CPU memory when vLLM is told UVA is unavailable), with the device tensors
  swapped for tensors that count every read the host makes of them.
* Speculative decoding: an ngram speculative config (no draft model), built as vLLM builds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch

from reasonexit import step_rules
from reasonexit.engine import DEFAULT_MODEL, EngineConfig, EngineSession
from reasonexit.errors import UserError
from reasonexit.step_rules.budget import BudgetRule, budget_args
from reasonexit.step_rules.vllm_v1 import ThinkingBudgetV1
from reasonexit.step_rules.vllm_v2 import ThinkingBudgetV2

VOCAB = 32
START, END, LEAD, FILL = 5, 6, 7, 9  # <think>, </think>, the answer lead-in, any other token
FORCED = [END, LEAD, LEAD]


def _params(budget: int, in_thinking: bool) -> SamplingParams:
    return SamplingParams(temperature=0.0, extra_args=budget_args(budget, [START], [END], FORCED, in_thinking))


def _forced(logits: torch.Tensor) -> int | None:
    """The one token a row allows, or None when the row was left alone."""
    finite = torch.isfinite(logits).nonzero().flatten().tolist()
    return finite[0] if len(finite) == 1 else None


def _expected(params: SamplingParams, model: Sequence[int]) -> dict[int, int]:
    """Where the plain rule forces, on the completion it produces (the model's tokens unless forced)."""
    rule, out, forced = BudgetRule.for_params(params), [], {}
    for tok in model:
        f = rule.step(out)
        if f is not None:
            forced[len(out)] = f
        out.append(tok if f is None else f)
    return forced


# (budget, thinking opened by the prompt, the model's own tokens)
CASES = {
    "closes before the budget": (5, True, [FILL, FILL, FILL, END, FILL, FILL, FILL, FILL, FILL, FILL]),
    "opens thinking itself": (3, False, [FILL, START, *[FILL] * 10]),
    "runs past the budget": (4, True, [FILL] * 10),
}


# ---------------------------------------------------------------- V1 runner, async scheduling
def _replay_v1(params: SamplingParams, model: Sequence[int], async_scheduling: bool) -> dict[int, int]:
    """Run one request through vLLM's InputBatch and the V1 adapter, step by step as the runner does."""
    proc = ThinkingBudgetV1(None, torch.device("cpu"), False)
    batch = InputBatch(
        max_num_reqs=4,
        max_model_len=64,
        max_num_batched_tokens=64,
        device=torch.device("cpu"),
        vocab_size=VOCAB,
        block_sizes=[16],
        max_num_blocks_per_req=[4],
        logitsprocs=LogitsProcessors([proc]),
        logitsprocs_need_output_token_ids=True,  # what GPUModelRunner sets when custom processors exist
    )
    req = CachedRequestState(
        req_id="r",
        prompt_token_ids=[1, 2, 3],
        mm_features=[],
        sampling_params=params,
        generator=None,
        block_ids=([0],),
        num_computed_tokens=0,
        output_token_ids=[],
    )
    batch.add_request(req)
    copied = SimpleNamespace(synchronize=lambda: None)  # the device-to-host copy of sampled ids is done
    forced: dict[int, int] = {}
    for t, own in enumerate(model):
        batch.refresh_metadata()  # execute_model -> _update_states: processors' update_state
        batch.update_async_output_token_ids()  # sample_tokens -> _sample: placeholders filled in
        (logits,) = [proc.apply(torch.zeros(1, VOCAB))]
        f = _forced(logits[0])
        if f is not None:
            forced[t] = f
        sampled = own if f is None else f
        if async_scheduling:  # the runner knows only that a token is in flight
            req.output_token_ids.append(-1)
            batch.prev_req_id_to_index = {"r": 0}
            batch.set_async_sampled_token_ids(torch.tensor([[sampled]]), copied)
        else:
            req.output_token_ids.append(sampled)
    return forced


@pytest.mark.parametrize("case", CASES)
def test_v1_adapter_forces_at_the_same_position_under_async_scheduling(case):
    budget, in_thinking, model = CASES[case]
    params = _params(budget, in_thinking)
    want = _expected(params, model)
    assert _replay_v1(params, model, async_scheduling=False) == want
    assert _replay_v1(params, model, async_scheduling=True) == want
    if case == "closes before the budget":
        assert want == {}
    else:
        assert want  # each of the other cases forces


# ---------------------------------------------------------------- Model Runner V2, device reads
class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for a device tensor: counts each time the host reads its values."""

    reads: ClassVar[int] = 0
    _READS: ClassVar[set[Callable[..., Any]]] = {
        torch.Tensor.tolist,
        torch.Tensor.item,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__index__,
        torch.Tensor.__float__,
        torch.Tensor.__array__,
    }

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206 - torch's protocol
        if func in cls._READS:
            DeviceTensor.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _v2_runner(max_num_reqs: int = 8) -> tuple[Any, Any, ThinkingBudgetV2]:
    """vLLM's RequestState and Sampler with the budget adapter, as GPUModelRunner V2 builds them.

    Pinned memory cannot be allocated here, so vLLM is told UVA is unavailable and uses its own
    fallback buffers; the device tensors the host may only reach through a copy (``.gpu`` of
    ``all_token_ids`` and ``total_len``, which have no host mirror) are made counting tensors.
    """
    import vllm.v1.worker.gpu.buffer_utils as buffer_utils
    from vllm.config import VllmConfig
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
    from vllm.v1.worker.gpu.sample.sampler import Sampler
    from vllm.v1.worker.gpu.states import RequestState

    with mock.patch.object(buffer_utils, "is_uva_available", lambda: False):
        states = RequestState(max_num_reqs, 128, 128, 0, VOCAB, torch.device("cpu"))
        config = VllmConfig()
        (proc,) = build_custom_logits_processors(config, states, False, step_rules.processors_for(["budget"], True))
        sampler = Sampler(config, max_num_reqs, VOCAB, torch.device("cpu"), states, custom_logits_processors=[proc])
    for buf in (states.all_token_ids, states.total_len):
        buf.gpu = buf.gpu.as_subclass(DeviceTensor)
    assert not hasattr(states.all_token_ids, "np") and not hasattr(states.total_len, "np")
    return states, sampler, proc


class V2Run:
    """Per step of :func:`_run_v2`: host reads of device tensors, whether a rule was active, and
    whether vLLM's sampler would run its logits stages (and fp32 copy) for the batch."""

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.active: list[bool] = []
        self.processing: list[bool] = []
        self.forced: dict[int, dict[int, int]] = {}


def _run_v2(
    reqs: dict[int, tuple[SamplingParams, list[int]]], prompt: Sequence[int] = (1, 2, 3, 4)
) -> tuple[Any, V2Run]:
    """Decode ``reqs`` (slot -> params, the model's own tokens) through vLLM's V2 Sampler and the adapter."""
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    states, sampler, proc = _v2_runner()
    for slot, (params, _) in reqs.items():
        sampler.add_request(slot, params)  # vLLM's Sampler asks every processor, then sets its flag
        states.prompt_len.np[slot] = states.prefill_len.np[slot] = len(prompt)
        states.all_token_ids.gpu[slot, : len(prompt)] = torch.tensor(prompt, dtype=torch.int32)
        states.total_len.gpu[slot] = len(prompt)
    run = V2Run()
    run.forced = {slot: {} for slot in reqs}
    outputs: dict[int, list[int]] = {slot: [] for slot in reqs}
    slots = np.array(list(reqs))
    for _ in range(max(len(model) for _, model in reqs.values())):
        live = slots[[len(outputs[s]) < len(reqs[s][1]) for s in slots]]  # finished requests leave
        run.processing.append(bool(np.any(sampler.needs_logits_processing[live])))
        run.active.append(any(slot in proc.states for slot in live.tolist()))
        seq_lens = np.array([len(prompt) + len(outputs[s]) for s in live], dtype=np.int32)
        ctx = LogitsContext(
            expanded_idx_mapping=torch.tensor(live),
            idx_mapping=torch.tensor(live),
            idx_mapping_np=live,
            expanded_local_pos=torch.zeros(len(live), dtype=torch.int64),
            input_ids=torch.zeros(len(live), dtype=torch.int64),
            pos=torch.tensor(seq_lens - 1),
            seq_lens_upper_bound_np=seq_lens,
        )
        before = DeviceTensor.reads
        logits = proc.apply(torch.zeros(len(live), VOCAB), ctx)
        run.reads.append(DeviceTensor.reads - before)
        for row, slot in enumerate(live.tolist()):
            f = _forced(logits[row])
            out = outputs[slot]
            if f is not None:
                run.forced[slot][len(out)] = f
            tok = reqs[slot][1][len(out)] if f is None else f
            # what the runner's post_update kernel does on the device after sampling
            states.all_token_ids.gpu[slot, len(prompt) + len(out)] = tok
            states.total_len.gpu[slot] += 1
            out.append(tok)
    return sampler, run


def test_v2_adapter_reads_the_device_at_most_once_per_step_and_stops_processing_when_done():
    # three requests with the rule (one per case), and slot 6 without it
    reqs = {slot: (_params(*CASES[case][:2]), CASES[case][2]) for slot, case in zip((3, 0, 5), CASES, strict=True)}
    reqs[6] = (SamplingParams(temperature=0.0), [FILL] * 12)
    sampler, run = _run_v2(reqs)
    for slot, (params, model) in reqs.items():
        assert run.forced[slot] == (_expected(params, model) if slot != 6 else {}), slot
    # at most one small read while some rule is active, none when none is
    assert all(n <= int(a) for n, a in zip(run.reads, run.active, strict=True)), (run.reads, run.active)
    assert max(run.reads) == 1 and run.active[0] and not run.active[-1]
    # and vLLM's sampler stops its logits stages (and its fp32 copy) once every rule is done
    assert run.processing[0] and not run.processing[-1], run.processing
    assert not sampler.needs_logits_processing[[3, 0, 5, 6]].any()
    logits = torch.zeros(4, VOCAB, dtype=torch.bfloat16)
    live = np.array([3, 0, 5, 6])
    assert sampler.apply_sampling_params(logits, None, None, live, None, None, None, None) is logits


def test_v2_processing_flag_is_kept_for_requests_that_need_it_for_something_else():
    sampled = SamplingParams(temperature=0.7, extra_args=_params(0, True).extra_args)
    sampler, run = _run_v2({2: (sampled, [FILL] * 6), 3: (_params(0, True), [FILL] * 6)})
    assert run.forced[2] == run.forced[3] == dict(enumerate(FORCED))
    assert not run.active[-1]
    assert sampler.needs_logits_processing[2]  # its temperature still needs the sampler's stages
    assert not sampler.needs_logits_processing[3]


def test_v2_adapter_leaves_speculative_rows_alone_instead_of_raising(caplog):
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    # an earlier CLI test in this process may have set the reasonexit loggers to errors (--quiet)
    caplog.set_level(logging.WARNING, logger="reasonexit.step_rules.vllm_v2")
    states, sampler, proc = _v2_runner()
    sampler.add_request(1, _params(0, True))
    idx = np.array([1])
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor([1, 1, 1]),
        idx_mapping=torch.tensor(idx),
        idx_mapping_np=idx,
        expanded_local_pos=torch.arange(3),
        input_ids=torch.zeros(3, dtype=torch.int64),
        pos=torch.arange(3),
        seq_lens_upper_bound_np=np.array([6], dtype=np.int32),
    )
    for _ in range(2):
        logits = torch.zeros(3, VOCAB)
        assert torch.equal(proc.apply(logits, ctx), torch.zeros(3, VOCAB))
    assert sum("speculative decoding" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- speculative decoding at start
NGRAM = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 2}


def test_speculative_config_with_a_rule_is_refused_in_one_line():
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = AsyncEngineArgs(model=str(DEFAULT_MODEL), max_model_len=512, speculative_config=NGRAM)
    config = args.create_engine_config()
    assert config.speculative_config is not None
    with pytest.raises(UserError) as err:
        step_rules.check_engine_supports(config, ["budget"])
    assert "\n" not in str(err.value) and "speculative decoding" in str(err.value) and "budget" in str(err.value)
    step_rules.check_engine_supports(config, [])  # no rule: vLLM's own business
    plain = AsyncEngineArgs(model=str(DEFAULT_MODEL), max_model_len=512).create_engine_config()
    step_rules.check_engine_supports(plain, ["budget"])


def test_engine_start_with_speculative_decoding_and_a_rule_stops_with_the_line():
    config = EngineConfig(
        model=DEFAULT_MODEL,
        dtype="float32",
        max_model_len=512,
        step_rules=("budget",),
        engine_args={"speculative_config": NGRAM},
    )
    session = EngineSession(config)
    try:
        with pytest.raises(UserError, match="cannot run with speculative decoding"):
            session.start()
        assert not session.started
    finally:
        session.close()
