"""``consistency``: ES-CoT's run-length rule (Mao et al., 2025, arXiv 2509.14004).

At each boundary (a transition word such as "Wait", and with ``--paragraph-breaks`` every
paragraph break) a probe asks for the current answer, a *step answer*, as DEER's probe does. The
rule tracks the run of identical consecutive step answers. ES-CoT stops when the run length
"exhibits a sharp increase and exceeds a minimum threshold". Here that reads:

- the current run is at least ``--min-run`` step answers long, and
- it is at least ``--jump`` times as long as the longest earlier run of another answer (a run
  that started with the first probe has no earlier run, so only the minimum applies).

The paper states the jump as a statistical run-jump test; its exact statistic was not available to
us when this was written, so the jump is this ratio, configurable, and the report on the hard
testbed measures it (``eval/reports/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine import EngineSession
from ..errors import UserError
from ..options import opt
from .base import register
from .series import TrialAnswerMethod, TrialProbeParams


@dataclass
class ConsistencyParams(TrialProbeParams):
    """Parameters of the ES-CoT rule (each field's ``help`` is its documentation)."""

    min_run: int = opt(3, help="exit only when the current answer's run is at least this long")
    jump: float = opt(2.0, help="... and at least this many times the longest earlier run of another answer")
    transitions: tuple[str, ...] = opt(("Wait",), help="words that mark step ends")
    paragraph_breaks: bool = opt(False, help="also probe at every paragraph break in the thinking")

    def validate(self) -> None:
        """Reject out-of-range values."""
        super().validate()
        if self.min_run < 1:
            raise UserError("--min-run must be >= 1")
        if self.jump < 0:
            raise UserError("--jump must be >= 0")
        if not self.transitions and not self.paragraph_breaks:
            raise UserError("give --transitions or --paragraph-breaks: the rule needs step ends")


def runs(answers: list[str]) -> list[tuple[str, int]]:
    """The runs of identical consecutive answers, ``(answer, length)``, in order."""
    out: list[tuple[str, int]] = []
    for a in answers:
        if out and out[-1][0] == a:
            out[-1] = (a, out[-1][1] + 1)
        else:
            out.append((a, 1))
    return out


def run_jumped(answers: list[str], min_run: int, jump: float) -> tuple[bool, int, int]:
    """ES-CoT's stop at the newest answer: ``(stop, current run, longest earlier run)``."""
    rs = runs(answers)
    answer, length = rs[-1]
    before = max((n for _, n in rs[:-1]), default=0)
    stop = bool(answer) and length >= min_run and length >= jump * before
    return stop, length, before


@register
class Consistency(TrialAnswerMethod):
    """Probe step answers at transitions; exit when the current answer's run jumps past the minimum."""

    name = "consistency"
    Params = ConsistencyParams

    def boundary(self, session: EngineSession) -> tuple[Any, int]:
        """DEER's transition matcher (before the word) or paragraph breaks (after them)."""
        p = self.params
        return self.transition_boundary(session, p.transitions, p.paragraph_breaks)

    def decide(self, values: list[Any]) -> tuple[bool, dict[str, Any]]:
        """Exit when the current run is long enough and jumped past the earlier ones."""
        stop, length, before = run_jumped(values, self.params.min_run, self.params.jump)
        return stop, {"run": length, "longest_before": before}
