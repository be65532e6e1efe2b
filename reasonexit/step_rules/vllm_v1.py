"""Adapters of :class:`~reasonexit.step_rules.base.StepRule` to vLLM's V1 logits-processor interface.

The V1 model runner (vLLM's CPU build; the GPU build when Model Runner V2 cannot run) tells a
processor which requests entered, left or moved in the persistent batch and hands it a live
reference to each request's output token ids, so the rule reads the output directly.

The rules step in :meth:`~V1RuleProcessor.apply`, not in ``update_state``. With async scheduling
(on by default in the GPU build) the runner appends a ``-1`` placeholder to each output list for
the token still being sampled, and ``update_state`` runs before the placeholder is replaced; the
runner repairs the lists (``InputBatch.update_async_output_token_ids``) just before the sampler
calls ``apply``, because a custom processor makes it keep output token ids for the processors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .base import StepRule, force_tokens
from .budget import BudgetRule

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class V1RuleProcessor(LogitsProcessor):
    """A V1 logits processor that runs one :class:`StepRule` per request that asks for it."""

    rule: ClassVar[type[StepRule]]

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.states: dict[int, tuple[StepRule, list[int]]] = {}  # batch index -> (rule, live output ids)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed rule arguments when the request is admitted."""
        cls.rule.validate_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        """Forcing a token changes the argmax."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow requests entering, leaving and moving in the batch (output lists are not read here)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.states.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            rule = self.rule.for_params(params)
            if rule is None:
                self.states.pop(index, None)
            else:
                self.states[index] = (rule, output)
        for a, b, direction in batch_update.moved:
            sa = self.states.pop(a, None)
            sb = self.states.pop(b, None)
            if sa is not None:
                self.states[b] = sa
            if sb is not None and direction == MoveDirectionality.SWAP:
                self.states[a] = sb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Step each tracked request's rule on its (now final) output; leave only forced tokens possible."""
        if not self.states:
            return logits
        rows: list[int] = []
        tokens: list[int] = []
        for index, (rule, output) in list(self.states.items()):
            tok = rule.step(output)
            if tok is not None:
                rows.append(index)
                tokens.append(tok)
            elif rule.done:
                del self.states[index]
        return force_tokens(logits, rows, tokens)


class ThinkingBudgetV1(V1RuleProcessor):
    """Budget forcing (:class:`~reasonexit.step_rules.budget.BudgetRule`) on the V1 model runner."""

    rule = BudgetRule
