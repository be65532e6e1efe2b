"""``ffs``: First Finish Search (Agarwal et al., 2025).

Launch ``n`` independent samples of the same prompt and return the first one to finish; the others
are aborted at once. Shorter traces tend to be the correct ones on reasoning models, and the first
to finish is the shortest, so FFS answers sooner than one sample while decoding about ``n`` times
the winner's length. With ``k > 1`` it waits for the first ``k`` finishers and majority-votes their
answers (first-k-finish voting).

Each branch runs another method inside it (``inner``, default ``vanilla``): with
``--method ffs --inner deer`` the first branch to exit early and answer wins. Options ``ffs``
does not take itself go to the inner method.

Streaming (``reasonexit serve``): FFS cannot stream a token before a winner exists, since any
branch may still lose; the winner's completion is streamed at once when it has won (it has then
finished, so for ``k=1`` that is when the call ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..options import opt
from .base import Context, Method, Outcome, register
from .parallel import solve_parallel, validate_branches


@dataclass
class FfsParams:
    """``n`` branches; vote among the first ``k`` to finish (``k=1``: the first finisher wins).

    Branches sample at ``sample_temperature``/``sample_top_p`` when given, else at the run's
    ``--temperature``/``--top-p`` when the run samples, else at 0.6 / 0.95. Branch ``i`` has a seed
    derived from the problem's seed. ``inner`` names the method each branch runs;
    ``inner_options`` are its settings (filled from the options ``ffs`` does not take).
    """

    n: int = opt(4, help="branches sampled in parallel")
    k: int = opt(1, help="vote among the first k branches to finish (1: the first finisher wins)")
    sample_temperature: float | None = opt(
        None, help="branch sampling temperature (default: the run's --temperature if it samples, else 0.6)"
    )
    sample_top_p: float | None = opt(None, help="branch top-p (default: the run's --top-p if it samples, else 0.95)")
    inner: str = opt("vanilla", help="the method each branch runs (options ffs does not take go to it)")
    inner_options: dict[str, Any] = opt(default_factory=dict, help="settings of the inner method, as a JSON object")

    def validate(self) -> None:
        """Reject impossible settings."""
        validate_branches(self.n, self.sample_temperature, self.sample_top_p)
        if not 1 <= self.k <= self.n:
            raise UserError(f"--k must be between 1 and --n ({self.n}), got {self.k}")


@register
class Ffs(Method):
    """First Finish Search: n samples in parallel, the first to finish wins (k > 1: vote of the first k)."""

    name = "ffs"
    Params = FfsParams

    async def solve(self, ctx: Context) -> Outcome:
        """Race the branches, abort the losers, return the winner (or the vote of the first k)."""
        p = self.params
        assert self.inner is not None
        outcome, _ = await solve_parallel(ctx, self.inner, p.n, p.k, p.sample_temperature, p.sample_top_p)
        outcome.info = {"n": p.n, "k": p.k, **outcome.info}
        return outcome
