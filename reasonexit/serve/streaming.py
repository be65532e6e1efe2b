"""Streamed responses of ``reasonexit serve``: server-sent events, a token once it is final.

Every choice's controller gets a token sink (:attr:`~reasonexit.methods.base.Context.token_sink`)
and hands over tokens once they are final; :class:`ChoiceText` turns them into text deltas and
:class:`EventStream` sends them as chunks, then each choice's finish reason, the usage when asked
for, and ``data: [DONE]``. The deltas add up to the non-streamed response of the same request.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from ..engine import EngineSession
from ..runs.results import Result
from ..thinking import ThinkingTracker
from .protocol import ApiError, Call
from .responses import cut_at_stop, final_fields, finish_reason, stop_prefix_start, usage

log = logging.getLogger(__name__)

Sink = Callable[[list[int]], None]


class ChoiceText:
    """Turns one choice's final token ids, as they arrive, into text deltas: ``reasoning_content``
    (the thinking) and ``content`` (the answer after the end marker) for chat, like vLLM's
    reasoning parser split, or ``text`` for completions. The thinking span is followed token by
    token as :func:`~reasonexit.thinking.split_completion` finds it in the whole completion, so the
    deltas add up to the final response.
    Text that may still change is held back: a possibly incomplete character, and while the
    thinking is open, as many tokens as the end marker has less one."""

    def __init__(self, session: EngineSession, chat: bool, stop: Sequence[str] = ()) -> None:
        self.session = session
        self.chat = chat
        #: Stop strings cut from the text: text that may begin one is held back, and none is sent
        #: from a complete one on.
        self.stop = tuple(stop)
        self.stopped = False
        self.held: dict[str, str] = {}
        self.ids: list[int] = []
        self.eos = set(session.eos_ids)
        # follows the thinking span token by token, as split_completion finds it in the whole
        self.tracker = ThinkingTracker.for_markers(session.markers)
        fields = ("reasoning_content", "content") if chat else ("text",)
        self.sent: dict[str, str] = dict.fromkeys(fields, "")
        self._offsets: dict[str, tuple[int, int]] = dict.fromkeys(fields, (0, 0))  # (prefix, read) per field

    def _answer(self, start: int) -> list[int]:
        span = self.ids[start:]
        return span[:-1] if span and span[-1] in self.eos else span  # end of sequence ends a request

    def _spans(self) -> dict[str, list[int]]:
        ids, markers, tr = self.ids, self.session.markers, self.tracker
        if not self.chat:
            return {"text": ids}
        if not markers.has_thinking:
            return {"reasoning_content": [], "content": self._answer(0)}
        if tr.think_from is None:  # no thinking block opened yet
            return {"reasoning_content": [], "content": []}
        if not tr.closed:  # hold back what may be the start of the end marker
            end = max(tr.think_from, len(ids) - max(0, len(markers.end_ids) - 1))
            return {"reasoning_content": ids[tr.think_from : end], "content": []}
        assert tr.think_end is not None
        return {"reasoning_content": ids[tr.think_from : tr.think_end],
                "content": self._answer(tr.think_end + len(markers.end_ids))}

    def feed(self, new_ids: list[int]) -> list[tuple[str, str]]:
        """Take new final tokens; return the ``(field, text)`` deltas they complete."""
        self.ids.extend(new_ids)
        self.tracker.feed_many(new_ids)
        out = []
        for name, span in self._spans().items():
            # incremental detokenization: decode only from the last complete piece on
            prefix, read = self._offsets[name]
            if len(span) <= read:
                continue
            before = self.session.decode(span[prefix:read])
            now = self.session.decode(span[prefix:])
            if len(now) <= len(before) or now.endswith("\ufffd"):
                continue
            self._offsets[name] = (read, len(span))
            piece = now[len(before) :]
            if self.stop:
                piece = self._release(name, piece)
                if not piece:
                    continue
            self.sent[name] += piece
            out.append((name, piece))
        return out

    def _release(self, name: str, piece: str) -> str:
        """Of newly decoded text, what can be sent: none from a complete stop string on, and the end
        that may still begin one is held back (``finish`` sends what remains of the final text)."""
        if self.stopped:
            return ""
        text = self.held.get(name, "") + piece
        cut, found = cut_at_stop(self.sent[name] + text, self.stop)
        if found:
            self.stopped = True
            self.held[name] = ""
            return cut[len(self.sent[name]) :]
        keep = stop_prefix_start(text, self.stop)
        self.held[name] = text[keep:]
        return text[:keep]

    def finish(self, res: Result) -> list[tuple[str, str]]:
        """The rest of the final response (held-back text, or all of it if nothing was streamed)."""
        full = final_fields(res, self.chat, self.stop)
        out = []
        for name, text in full.items():
            done = self.sent[name]
            if not text.startswith(done):  # cannot happen when the tokens streamed were final
                log.warning("streamed %s is not a prefix of the final one (%r vs %r)", name, done[-40:], text[:80])
                continue
            if len(text) > len(done):
                out.append((name, text[len(done) :]))
        return out


class _Chunks:
    """The ``data:`` events of one stream, with what every chunk starts with rendered once."""

    def __init__(self, call: Call, rid: str, created: int, chat: bool) -> None:
        self.chat = chat
        kind = "chat.completion.chunk" if chat else "text_completion"
        self.head = json.dumps({"id": rid, "object": kind, "created": created, "model": call.echo_model})[:-1]
        self.no_usage = ', "usage": null' if call.include_usage else ""
        self.keys = {name: json.dumps(name) for name in (("reasoning_content", "content") if chat else ())}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        tail = f', "usage": {json.dumps(usage)}' if usage is not None else self.no_usage
        return f'data: {self.head}, "choices": {json.dumps(choices)}{tail}}}\n\n'

    def roles(self, total: int) -> str:
        """The first chat chunk: every choice's role."""
        return self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                           for i in range(total)])

    def text(self, i: int, pieces: list[tuple[str, str]]) -> str:
        """A chunk of text deltas (all but a few of a stream's), rendered by hand: the same bytes as
        ``chunk([{"index": i, "delta": {...}, "finish_reason": None}])``, with only the text going
        through the JSON encoder. One entry per choice index in every chunk, as OpenAI's and vLLM's
        servers send: a step whose text spans the end of the thinking carries both fields in one
        delta (clients read ``choices[0]``, or merge entries by index, and would lose a second
        entry's text)."""
        if self.chat:
            fields = ", ".join(f"{self.keys[n]}: {json.dumps(t)}" for n, t in pieces)
            item = f'{{"index": {i}, "delta": {{{fields}}}, "finish_reason": null}}'
        else:
            item = f'{{"index": {i}, "text": {json.dumps("".join(t for _, t in pieces))}, "finish_reason": null}}'
        return f'data: {self.head}, "choices": [{item}]{self.no_usage}}}\n\n'

    def last(self, i: int, pieces: list[tuple[str, str]], finish: str) -> str:
        """A choice's closing chunk: what remains of its text, and its finish reason."""
        if self.chat:
            item = {"index": i, "delta": dict(pieces), "finish_reason": finish}
        else:
            item = {"index": i, "text": "".join(t for _, t in pieces), "finish_reason": finish}
        return self.chunk([item])


class EventStream:
    """Server-sent events of a streaming call.

    The first tokens are sent at once; after that, chunks go out at least ``interval`` seconds
    apart, each with all that became final meanwhile (a chunk per engine step per client costs a
    small CPU machine much of what the engine needs; vLLM's own server has ``--stream-interval``
    for the same reason). ``run`` runs the call's controllers with the given sinks (and watches
    the connection, when Starlette does not): if the client disconnects, they are cancelled, which
    aborts every engine request of the call.
    """

    def __init__(
        self, call: Call, rid: str, created: int, chat: bool, session: EngineSession,
        run: Callable[[list[Sink]], Awaitable[list[Result]]], record: Callable[[list[Result]], None],
        interval: float = 0.0,
    ) -> None:
        self.call, self.chat, self.session, self.interval = call, chat, session, interval
        self.run, self.record = run, record
        self.chunks = _Chunks(call, rid, created, chat)
        self.total = len(call.prompts) * call.n
        self.texts = [ChoiceText(session, chat, call.trim) for _ in range(self.total)]
        # Final tokens wait in ``pending`` until the next chunk; one future at a time wakes the
        # stream (tokens arrived, the interval passed, or the call ended). No task or queue per
        # chunk: under load the stream runs hundreds of times a second on the engine's loop.
        self.pending: list[tuple[int, list[int]]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.wake_on_tokens = True

    def _wake(self, _: Any = None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _put(self, i: int, ids: list[int]) -> None:
        self.pending.append((i, ids))
        if self.wake_on_tokens:
            self._wake()

    def _sink(self, i: int, loop: asyncio.AbstractEventLoop) -> Sink:
        # called on the engine loop: hand the tokens over to this (the server's) loop, directly when
        # the server runs on the engine loop (``serve``), else thread-safely
        if self.session.on_engine_loop(loop):
            return lambda ids: self._put(i, ids)
        return lambda ids: loop.call_soon_threadsafe(self._put, i, ids)

    async def _await_tokens(self, task: asyncio.Future[Any], loop: asyncio.AbstractEventLoop,
                            last: float | None) -> None:
        """Wait out the interval since the last chunk (the call's end cuts it short), then, with no
        tokens pending, until some arrive or the call ends."""
        delay = last + self.interval - loop.time() if last is not None and self.interval > 0 else 0.0
        if delay > 0 and not task.done():
            self.wake_on_tokens = False
            self.waiter = loop.create_future()
            timer = loop.call_later(delay, self._wake)
            try:
                await self.waiter
            finally:
                timer.cancel()
        if not self.pending and not task.done():
            self.wake_on_tokens = True
            self.waiter = loop.create_future()
            await self.waiter

    def _take_pending(self) -> str:
        """Everything that became final meanwhile, in one chunk per choice, as one write (each write
        is a send on the socket)."""
        items, self.pending[:] = self.pending[:], []
        merged: dict[int, list[int]] = {}
        for i, ids in items:
            merged.setdefault(i, []).extend(ids)
        out = []
        for i, ids in merged.items():
            pieces = self.texts[i].feed(ids)
            if pieces:
                out.append(self.chunks.text(i, pieces))
        return "".join(out)

    def _closing(self, results: list[Result]) -> str:
        """The closing events, in one write: each choice's last chunk, the usage if asked, [DONE]."""
        tail = []
        for i, r in enumerate(results):
            tail.append(self.chunks.last(i, self.texts[i].finish(r), finish_reason(r, self.session, self.call.stop)))
        if self.call.include_usage:
            tail.append(self.chunks.chunk([], usage(self.call, results)))
        tail.append("data: [DONE]\n\n")
        return "".join(tail)

    async def events(self) -> AsyncIterator[str]:
        """The events, as the controllers hand over final tokens; an error ends the stream with an
        error event (none when the client is gone)."""
        if self.chat:
            yield self.chunks.roles(self.total)
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self.run([self._sink(i, loop) for i in range(self.total)]))
        task.add_done_callback(self._wake)
        last = None  # when the last text chunk went out
        try:
            while True:
                await self._await_tokens(task, loop, last)
                if not self.pending:
                    break  # the call has ended and every token it handed over has been sent
                out = self._take_pending()
                if out:
                    yield out
                    last = loop.time()
            results = task.result()  # raises the call's ApiError, if any
        except ApiError as err:
            if err.status == 499:
                return  # the client is gone; its engine requests were aborted
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.record(results)
        yield self._closing(results)
