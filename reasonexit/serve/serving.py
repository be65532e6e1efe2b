"""The serving object of ``reasonexit serve``: from a checked request to results, on one engine session.

A request is checked by its model (:mod:`reasonexit.serve.protocol`), its prompts become token ids
(the chat template, or the tokenizer), and its method is the server's or one built for it and
kept. Each choice then runs as one controller (:func:`reasonexit.runs.runner.solve_job`) on the
engine loop, the same as the CLI and the Python API run a problem; a client that disconnects
cancels them all, which aborts every engine request of the call.
"""

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Request

from ..engine import EngineSession
from ..errors import UserError, is_engine_dead, one_line
from ..methods.base import Decoding, Method, make_method
from ..runs.results import Result
from ..runs.runner import Job, gather_or_cancel, solve_job
from .middleware import Metrics
from .protocol import ApiError, Call, ChatCompletionRequest, CompletionRequest, ServedLimits
from .responses import build_response
from .streaming import EventStream, Sink

log = logging.getLogger(__name__)

#: Seconds between checks whether the client of a non-streaming request is still connected.
_DISCONNECT_POLL_S = 0.25

#: Distinct request methods (name and options) a server keeps built.
_METHOD_CACHE_SIZE = 64


class Serving:
    """Serves chat and text completions on ``session`` with the server's defaults: the method
    (built, and so checked, here: a bad one raises :class:`UserError`), its options, the decoding
    options, and the limits requests are checked against."""

    def __init__(
        self, session: EngineSession, metrics: Metrics, *, method: str, method_options: dict[str, Any] | None,
        decoding: Decoding | None, served_model_name: str | None, max_n: int, stream_interval: float,
    ) -> None:
        self.session, self.metrics, self.stream_interval = session, metrics, stream_interval
        self.method_name = method
        self.method_options = dict(method_options or {})
        self.method = make_method(method, self.method_options)
        # Methods that requests asked for, by name and options: built once, as a run builds one
        # method for all its problems (a method keeps per-engine set-up such as DEER's tokenized
        # transition phrases, costly to rebuild per request).
        self.methods: collections.OrderedDict[str, Method] = collections.OrderedDict()
        self.method.check_model(session.markers.has_thinking)
        self.model_name = served_model_name or session.config.model
        self.limits = ServedLimits(
            model_name=self.model_name, root_model=session.config.model, max_n=max_n,
            vocab_size=len(session.tokenizer), defaults=decoding or Decoding(),
        )

    async def create(self, request: Request, chat: bool) -> dict[str, Any] | AsyncIterator[str]:
        """A completion: the response body, or the stream's events for ``stream: true``."""
        endpoint = request.url.path
        start = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise ApiError(400, "the request body is not valid JSON") from None
        call = self.parse(body, chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if call.stream:
            # Starlette's StreamingResponse listens for the disconnect itself and cancels the stream,
            # which cancels the call: no polling per stream (hundreds of polls a second under load)
            starlette_watches = _streams_watch_disconnect(request.scope)

            def streamed(sinks: Sequence[Sink]) -> Any:
                return self.run(call, rid, sinks) if starlette_watches else self.run_watching(call, rid, request, sinks)

            return EventStream(call, rid, created, chat, self.session, streamed,
                               lambda res: self.record(endpoint, call, res, start), self.stream_interval).events()
        self.metrics.in_flight.inc()
        try:
            results = await self.run_watching(call, rid, request)
        finally:
            self.metrics.in_flight.dec()
        self.record(endpoint, call, results, start)
        return build_response(call, rid, created, chat, self.session, results)

    def parse(self, body: Any, chat: bool) -> Call:
        """The call a request body asks for; a fault in it raises :class:`ApiError`."""
        session = self.session
        if chat:
            req = ChatCompletionRequest.parse(body, self.limits)
            prompts = [_chat_ids(session, req.messages)]
        else:
            req = CompletionRequest.parse(body, self.limits)
            prompts = [p if isinstance(p, list) else list(session.tokenizer.encode(p, add_special_tokens=True))
                       for p in req.prompt]
        for i, ids in enumerate(prompts):
            try:
                session.check_prompt(ids, "the prompt" if len(prompts) == 1 else f"prompt {i}")
            except UserError as exc:
                param = "messages" if chat else "prompt"
                raise ApiError(400, str(exc), param, code="context_length_exceeded") from None
        method = _request_method(req.reasonexit, self.method_name, self.method_options, self.method, session,
                                 self.methods)
        return req.to_call(prompts, method, self.limits)

    async def run(self, call: Call, request_id: str, sinks: Sequence[Sink] | None = None) -> list[Result]:
        """All choices of a call (prompt-major), on the engine loop; cancelling this aborts them all.

        ``sinks[i]`` gets choice ``i``'s tokens as they become final (streaming)."""
        session = self.session

        async def all_choices() -> list[Result]:
            await call.method.prepare(session)  # e.g. a verifier engine, before any trace decodes
            return await gather_or_cancel(
                solve_job(session, call.method, Job(id=f"{request_id}.{p}", prompt_ids=ids), call.decoding, j,
                          sinks[p * call.n + j] if sinks is not None else None, call.stop)
                for p, ids in enumerate(call.prompts)
                for j in range(call.n)
            )

        try:
            return await session.arun(all_choices())
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an engine or controller failure: one line, keep serving
            what = "the engine died" if is_engine_dead(exc) else "the request failed"
            log.warning("%s: %s", what, one_line(exc))
            raise ApiError(500, f"{what}: {one_line(exc)}", type_="server_error", code="internal_error") from None

    async def run_watching(
        self, call: Call, request_id: str, request: Request, sinks: Sequence[Sink] | None = None
    ) -> list[Result]:
        """:meth:`run`, cancelled if the client disconnects before it finishes."""
        task = asyncio.ensure_future(self.run(call, request_id, sinks))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    raise ApiError(499, "client disconnected", code="client_disconnected")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def record(self, endpoint: str, call: Call, results: list[Result], start: float) -> None:
        """Count a finished call in the server's metrics."""
        self.metrics.record(endpoint, call.method.name, sum(len(p) for p in call.prompts), results,
                            time.perf_counter() - start)


def _streams_watch_disconnect(scope: Any) -> bool:
    """True when Starlette's ``StreamingResponse`` watches for the client's disconnect itself: it
    does for ASGI servers of spec version below 2.4 (uvicorn's today); from 2.4 on it relies on
    ``send`` failing, which only happens at the next chunk, so the call watches the connection."""
    spec = str(scope.get("asgi", {}).get("spec_version", "2.0"))
    try:
        return tuple(int(p) for p in spec.split(".")) < (2, 4)
    except ValueError:
        return False


def _chat_ids(session: EngineSession, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids of checked chat messages, by the model's chat template."""
    try:
        return session.chat_prompt_ids(messages)
    except Exception as exc:  # noqa: BLE001 - the chat template rejected the messages
        raise ApiError(400, f"the chat template failed: {one_line(exc)}", "messages") from None


def _request_method(
    extra: dict[str, Any] | None,
    default_name: str,
    default_options: dict[str, Any],
    default_method: Method,
    session: EngineSession,
    cache: collections.OrderedDict[str, Method] | None = None,
) -> Method:
    """The method of a request: the server's unless ``"reasonexit": {"method": ..., options...}`` (as
    checked by the request model) says otherwise. Options given for the server's own method are
    merged over the server's options; another method starts from its own defaults. Built methods
    are kept in ``cache`` (least recently used out first) by name and options."""
    if extra is None:
        return default_method
    options = dict(extra)
    name = options.pop("method", default_name)
    if name == default_name and not options:
        return default_method
    base = default_options if name == default_name else {}
    key = json.dumps([name, {**base, **options}], sort_keys=True, default=repr)
    if cache is not None and key in cache:
        cache.move_to_end(key)
        return cache[key]
    try:
        meth = make_method(name, {**base, **options})
        meth.check_model(session.markers.has_thinking)
        for rule in meth.step_rules():
            session.require_rule(rule, name)
    except UserError as exc:
        raise ApiError(400, str(exc), _option_named(exc, options)) from None
    if cache is not None:
        cache[key] = meth
        while len(cache) > _METHOD_CACHE_SIZE:
            cache.popitem(last=False)
    return meth


def _option_named(exc: UserError, options: dict[str, Any]) -> str:
    """The ``param`` of a method that could not be built: the option its error names, else the
    method. Method errors name an option only in their text (``--flag`` or ``'key'``)."""
    text = str(exc)
    for key in options:
        flag = "--" + key.lstrip("-").replace("_", "-")
        if flag in text or repr(key) in text:
            return f"reasonexit.{key}"
    return "reasonexit.method"
