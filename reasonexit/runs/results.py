"""Per-problem results: the completion split into thinking and answer, graded, with honest accounting."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.answers import extract_answer
from ..data.grading import agrade
from ..engine import EngineSession, Usage
from ..methods.base import ExitReason, Outcome
from ..thinking import split_completion


@dataclass
class Result:
    """One problem solved by one method.

    ``output_tokens`` counts the completion the user gets (thinking + answer);
    ``compute_tokens`` counts every token decoded for the problem (probes, aborted branches and
    discarded continuations included); ``prompt_tokens`` is the problem's prompt.
    """

    id: str
    method: str
    params: dict[str, Any]
    text: str
    thinking: str
    answer_text: str
    answer: str | None
    gold: str | None
    correct: bool | None
    prompt_tokens: int
    output_tokens: int
    compute_tokens: int
    thinking_tokens: int
    answer_tokens: int
    closed_thinking: bool
    wall_s: float
    exit_reason: str
    problem: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    #: Why the problem failed (``exit_reason == "error"``): one line, ``Type: message``.
    error: str | None = None
    #: The completion's token ids (not written to run files).
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_row(self) -> dict[str, Any]:
        """A JSON-ready dict (one line of a run file), without the token ids."""
        row = asdict(self)
        del row["token_ids"]
        return row


async def abuild_result(
    session: EngineSession,
    *,
    id: str,
    method_name: str,
    params: dict[str, Any],
    outcome: Outcome,
    usage: Usage,
    wall_s: float,
    gold: str | None,
    kind: str,
    problem: str = "",
) -> Result:
    """Decode, split, extract and grade an outcome into a :class:`Result` (on the engine loop:
    grading that needs math-verify runs in a worker, not on the loop)."""
    ids = outcome.token_ids
    markers = session.markers
    split = split_completion(ids, markers)
    eos = set(session.eos_ids)
    answer_ids = [t for t in ids[split.answer_start :] if t not in eos]
    thinking = session.decode(ids[split.thinking_start : split.thinking_end])
    answer_text = session.decode(answer_ids)
    # With thinking markers, only the answer part is searched (a trial answer inside an unfinished
    # thinking block is not an answer). Without markers, the whole text is the answer.
    search = answer_text if markers.has_thinking else session.decode([t for t in ids if t not in eos])
    answer = extract_answer(search, kind)
    res = Result(
        id=id,
        method=method_name,
        params=params,
        text=session.decode(ids),
        thinking=thinking,
        answer_text=answer_text,
        answer=answer,
        gold=gold,
        correct=None,
        prompt_tokens=usage.prompt_tokens,
        output_tokens=len(ids),
        compute_tokens=usage.compute_tokens,
        thinking_tokens=split.thinking_tokens,
        answer_tokens=len(answer_ids),
        closed_thinking=split.closed,
        wall_s=round(wall_s, 4),
        exit_reason=outcome.exit_reason,
        problem=problem,
        info={**outcome.info, "requests": usage.requests, "cached_prompt_tokens": usage.cached_prompt_tokens},
        token_ids=list(ids),
    )
    res.correct = await agrade(res.answer, gold, kind) if gold is not None else None
    return res


def error_result(
    *,
    id: str,
    method_name: str,
    params: dict[str, Any],
    usage: Usage,
    wall_s: float,
    gold: str | None,
    problem: str,
    error: str,
) -> Result:
    """The result of a problem whose controller failed: no completion, the one-line cause, and the
    tokens it had decoded before failing (they were spent)."""
    return Result(
        id=id,
        method=method_name,
        params=params,
        text="",
        thinking="",
        answer_text="",
        answer=None,
        gold=gold,
        correct=None,
        prompt_tokens=usage.prompt_tokens,
        output_tokens=0,
        compute_tokens=usage.compute_tokens,
        thinking_tokens=0,
        answer_tokens=0,
        closed_thinking=False,
        wall_s=round(wall_s, 4),
        exit_reason=ExitReason.ERROR,
        problem=problem,
        info={"requests": usage.requests, "cached_prompt_tokens": usage.cached_prompt_tokens},
        error=error,
    )
