"""``vanilla``: plain decoding (greedy or sampled) with the dataset's prompt; the reference baseline."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, ExitReason, Method, Outcome, register


@dataclass
class VanillaParams:
    """Vanilla decoding has no parameters of its own (decoding settings are shared)."""


@register
class Vanilla(Method):
    """Decode to the end of sequence or the token limit."""

    name = "vanilla"
    Params = VanillaParams

    async def solve(self, ctx: Context) -> Outcome:
        """Generate one completion."""
        comp = await ctx.complete(ctx.prompt_ids, ctx.output_sampling(), ctx.request_id("main"))
        reason = ExitReason.from_finish(comp.finish_reason)
        return Outcome(comp.token_ids, reason, finished=comp.finish_reason == "stop")
