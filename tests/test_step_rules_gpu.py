"""Per-step rules under the GPU build's conditions, reproduced on CPU with vLLM's own objects.

* V1 runner with async scheduling (the GPU default): vLLM's real ``InputBatch`` drives the V1
  adapter, with the ``-1`` placeholders the runner appends for the token in flight and the repair
  (``update_async_output_token_ids``) it makes just before sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import LogitsProcessors
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch

from reasonexit.step_rules.budget import BudgetRule, budget_args
from reasonexit.step_rules.vllm_v1 import ThinkingBudgetV1

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
