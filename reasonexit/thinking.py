"""Locating the reasoning span of a model: from vLLM's reasoning parsers, or its tokenizer and chat template.

DeepSeek-R1 distills open ``<think>`` in their chat template (generation starts inside the
thinking block); Qwen3 and QwQ write ``<think>`` themselves. Both cases, and models with no
thinking markers at all, are found by the same code path: look the marker strings up in the
tokenizer and render the chat template once to see whether it already opened the block.

With ``reasoning_parser`` (a name in vLLM's ``ReasoningParserManager``, such as ``deepseek_r1`` or
``qwen3``), the marker strings come from that parser instead. A parser whose reasoning is not one
start/end span (no start or end string) gives markers with ``closable=False``: the span can be
split for reporting where it exists, but early-exit methods refuse to run rather than cut at a
wrong place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UserError

# Marker pairs used by public reasoning models, most common first.
KNOWN_MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)


@dataclass(frozen=True)
class ThinkingMarkers:
    """Where a model's thinking starts and ends, as text and as token ids.

    ``opened_by_template`` is true when the chat template's generation prompt already ends with
    the start marker, so the completion begins inside the thinking block.
    """

    start: str | None
    end: str | None
    start_ids: tuple[int, ...] = ()
    end_ids: tuple[int, ...] = ()
    opened_by_template: bool = False
    #: Where the markers came from (shown in the run header).
    source: str = "tokenizer and chat template"
    #: False when the model's reasoning is not one start/end span reasonexit can close.
    closable: bool = True

    @property
    def has_thinking(self) -> bool:
        """True when the model has a thinking span at all."""
        return bool(self.end_ids)

    def describe(self) -> str:
        """One line for the run header: the markers, how thinking opens, and where they came from."""
        if not self.closable:
            return f"reasoning not one start/end span (from {self.source}): early exit unavailable"
        if not self.has_thinking:
            return f"no thinking span (from {self.source})"
        how = "opened by chat template" if self.opened_by_template else "written by the model"
        return f"thinking {self.start!r} ... {self.end!r} ({how}; markers from {self.source})"

    def require_span(self, method: str) -> None:
        """Raise a one-line :class:`UserError` unless a method can close this model's thinking."""
        if not self.closable:
            raise UserError(
                f"early exit is not supported for this model's reasoning format ({self.source}): "
                f"method {method} needs one start/end thinking span"
            )
        if not self.has_thinking:
            raise UserError(f"method {method} needs a reasoning model: this model has no thinking span")


def _encode(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def _in_vocab(tokenizer, marker: str) -> bool:
    vocab = tokenizer.get_vocab()
    return marker in vocab


def chat_prompt_ids(tokenizer: Any, prompt: str | Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a prompt (a user message, or a list of chat messages) with the chat template; a
    template-less tokenizer's BOS token is put first, as its own encoding would."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = render_chat(tokenizer, messages)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos = tokenizer.bos_token_id
    if bos is not None and not getattr(tokenizer, "chat_template", None) and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def render_chat(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """Render chat messages with the generation prompt; a plain user line if there is no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def parser_markers(tokenizer, name: str) -> tuple[str | None, str | None]:
    """The reasoning start/end strings of vLLM's reasoning parser ``name`` for ``tokenizer``."""
    from vllm.reasoning import ReasoningParserManager

    try:
        parser_cls = ReasoningParserManager.get_reasoning_parser(name)
    except KeyError:
        known = ", ".join(sorted(ReasoningParserManager.list_registered()))
        raise UserError(f"unknown --reasoning-parser {name!r}; vLLM's parsers: {known}") from None
    try:
        parser = parser_cls(tokenizer)
    except Exception as exc:  # noqa: BLE001 - a parser that cannot read this tokenizer is a user error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"reasoning parser {name!r} does not fit this model's tokenizer: {first}") from None
    return parser.reasoning_start_str or None, parser.reasoning_end_str or None


def detect_markers(
    tokenizer,
    start: str | None = None,
    end: str | None = None,
    *,
    disable: bool = False,
    reasoning_parser: str | None = None,
) -> ThinkingMarkers:
    """Find the thinking markers of ``tokenizer``.

    ``start``/``end`` override the detection (for models with unusual markers);
    ``reasoning_parser`` takes them from vLLM's parser of that name; ``disable`` treats the model
    as a non-reasoning model.
    """
    if disable:
        return ThinkingMarkers(None, None, source="--no-thinking")
    if (start is None) != (end is None):
        raise UserError("give both --think-start and --think-end, or neither")
    source = "tokenizer and chat template"
    if start is not None:
        source = "--think-start/--think-end"
    elif reasoning_parser:
        source = f"vLLM reasoning parser {reasoning_parser!r}"
        start, end = parser_markers(tokenizer, reasoning_parser)
        if not start or not end:
            return ThinkingMarkers(start, end, source=source, closable=False)
    else:
        for cand_start, cand_end in KNOWN_MARKERS:
            if _in_vocab(tokenizer, cand_start) and _in_vocab(tokenizer, cand_end):
                start, end = cand_start, cand_end
                break
        else:
            return ThinkingMarkers(None, None, source=source)
    assert start is not None and end is not None
    start_ids, end_ids = _encode(tokenizer, start), _encode(tokenizer, end)
    if not start_ids or not end_ids:
        raise UserError(f"thinking markers {start!r}/{end!r} encode to no tokens")
    rendered = render_chat(tokenizer, [{"role": "user", "content": "1+1?"}])
    opened = rendered.rstrip().endswith(start)
    return ThinkingMarkers(start, end, start_ids, end_ids, opened, source=source)


def find_subsequence(seq: Sequence[int], sub: Sequence[int], start: int = 0) -> int:
    """Index of the first occurrence of ``sub`` in ``seq`` at or after ``start``, or -1."""
    n, m = len(seq), len(sub)
    if m == 0:
        return -1
    first = sub[0]
    for i in range(start, n - m + 1):
        if seq[i] == first and tuple(seq[i : i + m]) == tuple(sub):
            return i
    return -1


def thinking_in_prompt(prompt_ids: Sequence[int], markers: ThinkingMarkers) -> int:
    """Thinking tokens a prompt already holds: those after its last start marker, if no end marker follows."""
    if not markers.has_thinking or not markers.start_ids:
        return 0
    start, end = tuple(markers.start_ids), tuple(markers.end_ids)
    ids = list(prompt_ids)
    for i in range(len(ids) - len(start), -1, -1):
        if tuple(ids[i : i + len(start)]) == start:
            rest = ids[i + len(start) :]
            return 0 if find_subsequence(rest, end) >= 0 else len(rest)
    return 0


@dataclass(frozen=True)
class Split:
    """Token-level split of a completion into its thinking and answer parts.

    ``thinking_start``/``thinking_end`` index into the completion's token ids: thinking tokens
    are ``ids[thinking_start:thinking_end]``; the answer follows the end marker.
    ``closed`` tells whether the end marker was written.
    """

    thinking_start: int
    thinking_end: int
    answer_start: int
    closed: bool

    @property
    def thinking_tokens(self) -> int:
        """Number of thinking tokens (markers excluded)."""
        return self.thinking_end - self.thinking_start


def split_completion(ids: Sequence[int], markers: ThinkingMarkers) -> Split:
    """Split completion token ids into thinking and answer by the markers."""
    if not markers.has_thinking:
        return Split(0, 0, 0, False)
    begin = 0
    if not markers.opened_by_template:
        pos = find_subsequence(ids, markers.start_ids)
        if pos < 0:
            # The model never opened a thinking block: everything is answer.
            return Split(0, 0, 0, False)
        begin = pos + len(markers.start_ids)
    end = find_subsequence(ids, markers.end_ids, begin)
    if end < 0:
        return Split(begin, len(ids), len(ids), False)
    return Split(begin, end, end + len(markers.end_ids), True)


class ThinkingTracker:
    """Follows one completion token by token and knows where its thinking span is.

    Pure Python on token ids (no engine imports), so the same code serves controllers, engine-side
    rules and servers. ``in_thinking`` is true once thinking has begun (at once when the chat
    template opened it) until the end marker has been written; ``think_from`` is the index of the
    first thinking token in the fed sequence; ``thinking_tokens`` counts thinking tokens so far
    (markers excluded, and a partly written end marker counts as thinking until it completes).
    """

    __slots__ = ("_end", "_recent", "_start", "closed", "n", "think_end", "think_from")

    def __init__(self, start_ids: Sequence[int], end_ids: Sequence[int], opened: bool) -> None:
        self._start = tuple(start_ids)
        self._end = tuple(end_ids)
        self._recent: list[int] = []  # the last few tokens, enough to match either marker
        self.n = 0
        self.think_from: int | None = 0 if opened else None
        self.think_end: int | None = None
        self.closed = False

    @classmethod
    def for_markers(cls, markers: ThinkingMarkers) -> ThinkingTracker:
        """A tracker for a model's markers (thinking open from the start when the template opened it)."""
        return cls(markers.start_ids, markers.end_ids, markers.opened_by_template)

    @property
    def in_thinking(self) -> bool:
        """True while inside an open thinking span."""
        return self.think_from is not None and not self.closed

    @property
    def thinking_tokens(self) -> int:
        """Thinking tokens so far (up to the end marker once closed)."""
        if self.think_from is None:
            return 0
        return (self.think_end if self.think_end is not None else self.n) - self.think_from

    def feed(self, token: int) -> None:
        """Take the next token of the completion."""
        self.n += 1
        if self.closed:
            return
        recent = self._recent
        recent.append(token)
        keep = max(len(self._start), len(self._end))
        if len(recent) > keep:
            del recent[0]
        if self.think_from is None:
            if self._start and tuple(recent[-len(self._start) :]) == self._start:
                self.think_from = self.n
                recent.clear()
            return
        if self._end and len(recent) >= len(self._end) and tuple(recent[-len(self._end) :]) == self._end:
            self.closed = True
            self.think_end = self.n - len(self._end)

    def feed_many(self, ids: Sequence[int]) -> None:
        """Take several tokens in order."""
        for tok in ids:
            self.feed(tok)


def closing_ids(encode, markers: ThinkingMarkers, before: str = "\n", after: str = "\n\n") -> list[int]:
    """Token ids that close a thinking span early: ``before`` + the model's end marker + ``after``.

    ``encode`` turns text into token ids without special tokens (e.g. ``EngineSession.encode``).
    Every early exit closes thinking through this helper, so all methods write the same closing.
    """
    if not markers.has_thinking:
        raise UserError("this model has no thinking span to close")
    return list(encode(before + (markers.end or "") + after))
