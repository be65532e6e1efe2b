"""Budget forcing as a plain rule: once thinking has used its budget, force the end marker and a lead-in.

vLLM 0.32 ships a per-request ``thinking_token_budget`` of its own (the ``budget`` method's
``impl="vllm"``, the default). It forces the engine's configured end-of-reasoning string, which is
engine-wide; this rule (``impl="reasonexit"``) forces a per-request sequence instead (the end
marker followed by an answer lead-in of the caller's choice), one token per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..thinking import ThinkingTracker
from .base import StepRule

#: ``extra_args`` key that switches budget forcing on for one request.
BUDGET_KEY = "reasonexit_budget"


def budget_args(
    budget: int, start_ids: Sequence[int], end_ids: Sequence[int], forced_ids: Sequence[int], in_thinking: bool
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


class BudgetRule(StepRule):
    """One request's budget state; thinking is followed by the shared :class:`ThinkingTracker`."""

    key = BUDGET_KEY

    def __init__(
        self,
        budget: int,
        start_ids: Sequence[int],
        end_ids: Sequence[int],
        forced_ids: Sequence[int],
        in_thinking: bool,
    ) -> None:
        self.budget = int(budget)
        self.forced_ids = tuple(forced_ids) or tuple(end_ids)
        self.tracker = ThinkingTracker(start_ids, end_ids, opened=in_thinking)
        self.forced_from: int | None = None  # output index where forcing began
        self.done = False

    @classmethod
    def validate_args(cls, args: Any) -> None:
        """A budget >= 0 and a non-empty end marker."""
        if not isinstance(args, dict) or int(args.get("budget", -1)) < 0 or not args.get("end_ids"):
            raise ValueError(f"{BUDGET_KEY} needs a budget >= 0 and end_ids")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> BudgetRule:
        """The state for a request from its :func:`budget_args` entry."""
        return cls(
            budget=int(args["budget"]),
            start_ids=args.get("start_ids") or (),
            end_ids=args["end_ids"],
            forced_ids=args.get("forced_ids") or args["end_ids"],
            in_thinking=bool(args.get("in_thinking", True)),
        )

    def step(self, output: Sequence[int]) -> int | None:
        """The token to force now, or None (and mark the rule done once it can force no more)."""
        if self.done:
            return None
        if self.forced_from is not None:
            k = len(output) - self.forced_from
            if k < len(self.forced_ids):
                return self.forced_ids[k]
            self.done = True
            return None
        tracker = self.tracker
        end = len(output)
        while end > tracker.n and output[end - 1] < 0:
            end -= 1  # a runner's placeholder for a token in flight: read it once it is filled in
        tracker.feed_many(output[tracker.n : end])  # only the tokens committed since the last step
        if tracker.closed:
            self.done = True  # the model closed thinking by itself
            return None
        if tracker.in_thinking and tracker.thinking_tokens >= self.budget:
            self.forced_from = len(output)
            return self.forced_ids[0]
        return None
