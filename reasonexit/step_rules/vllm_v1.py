"""Adapters of :class:`~reasonexit.step_rules.base.StepRule` to vLLM's V1 logits-processor interface.

The V1 model runner (vLLM's CPU build; the GPU build when Model Runner V2 cannot run) tells a
processor which requests entered, left or moved in the persistent batch and hands it a live
reference to each request's output token ids, so the rule reads the output directly.
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
        self.rows: list[int] = []
        self.tokens: list[int] = []

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed rule arguments when the request is admitted."""
        cls.rule.validate_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        """Forcing a token changes the argmax."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow requests entering, leaving and moving in the batch; pick this step's forced tokens."""
        if batch_update is not None:
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
        self.rows, self.tokens = [], []
        for index, (rule, output) in list(self.states.items()):
            tok = rule.step(output)
            if tok is not None:
                self.rows.append(index)
                self.tokens.append(tok)
            elif rule.done:
                del self.states[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Leave only the forced token possible in forced rows."""
        return force_tokens(logits, self.rows, self.tokens)


class ThinkingBudgetV1(V1RuleProcessor):
    """Budget forcing (:class:`~reasonexit.step_rules.budget.BudgetRule`) on the V1 model runner."""

    rule = BudgetRule
