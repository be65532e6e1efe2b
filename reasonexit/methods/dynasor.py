"""``dynasor``: Dynasor-CoT's certainty window (Fu et al., 2024, arXiv 2412.20993).

Every ``--every`` thinking tokens (the paper uses 32-64) a probe asks for a trial answer, as DEER's
probe does (the inducer after the trace so far; the shared prefix is in vLLM's cache). Thinking
ends when the last ``--window`` trial answers are all the same non-empty answer and none of those
probes hesitates: its text holds none of ``--hesitations`` (any case, whole words).

The rule is the paper's. The authors' servers (hao-ai-lab/Dynasor, native and SGLang) exit
without checking that the window's answers agree (their issue #25); here agreement is required,
and ``tests/methods/test_series_rules.py`` shows a window that does not agree does not exit.

Differences from the paper's code, on purpose:

- The probe is DEER's: its inducer (``--inducer``; the paper appends "... Oh, I suddenly got the
  answer to the whole problem, **Final Answer**\\n\\n\\[ \\boxed{"), and it stops when the box
  closes, so the hesitation check reads the trial answer's text.
- Probes run on the shared early-exit controller: the probe limit, thinking budget, modes and
  accounting are those of every early-exit method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..engine import EngineSession
from ..errors import UserError
from ..options import opt
from .base import register
from .deer import Probe
from .series import TrialAnswerMethod, TrialProbeParams


@dataclass
class DynasorParams(TrialProbeParams):
    """Parameters of Dynasor-CoT (each field's ``help`` is its documentation)."""

    every: int = opt(32, help="probe a trial answer every this many thinking tokens")
    window: int = opt(3, help="exit when this many consecutive trial answers agree")
    hesitations: tuple[str, ...] = opt(
        ("wait", "hmm", "but"), help="words (any case) that make a probe uncertain"
    )

    def validate(self) -> None:
        """Reject out-of-range values."""
        super().validate()
        if self.every < 1:
            raise UserError("--every must be >= 1")
        if self.window < 1:
            raise UserError("--window must be >= 1")


def window_agrees(answers: list[tuple[str, bool]], window: int) -> bool:
    """Dynasor's rule: the last ``window`` (answer, hesitant) pairs are one non-empty answer, none hesitant."""
    if len(answers) < window:
        return False
    last = answers[-window:]
    first = last[0][0]
    return bool(first) and all(a == first and not hesitant for a, hesitant in last)


@register
class Dynasor(TrialAnswerMethod):
    """Probe every few tokens; exit once a window of trial answers agrees without hesitation."""

    name = "dynasor"
    Params = DynasorParams

    def __init__(self, params: DynasorParams | None = None) -> None:
        super().__init__(params)
        words = [w.strip() for w in self.params.hesitations if w.strip()]
        self._hesitant = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.I) if words else None

    def boundary(self, session: EngineSession) -> tuple[Any, int]:
        """A cut after every ``every`` thinking tokens (nothing is held back: the cut is the newest token)."""
        every = self.params.every

        def match(trace: list[int], think_from: int) -> int | None:
            n = len(trace) - think_from
            return len(trace) if n > 0 and n % every == 0 else None

        return match, 0

    def value_of(self, probe: Probe) -> tuple[str, bool]:
        """The trial answer and whether its text hesitates."""
        return probe.answer, bool(self._hesitant and self._hesitant.search(probe.answer))

    def decide(self, values: list[Any]) -> tuple[bool, dict[str, Any]]:
        """Exit when the last ``window`` answers agree and none hesitates."""
        return window_agrees(values, self.params.window), {"hesitant": values[-1][1]}
