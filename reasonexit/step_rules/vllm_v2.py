"""Adapters of :class:`~reasonexit.step_rules.base.StepRule` to vLLM's Model Runner V2 interface.

Model Runner V2 (the default of vLLM's CUDA build since 0.32) keeps requests in persistent slots
and gives a processor no live output list: committed tokens sit on the device in
``req_states.all_token_ids[slot, :total_len]``, the prompt being the first
``req_states.prompt_len[slot]`` of them. Each step the adapter copies just the tokens a tracked
request committed since the last step (a few ints) and feeds the plain rule; rows of other
requests are never read. Slots are recycled without a removal call, so ``add_request`` resets a
slot's state; on resumption after preemption the state restarts and re-reads the output.

vLLM's own ``thinking_token_budget`` works without host reads; this adapter costs one small
device-to-host copy per step while a request that asked for the rule is in the batch. Speculative
decoding (several logits rows per request) is not supported by these rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from .base import StepRule, force_tokens
from .budget import BudgetRule

if TYPE_CHECKING:
    import torch
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class V2RuleProcessor(LogitsProcessor):
    """A Model Runner V2 logits processor that runs one :class:`StepRule` per request that asks for it."""

    rule: ClassVar[type[StepRule]]

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:
        self.req_states = req_states
        self.states: dict[int, tuple[StepRule, list[int]]] = {}  # slot -> (rule, output ids read so far)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed rule arguments when the request is admitted."""
        cls.rule.validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """(Re)initialise a slot; True when its request asked for the rule."""
        rule = self.rule.for_params(sampling_params)
        if rule is None:
            self.states.pop(req_idx, None)
            return False
        self.states[req_idx] = (rule, [])
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Feed each tracked request's new tokens to its rule and force the tokens the rules ask for."""
        if not self.states:
            return logits
        tracked = [(pos, int(slot)) for pos, slot in enumerate(ctx.idx_mapping_np.tolist()) if int(slot) in self.states]
        if not tracked:
            return logits
        if logits.shape[0] != len(ctx.idx_mapping_np):
            raise RuntimeError("reasonexit per-step rules do not support speculative decoding")
        rs = self.req_states
        slots = [slot for _, slot in tracked]
        totals = rs.total_len.gpu[slots].tolist()  # one small device-to-host copy for all tracked rows
        rows: list[int] = []
        tokens: list[int] = []
        for (pos, slot), total in zip(tracked, totals, strict=True):
            rule, output = self.states[slot]
            start = int(rs.prompt_len.np[slot]) + len(output)
            if total > start:
                output.extend(rs.all_token_ids.gpu[slot, start:total].tolist())
            tok = rule.step(output)
            if tok is not None:
                rows.append(pos)
                tokens.append(tok)
            elif rule.done:
                del self.states[slot]
        return force_tokens(logits, rows, tokens)


class ThinkingBudgetV2(V2RuleProcessor):
    """Budget forcing (:class:`~reasonexit.step_rules.budget.BudgetRule`) on Model Runner V2."""

    rule = BudgetRule
