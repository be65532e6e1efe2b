"""What the engine hands back: token accounting per problem, streamed deltas and completions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Usage:
    """Token accounting for one problem, summed over every request made for it.

    ``compute_tokens`` counts every token decoded: the returned trace, probes, verifier calls,
    aborted branches and continuations that were decoded and then thrown away.
    """

    prompt_tokens: int = 0
    compute_tokens: int = 0
    request_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    requests: int = 0

    def add(self, part: Usage) -> None:
        """Count ``part``'s requests in this problem's (``prompt_tokens``, the problem's own prompt, stays)."""
        self.compute_tokens += part.compute_tokens
        self.request_prompt_tokens += part.request_prompt_tokens
        self.cached_prompt_tokens += part.cached_prompt_tokens
        self.requests += part.requests


@dataclass
class Delta:
    """New tokens of one streamed request, with their logprobs when asked for.

    ``top_logprobs`` holds, per new token, every logprob vLLM returned for that step (the sampled
    token, the top-k and any ``logprob_token_ids``), keyed by token id.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None = None
    top_logprobs: list[dict[int, float]] | None = None


@dataclass
class Completion:
    """A finished request: all its tokens, their logprobs, and why it stopped."""

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None
    stop_reason: int | str | None = None
