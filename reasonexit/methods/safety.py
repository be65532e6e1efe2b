"""Safety exits that always answer: end the *thinking* on a loop, a pattern or a thinking cap, then answer.

vLLM's own guards end the whole request: its repetition detection leaves no answer, and its
thinking budget closes thinking mid-sentence. These end thinking only, through the early-exit
controller (:mod:`reasonexit.methods.early_exit`), which then closes thinking with the model's own
markers and lets the model write its answer, as after any early exit:

- ``--on-repetition N``: the last ``N`` thinking tokens repeat a block of at most ``N/2`` tokens
  back to back (they equal the ``N`` tokens one period earlier), a loop the model will not leave;
  exit reason ``repetition``.
- ``--on-pattern REGEX``: the thinking's newest :data:`PATTERN_WINDOW` tokens match the pattern
  (the thinking keeps the token that completes the match); exit reason ``pattern``.
- the ``budget`` method's ``--max-thinking-tokens`` when a wrap-up or grace is asked for;
  exit reason ``budget``.

Then ``--grace-tokens G`` lets the model write up to ``G`` more thinking tokens, stopping at the
first that ends a sentence (``.``, ``!``, ``?`` or a line break), and ``--wrap-up TEXT`` is written
before the end marker (Qwen's documentation suggests "Considering the limited time by the user, I
have to give the solution based on the thinking directly now."). Every early-exit method, ``vanilla``
and ``budget`` take them; the row's ``info["safety"]`` records what fired, where.
"""

from __future__ import annotations

import re
from typing import Any

from ..engine import EngineSession
from .base import Decoding, ExitReason

#: Thinking tokens, newest last, that ``--on-pattern`` is matched against.
PATTERN_WINDOW = 48
_SENTENCE_END = re.compile(r"[.!?\n]\s*$")


def loop_period(trace: list[int], floor: int, window: int) -> int | None:
    """The period ``p`` (1 to ``window // 2``) with which ``trace[-window:]`` equals the ``window``
    tokens ``p`` earlier, all at or after ``floor``; ``None`` when the tail is not such a loop."""
    n = len(trace)
    if window < 2:
        return None
    last = trace[-1] if trace else None
    for p in range(1, window // 2 + 1):
        if n - window - p < floor:
            return None
        if trace[n - 1 - p] == last and trace[n - window :] == trace[n - window - p : n - p]:
            return p
    return None


def wants_watch(decoding: Decoding) -> bool:
    """Whether the decoding settings ask for a loop or pattern trigger."""
    return bool(decoding.on_repetition or decoding.on_pattern)


class SafetyWatch:
    """One problem's triggers: fed each new thinking token, says when thinking must end."""

    def __init__(self, session: EngineSession, decoding: Decoding, thinking_cap: int | None = None) -> None:
        self.session = session
        self.window = decoding.on_repetition
        self.pattern = re.compile(decoding.on_pattern) if decoding.on_pattern else None
        self.grace = decoding.grace_tokens
        self.cap = thinking_cap
        self.reason: ExitReason | None = None
        self.record: dict[str, Any] = {}
        self._grace_left = 0

    @classmethod
    def for_run(cls, session: EngineSession, decoding: Decoding, thinking_cap: int | None) -> SafetyWatch | None:
        """A watch when the settings ask for any trigger, else ``None`` (nothing to do per token)."""
        if thinking_cap is None and not wants_watch(decoding):
            return None
        return cls(session, decoding, thinking_cap)

    def feed(self, trace: list[int], think_from: int, thinking_tokens: int) -> ExitReason | None:
        """After a new thinking token: the exit reason once thinking should end right after it."""
        if self.reason is not None:  # fired: the grace tokens finish the sentence
            self._grace_left -= 1
            return self.reason if self._grace_left <= 0 or self._ends_sentence(trace) else None
        fired = self._trigger(trace, think_from, thinking_tokens)
        if fired is None:
            return None
        self.reason, self.record = fired
        self.record["at"] = thinking_tokens
        self._grace_left = self.grace
        return self.reason if self.grace == 0 or self._ends_sentence(trace) else None

    def _trigger(
        self, trace: list[int], think_from: int, thinking_tokens: int
    ) -> tuple[ExitReason, dict[str, Any]] | None:
        if self.cap is not None and thinking_tokens >= self.cap:
            return ExitReason.BUDGET, {"trigger": "budget"}
        if self.window:
            period = loop_period(trace, think_from, self.window)
            if period is not None:
                return ExitReason.REPETITION, {"trigger": "repetition", "period": period}
        if self.pattern is not None:
            text = self.session.decode(trace[max(think_from, len(trace) - PATTERN_WINDOW) :])
            found = self.pattern.search(text)
            if found is not None:
                return ExitReason.PATTERN, {"trigger": "pattern", "match": found.group(0)}
        return None

    def _ends_sentence(self, trace: list[int]) -> bool:
        return bool(_SENTENCE_END.search(self.session.decode(trace[-1:])))
