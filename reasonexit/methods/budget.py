"""``budget``: a hard cap on thinking tokens (budget forcing).

When a trace has written ``max_thinking_tokens`` thinking tokens without closing its thinking
block, the end-of-thinking marker is forced and the model writes its answer in the same request.
This is the baseline every early-exit method is compared with. Two implementations:

- ``impl="vllm"`` (default): vLLM's per-request ``thinking_token_budget``, which runs on both of
  vLLM's model runners with no custom logits processor. It forces the engine's configured
  end-of-reasoning string (the model's end marker), and the model continues from there.
- ``impl="reasonexit"``: reasonexit's own rule (:mod:`reasonexit.step_rules.budget`, with a V1
  and a V2 adapter), which forces the end marker *and* ``lead_in``, one token per step.

They differ in two ways (``scripts/bench_baselines.py`` reports both side by side): vLLM's also
counts thinking tokens the prompt already holds (a newline after a template-opened ``<think>``
is one), so it forces the marker that many tokens sooner; and only reasonexit's forces a lead-in
after the marker, where vLLM's lets the model write what follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError
from ..options import opt
from ..step_rules.budget import budget_args
from ..thinking import split_completion, thinking_in_prompt
from .base import Context, ExitReason, Method, Outcome, register
from .early_exit import ExitLimits, NoChecks, run_early_exit
from .safety import wants_watch


@dataclass
class BudgetParams:
    """Parameters of the hard thinking budget."""

    max_thinking_tokens: int = opt(256, help="thinking tokens allowed before the end of thinking is forced")
    impl: Literal["vllm", "reasonexit"] = opt(
        "vllm",
        help="vllm: vLLM's thinking_token_budget (both model runners, no custom processor); "
        "reasonexit: reasonexit's per-step rule, which also forces --lead-in",
    )
    lead_in: str = opt("\n\n", help="text forced right after the end-of-thinking marker (--impl reasonexit)")

    def validate(self) -> None:
        """Reject a negative budget."""
        if self.max_thinking_tokens < 0:
            raise UserError("--max-thinking-tokens must be >= 0")
        if self.impl == "vllm" and self.lead_in != "\n\n":
            raise UserError("--lead-in is forced by reasonexit's rule only: add --impl reasonexit")


@register
class Budget(Method):
    """Cap thinking at a fixed number of tokens, then force the answer."""

    name = "budget"
    Params = BudgetParams
    needs_thinking = True

    def step_rules(self) -> tuple[str, ...]:
        """reasonexit's own budget rule, when asked for."""
        return ("budget",) if self.params.impl == "reasonexit" else ()

    async def solve(self, ctx: Context) -> Outcome:
        """Generate with the thinking budget switched on for this request."""
        session, markers = ctx.session, ctx.session.markers
        markers.require_span(self.name)
        budget = self.params.max_thinking_tokens
        dec = ctx.decoding
        if wants_watch(dec) or dec.wrap_up or dec.grace_tokens:
            # the cap as a safety exit: the sentence may finish and a wrap-up precede the end marker
            limits = ExitLimits(max_checks=0, budget_ratio=1.0, mode="sequential", thinking_cap=budget)
            outcome = await run_early_exit(ctx, NoChecks(), limits)
            outcome.info["forced"] = outcome.exit_reason == ExitReason.BUDGET
            return outcome
        cap = budget  # thinking tokens of the completion at which the marker is forced
        if self.params.impl == "vllm":
            params = ctx.output_sampling(thinking_token_budget=budget)
            # vLLM counts the thinking the prompt already holds against the budget too
            cap = max(0, budget - thinking_in_prompt(ctx.prompt_ids, markers))
        else:
            session.require_rule("budget", self.name)
            forced = [*markers.end_ids, *session.encode(self.params.lead_in)]
            extra = budget_args(
                budget, list(markers.start_ids), list(markers.end_ids), forced, in_thinking=markers.opened_by_template
            )
            params = ctx.output_sampling(extra_args=extra)
        comp = await ctx.complete(ctx.prompt_ids, params, ctx.request_id("main"))
        split = split_completion(comp.token_ids, markers)
        hit = split.closed and split.thinking_tokens >= cap
        # The exit reason tells why thinking ended; ``finished`` tells whether the answer was completed.
        reason = ExitReason.BUDGET if hit else ExitReason.from_finish(comp.finish_reason)
        return Outcome(comp.token_ids, reason, info={"forced": hit}, finished=comp.finish_reason == "stop")
