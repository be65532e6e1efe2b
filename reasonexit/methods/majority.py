"""``majority``: self-consistency. Sample ``n`` traces to the end and majority-vote their answers.

The parallel-sampling baseline of First Finish Search: the same branches (same seeds, same inner
method) as ``ffs``, but none is aborted. The result also reports pass@n from the same samples
(whether any of the ``n`` answers is correct) when the gold answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..options import opt
from .base import Context, Method, Outcome, register
from .parallel import solve_parallel, validate_branches


@dataclass
class MajorityParams:
    """``n`` samples, each running the ``inner`` method; sampling settings as for ``ffs``."""

    n: int = opt(8, help="samples run to the end and voted over")
    sample_temperature: float | None = opt(
        None, help="sampling temperature (default: the run's --temperature if it samples, else 0.6)"
    )
    sample_top_p: float | None = opt(None, help="top-p (default: the run's --top-p if it samples, else 0.95)")
    inner: str = opt("vanilla", help="the method each sample runs (options majority does not take go to it)")
    inner_options: dict[str, Any] = opt(default_factory=dict, help="settings of the inner method, as a JSON object")

    def validate(self) -> None:
        """Reject impossible settings."""
        validate_branches(self.n, self.sample_temperature, self.sample_top_p)


@register
class Majority(Method):
    """Self-consistency: n samples to the end, majority vote of their answers; also pass@n."""

    name = "majority"
    Params = MajorityParams

    async def solve(self, ctx: Context) -> Outcome:
        """Run all branches to the end and vote (ties go to the earliest finisher)."""
        p = self.params
        assert self.inner is not None
        outcome, branches = await solve_parallel(ctx, self.inner, p.n, p.n, p.sample_temperature, p.sample_top_p)
        info: dict[str, Any] = {"n": p.n}
        if ctx.gold is not None:
            info["pass_at_n"] = any(b.correct for b in branches)
        outcome.info = {**info, **outcome.info}
        return outcome
