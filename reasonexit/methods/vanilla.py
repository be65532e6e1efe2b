"""``vanilla``: plain decoding (greedy or sampled) with the dataset's prompt; the reference baseline."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, ExitReason, Method, Outcome, register
from .early_exit import ExitLimits, NoChecks, run_early_exit
from .safety import wants_watch


@dataclass
class VanillaParams:
    """Vanilla decoding has no parameters of its own (decoding settings are shared)."""


@register
class Vanilla(Method):
    """Decode to the end of sequence or the token limit."""

    name = "vanilla"
    Params = VanillaParams

    async def solve(self, ctx: Context) -> Outcome:
        """Generate one completion (through the early-exit controller when a safety exit is asked for)."""
        if wants_watch(ctx.decoding) and ctx.session.markers.has_thinking:
            return await run_early_exit(ctx, NoChecks(), ExitLimits(max_checks=0, budget_ratio=1.0, mode="sequential"))
        comp = await ctx.complete(ctx.prompt_ids, ctx.output_sampling(), ctx.request_id("main"))
        reason = ExitReason.from_finish(comp.finish_reason)
        return Outcome(comp.token_ids, reason, finished=comp.finish_reason == "stop")
