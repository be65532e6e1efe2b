"""``budget``: a hard cap on thinking tokens (budget forcing).

When a trace has written ``max_thinking_tokens`` thinking tokens without closing its thinking
block, the engine-side :class:`~reasonexit.logits_processors.ThinkingBudgetProcessor` forces the
end-of-thinking marker and an answer lead-in, one token per step, and the model then writes its
answer in the same request. This is the baseline every early-exit method is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..logits_processors import budget_args
from ..thinking import split_completion
from .base import Context, Method, Outcome, register


@dataclass
class BudgetParams:
    """``max_thinking_tokens``: the cap; ``lead_in``: text forced after the end-of-thinking marker."""

    max_thinking_tokens: int = 256
    lead_in: str = "\n\n"

    def validate(self) -> None:
        """Reject a negative budget."""
        if self.max_thinking_tokens < 0:
            raise UserError("--max-thinking-tokens must be >= 0")


@register
class Budget(Method):
    """Cap thinking at a fixed number of tokens, then force the answer."""

    name = "budget"
    Params = BudgetParams
    needs_thinking = True

    async def solve(self, ctx: Context) -> Outcome:
        """Generate with the budget processor switched on for this request."""
        session, markers = ctx.session, ctx.session.markers
        if not markers.has_thinking:
            raise UserError("method budget needs a reasoning model: this model has no thinking span")
        forced = [*markers.end_ids, *session.encode(self.params.lead_in)]
        extra = budget_args(
            self.params.max_thinking_tokens,
            list(markers.start_ids),
            list(markers.end_ids),
            forced,
            in_thinking=markers.opened_by_template,
        )
        comp = await session.complete(ctx.prompt_ids, ctx.sampling(extra_args=extra), ctx.usage, ctx.request_id("main"))
        split = split_completion(comp.token_ids, markers)
        hit = split.closed and split.thinking_tokens >= self.params.max_thinking_tokens
        # The exit reason tells why thinking ended; ``finished`` tells whether the answer was completed.
        if hit:
            reason = "budget"
        elif comp.finish_reason == "length":
            reason = "length"
        else:
            reason = "eos"
        return Outcome(comp.token_ids, reason, info={"forced": hit}, finished=comp.finish_reason == "stop")
