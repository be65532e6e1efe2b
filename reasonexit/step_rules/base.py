"""The plain-logic side of a per-step rule, shared by the V1 and V2 adapters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar


class StepRule(ABC):
    """One request's per-step rule: sees the request's output token ids, may force the next token.

    Subclasses set :attr:`key` (the ``SamplingParams.extra_args`` entry that switches the rule on
    for a request) and implement :meth:`from_args`, :meth:`validate_args` and :meth:`step`. No vLLM
    or torch import belongs here: the adapters translate between this and each runner.
    """

    #: ``extra_args`` key carrying the rule's per-request arguments.
    key: ClassVar[str]
    #: True once the rule will never force again (the adapter may drop it).
    done: bool = False

    @classmethod
    @abstractmethod
    def validate_args(cls, args: Any) -> None:
        """Raise ``ValueError`` for malformed per-request arguments."""

    @classmethod
    @abstractmethod
    def from_args(cls, args: dict[str, Any]) -> StepRule:
        """A fresh rule state for one request."""

    @abstractmethod
    def step(self, output: Sequence[int]) -> int | None:
        """Given all output tokens so far, the token to force at this step, or ``None``."""

    @classmethod
    def for_params(cls, params: Any) -> StepRule | None:
        """The rule state for a request's ``SamplingParams``, or ``None`` if it did not ask for it."""
        args = (getattr(params, "extra_args", None) or {}).get(cls.key)
        return None if args is None else cls.from_args(args)

    @classmethod
    def validate_params(cls, params: Any) -> None:
        """Check a request's arguments for this rule, if it has any."""
        args = (getattr(params, "extra_args", None) or {}).get(cls.key)
        if args is not None:
            cls.validate_args(args)


def force_tokens(logits: Any, rows: Sequence[int], tokens: Sequence[int]) -> Any:
    """Leave only ``tokens[i]`` possible in logits row ``rows[i]`` (in place); shared by both adapters."""
    if not rows:
        return logits
    import torch  # here, not at import: this module stays importable without torch

    rt = torch.tensor([list(rows), list(tokens)], dtype=torch.long).to(logits.device, non_blocking=True)
    r, t = rt[0], rt[1]  # one host-to-device copy for both
    logits[r] = float("-inf")
    logits[r, t] = 0.0
    return logits
