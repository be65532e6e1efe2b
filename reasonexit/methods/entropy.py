"""``entropy``: EAT, the entropy after ``</think>`` (Wang et al., 2025, arXiv 2509.26522).

At each boundary (every paragraph break by default; EAT splits the thinking into steps at blank
lines) a one-token probe closes thinking after the cut (the model's own end marker, as every early
exit closes it, then ``--after`` if given) and reads the entropy of the next token's distribution
from vLLM's logprobs. It is the cheapest check there is: one decoded token, with the trace's prefix
in the cache.

The rule follows the paper and its code (xidulu/EAT, ``early_stopping_utils.py``): an exponential
moving average of the entropies with weight ``--alpha`` (the mean starts at the first entropy)
and an exponential moving variance of their deviation from it (starting at 0); thinking ends at
the first check, from check ``--min-checks`` on, where that variance is below ``--threshold``.

The entropy is computed over the ``--top-logprobs`` most likely tokens (vLLM returns at most 20)
with the rest of the probability as one more outcome, so it is a lower bound of the full entropy
and exact when the top tokens hold all the mass.

On a model whose text right after the end marker never varies (a blank line, "The answer is"),
that token's entropy says nothing: ``--after`` moves the read to where the answer starts (the
bundled testbeds: ``--after "The answer is \\boxed{"``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from ..engine import EngineSession
from ..errors import UserError
from ..options import opt
from ..thinking import closing_ids
from .base import Context, register
from .series import Reading, SeriesMethod, SeriesParams


@dataclass
class EntropyParams(SeriesParams):
    """Parameters of EAT (each field's ``help`` is its documentation)."""

    alpha: float = opt(0.2, help="weight of the newest entropy in the moving average and variance")
    threshold: float = opt(1e-4, help="exit when the moving variance of the entropy is below this")
    min_checks: int = opt(4, help="never exit before this many checks")
    after: str = opt("", help="text after the end-of-thinking marker before the entropy is read")
    top_logprobs: int = opt(20, help="tokens whose probabilities make the entropy (vLLM returns at most 20)")
    transitions: tuple[str, ...] = opt((), help="words that also mark check points")
    paragraph_breaks: bool = opt(True, help="check at every paragraph break in the thinking")

    def validate(self) -> None:
        """Reject out-of-range values."""
        super().validate()
        if not 0 < self.alpha <= 1:
            raise UserError("--alpha must be in (0, 1]")
        if self.threshold < 0:
            raise UserError("--threshold must be >= 0")
        if self.min_checks < 1:
            raise UserError("--min-checks must be >= 1")
        if not 1 <= self.top_logprobs <= 20:
            raise UserError("--top-logprobs must be between 1 and 20")
        if not self.transitions and not self.paragraph_breaks:
            raise UserError("give --transitions or --paragraph-breaks: EAT needs check points")


def entropy_of(logprobs: dict[int, float]) -> float:
    """Entropy (nats) of a next-token distribution known by its top logprobs; the missing mass is one outcome."""
    probs = [math.exp(lp) for lp in logprobs.values()]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in probs if p > 0) - (rest * math.log(rest) if rest > 0 else 0.0)


def moving_variance(values: list[float], alpha: float) -> list[float]:
    """EAT's exponential moving variance of ``values`` (mean starts at the first value, variance at 0)."""
    mean, var, out = values[0], 0.0, [0.0]
    for x in values[1:]:
        mean = alpha * x + (1 - alpha) * mean
        var = alpha * (x - mean) ** 2 + (1 - alpha) * var
        out.append(var)
    return out


@register
class Entropy(SeriesMethod):
    """Read the entropy after closing thinking at each step; exit once its moving variance settles."""

    name = "entropy"
    Params = EntropyParams

    def boundary(self, session: EngineSession) -> tuple[Any, int]:
        """Paragraph breaks (after them) and any transition words (before them)."""
        p = self.params
        return self.transition_boundary(session, p.transitions, p.paragraph_breaks)

    async def measure(self, ctx: Context, trace: list[int], cut: int, think_from: int) -> Reading:
        """One token after the closed thinking: the entropy of its distribution."""
        session, p = ctx.session, self.params
        suffix = closing_ids(session.encode, session.markers) + (session.encode(p.after) if p.after else [])
        prompt = [*ctx.prompt_ids, *trace[:cut], *suffix]
        params = ctx.sampling(temperature=0.0, top_p=1.0, max_tokens=1, logprobs=p.top_logprobs, seed=None)
        tops: dict[int, float] = {}
        tokens = 0
        async with contextlib.aclosing(session.stream(prompt, params, ctx.usage, ctx.request_id("probe"))) as st:
            async for d in st:
                tokens += len(d.token_ids)
                if d.top_logprobs and not tops:
                    tops = d.top_logprobs[0]
        value = entropy_of(tops) if tops else 0.0
        record = {"pos": cut - think_from, "entropy": round(value, 6), "tokens": tokens}
        return Reading(value=value, record=record, tokens=tokens, prompt_tokens=len(prompt))

    def decide(self, values: list[Any]) -> tuple[bool, dict[str, Any]]:
        """Exit once the moving variance is below the threshold, from ``min_checks`` on."""
        var = moving_variance(values, self.params.alpha)[-1]
        return len(values) >= self.params.min_checks and var < self.params.threshold, {"variance": var}
