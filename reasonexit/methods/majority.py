"""``majority``: self-consistency. Sample ``n`` traces to the end and majority-vote their answers.

The parallel-sampling baseline of First Finish Search: the same branches (same seeds, same inner
method) as ``ffs``, but none is aborted. The result also reports pass@n from the same samples
(whether any of the ``n`` answers is correct) when the gold answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Context, Method, Outcome, register
from .parallel import solve_parallel, validate_branches


@dataclass
class MajorityParams:
    """``n`` samples, each running the ``inner`` method; sampling settings as for ``ffs``."""

    n: int = 8
    sample_temperature: float | None = None
    sample_top_p: float | None = None
    inner: str = "vanilla"
    inner_options: dict[str, Any] = field(default_factory=dict)

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
