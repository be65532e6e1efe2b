"""Per-step token rules as vLLM v1 logits processors.

These classes are loaded by the engine core process (by their qualified names, see
:data:`ENGINE_LOGITS_PROCESSORS`) and are switched on per request through
``SamplingParams.extra_args``; requests that do not ask for them pay nothing.

:class:`ThinkingBudgetProcessor` implements budget forcing: once a request has written its
budget of thinking tokens without closing the thinking block, it forces the end-of-thinking
marker followed by an answer lead-in, one token per step, then lets the model continue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

#: ``extra_args`` key that switches budget forcing on for one request.
BUDGET_KEY = "reasonexit_budget"

#: Logits processors every engine session registers (fully-qualified class names).
ENGINE_LOGITS_PROCESSORS = ["reasonexit.logits_processors:ThinkingBudgetProcessor"]


def budget_args(
    budget: int, start_ids: list[int], end_ids: list[int], forced_ids: list[int], in_thinking: bool
) -> dict[str, Any]:
    """The ``extra_args`` entry for a request with a hard thinking budget.

    ``in_thinking`` says the prompt already opened the thinking block; otherwise thinking is
    counted from the first ``start_ids`` the model writes. ``forced_ids`` is the end marker plus
    the answer lead-in, forced once the budget is spent.
    """
    return {
        BUDGET_KEY: {
            "budget": int(budget),
            "start_ids": list(start_ids),
            "end_ids": list(end_ids),
            "forced_ids": list(forced_ids),
            "in_thinking": bool(in_thinking),
        }
    }


@dataclass
class _BudgetState:
    budget: int
    start_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    forced_ids: tuple[int, ...]
    output: list[int]  # live reference to the request's output token ids
    think_from: int | None  # index in output where thinking began, None until it begins
    scanned: int = 0  # output tokens already scanned for markers
    forced_from: int | None = None  # index in output where forcing began
    done: bool = False

    def next_forced(self) -> int | None:
        """The token to force at this step, or None (also marks the state done when finished)."""
        if self.done:
            return None
        out = self.output
        if self.forced_from is not None:
            k = len(out) - self.forced_from
            if k < len(self.forced_ids):
                return self.forced_ids[k]
            self.done = True
            return None
        if self.think_from is None:
            pos = _find(out, self.start_ids, self.scanned)
            if pos < 0:
                self.scanned = max(0, len(out) - len(self.start_ids) + 1)
                return None
            self.think_from = self.scanned = pos + len(self.start_ids)
        if _find(out, self.end_ids, self.scanned) >= 0:
            self.done = True  # the model closed thinking by itself
            return None
        self.scanned = max(self.think_from, len(out) - len(self.end_ids) + 1)
        if len(out) - self.think_from >= self.budget:
            self.forced_from = len(out)
            return self.forced_ids[0]
        return None


def _find(seq: list[int], sub: tuple[int, ...], start: int) -> int:
    m = len(sub)
    for i in range(max(start, 0), len(seq) - m + 1):
        if seq[i] == sub[0] and tuple(seq[i : i + m]) == sub:
            return i
    return -1


class ThinkingBudgetProcessor(LogitsProcessor):
    """Force the end of thinking (and an answer lead-in) once a thinking budget is spent."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.states: dict[int, _BudgetState] = {}
        self.rows: list[int] = []
        self.tokens: list[int] = []

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed budget arguments at the engine boundary."""
        args = (sampling_params.extra_args or {}).get(BUDGET_KEY)
        if args is None:
            return
        if int(args.get("budget", -1)) < 0 or not args.get("end_ids"):
            raise ValueError(f"{BUDGET_KEY} needs a budget >= 0 and end_ids")

    def is_argmax_invariant(self) -> bool:
        """Forcing a token changes the argmax."""
        return False

    @staticmethod
    def _new_state(params: SamplingParams, output: list[int]) -> _BudgetState | None:
        args = (params.extra_args or {}).get(BUDGET_KEY)
        if args is None:
            return None
        return _BudgetState(
            budget=int(args["budget"]),
            start_ids=tuple(args.get("start_ids") or ()),
            end_ids=tuple(args["end_ids"]),
            forced_ids=tuple(args.get("forced_ids") or args["end_ids"]),
            output=output,
            think_from=0 if args.get("in_thinking", True) else None,
        )

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track requests entering, leaving and moving in the batch; pick this step's forced tokens."""
        if batch_update is not None:
            for index in batch_update.removed:
                self.states.pop(index, None)
            for index, params, _prompt, output in batch_update.added:
                state = self._new_state(params, output)
                if state is None:
                    self.states.pop(index, None)
                else:
                    self.states[index] = state
            for a, b, direction in batch_update.moved:
                sa = self.states.pop(a, None)
                sb = self.states.pop(b, None)
                if sa is not None:
                    self.states[b] = sa
                if sb is not None and direction == MoveDirectionality.SWAP:
                    self.states[a] = sb
        self.rows, self.tokens = [], []
        for index, state in list(self.states.items()):
            tok = state.next_forced()
            if tok is not None:
                self.rows.append(index)
                self.tokens.append(tok)
            elif state.done:
                del self.states[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set every logit but the forced token's to -inf in forced rows."""
        if not self.rows:
            return logits
        rows = torch.tensor(self.rows, dtype=torch.long, device=logits.device)
        toks = torch.tensor(self.tokens, dtype=torch.long, device=logits.device)
        logits[rows] = float("-inf")
        logits[rows, toks] = 0.0
        return logits
