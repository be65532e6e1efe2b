"""``reasonexit serve``: an OpenAI-compatible HTTP server whose every method exits early.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text format). Each request runs as one
controller (:func:`reasonexit.runs.runner.solve_job`) per choice on the shared engine session, the
same one the CLI and the Python API use, so ``usage`` is the same honest accounting: ``prompt_tokens``,
``completion_tokens`` (what the user gets), plus ``compute_tokens`` (everything decoded: probes,
branches, discarded continuations) and ``exit_reason``.

The method and its options go in an extra body field, ``"reasonexit": {"method": "deer",
"threshold": 0.9}``, checked by the same declarations as the CLI (:func:`make_method`); the
server's flags are the defaults. The thinking is returned in ``reasoning_content`` and the answer
in ``content``.

Streaming (``stream: true``): a token is sent once it is final. Every choice's controller gets a
token sink (:attr:`~reasonexit.methods.base.Context.token_sink`): ``vanilla`` and ``budget`` hand
over every token as it is decoded; DEER and FlashThink (:mod:`reasonexit.methods.early_exit`)
stream the thinking up to the earliest cut a pending or future check could still take, and on exit
the closing tokens and the answer as it decodes; ``ffs`` (and ``majority``) cannot stream before a
winner exists, and stream the winner's completion once it has won. Thinking goes out as
``reasoning_content`` deltas and the answer after the end marker as ``content`` deltas (chat;
completions stream ``text``). Then a chunk with ``finish_reason`` per choice, a ``usage`` chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``. The deltas add up to the
non-streamed response of the same request and seed. A client that disconnects (streaming or not)
cancels its controllers, which aborts every engine request of the call.

``stop`` (a string or a list of strings) goes to vLLM for every request whose tokens the user gets:
vanilla's and budget's request, the early-exit methods' main trace (thinking included, as vLLM
applies stop strings to the reasoning too) and their answer after an exit, and each branch of
``ffs``/``majority``; never to DEER's probes or FlashThink's verifier calls. The completion ends
with the token that completes the stop string and keeps it (reasonexit works in token ids: as
vLLM's ``include_stop_str_in_output``), and ``finish_reason`` is ``stop``. ``logprobs`` is a 400.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.session import EngineSession, reserve_spare_core
from ..errors import UserError, is_engine_dead, one_line
from ..methods.base import Decoding, Method, make_method
from ..options import opt
from ..runs.results import Result
from ..runs.runner import Job, gather_or_cancel, solve_job
from ..thinking import ThinkingTracker

log = logging.getLogger(__name__)

#: Seconds between checks whether the client of a non-streaming request is still connected.
_DISCONNECT_POLL_S = 0.25


@dataclass
class ServeOptions:
    """Settings of ``reasonexit serve`` (engine, decoding and method flags are those of ``eval``)."""

    host: str = opt("127.0.0.1", help="address to listen on")
    port: int = opt(8000, help="TCP port to listen on")
    api_key: str | None = opt(None, help="require this key as 'Authorization: Bearer KEY' (default: no auth)")
    method: str = opt("vanilla", help="default method of requests that name none (`reasonexit methods` lists them)")
    served_model_name: str | None = opt(None, help="model name in /v1/models and responses (default: --model)")
    max_n: int = opt(16, help="largest n (choices per request) accepted")
    stream_interval: float = opt(
        0.1,
        help="seconds at least between a stream's chunks after its first (tokens final meanwhile go in one "
        "chunk; 0: a chunk per engine step)",
    )


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class _Call:
    """One parsed request: prompts (token ids), decoding, method, n, streaming."""

    prompts: list[list[int]]
    decoding: Decoding
    method: Method
    n: int
    stream: bool
    include_usage: bool
    echo_model: str
    stop: tuple[str, ...] = ()
    #: Keep the stop string in the text (vLLM's ``include_stop_str_in_output``); by default it is
    #: cut off, as the OpenAI API does.
    include_stop: bool = False

    @property
    def trim(self) -> tuple[str, ...]:
        """The stop strings cut from the response text."""
        return () if self.include_stop else self.stop


@dataclass
class _Metrics:
    """Prometheus counters of one server (its own registry, so several apps can live in a process)."""

    registry: Any = None
    requests: Any = None
    exits: Any = None
    output_tokens: Any = None
    compute_tokens: Any = None
    prompt_tokens: Any = None
    latency: Any = None
    in_flight: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls) -> "_Metrics":
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        reg = CollectorRegistry()
        return cls(
            registry=reg,
            requests=Counter("reasonexit_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                             registry=reg),
            exits=Counter("reasonexit_exits", "choices finished, by method and exit reason", ["method", "exit_reason"],
                          registry=reg),
            output_tokens=Counter("reasonexit_output_tokens", "completion tokens returned", ["method"], registry=reg),
            compute_tokens=Counter("reasonexit_compute_tokens", "tokens decoded (probes, branches included)",
                                   ["method"], registry=reg),
            prompt_tokens=Counter("reasonexit_prompt_tokens", "prompt tokens of requests", ["method"], registry=reg),
            latency=Histogram("reasonexit_request_latency_seconds", "time from request to full result",
                              ["endpoint", "method"], registry=reg,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)),
            in_flight=Gauge("reasonexit_requests_in_flight", "requests being served", registry=reg),
        )


class _BearerAuth:
    """ASGI middleware: ``/v1/`` requests need ``Authorization: Bearer <api_key>`` (else 401).

    A plain ASGI class rather than Starlette's ``BaseHTTPMiddleware``: that one re-wraps every
    response body and ``receive`` call in anyio streams and task groups, which profiling showed
    as a fifth of the server's time at 64 streaming clients.
    """

    def __init__(self, app: Any, api_key: str, rejected: Callable[[str], None]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode("latin-1")
        self.rejected = rejected

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if header != self.expected:
                self.rejected(scope["path"])
                err = ApiError(
                    401,
                    "missing or wrong API key (send 'Authorization: Bearer KEY')",
                    None,
                    "authentication_error",
                    "invalid_api_key",
                )
                await _error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error_response(err: ApiError) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status)


def _get(body: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    """A body field of the given type(s) (``None`` counts as absent); a wrong type is a 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"{name} has the wrong type: {value!r}", name)
    if not isinstance(value, types):
        raise ApiError(400, f"{name} has the wrong type: {value!r}", name)
    return value


def create_app(
    session: EngineSession,
    *,
    method: str = "vanilla",
    method_options: dict[str, Any] | None = None,
    decoding: Decoding | None = None,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_n: int = 16,
    stream_interval: float = 0.1,
) -> Any:
    """The FastAPI app serving ``session``; ``method``/``method_options``/``decoding`` are the defaults.

    The default method is built (and so checked) here; a bad one raises :class:`UserError`.
    """
    # imported here, not at module level: the CLI imports this module for its flags. No
    # ``from __future__ import annotations`` in this module, so FastAPI sees ``Request`` itself.
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    default_options = dict(method_options or {})
    default_method = make_method(method, default_options)
    # Methods that requests asked for, by name and options: built once, as a run builds one method
    # for all its problems (a method keeps per-engine set-up such as DEER's tokenized transition
    # phrases, which cost a fifth of the server's time when rebuilt per request).
    methods: collections.OrderedDict[str, Method] = collections.OrderedDict()
    default_method.check_model(session.markers.has_thinking)
    defaults = decoding or Decoding()
    model_name = served_model_name or session.config.model
    metrics = _Metrics.create()
    app = FastAPI(title="reasonexit", docs_url=None, redoc_url=None)
    app.state.session = session
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Any:
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return _error_response(exc)

    if api_key is not None:
        app.add_middleware(
            _BearerAuth, api_key=api_key, rejected=lambda path: metrics.requests.labels(path, "401").inc()
        )

    @app.get("/health")
    async def health() -> Any:
        return JSONResponse({"status": "ok" if session.started else "starting"})

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "reasonexit", "root": session.config.model}
        ]}

    def parse(body: Any, chat: bool) -> _Call:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        name = _get(body, "model", str, model_name)
        if name not in (model_name, session.config.model):
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model_name!r}", "model",
                           code="model_not_found")
        if chat:
            prompts = [_chat_ids(session, body.get("messages"))]
            max_tokens = _get(body, "max_completion_tokens", int, None)
            if max_tokens is None:
                max_tokens = _get(body, "max_tokens", int, defaults.max_tokens)
        else:
            prompts = _completion_ids(session, body.get("prompt"))
            max_tokens = _get(body, "max_tokens", int, defaults.max_tokens)
        for i, ids in enumerate(prompts):
            try:
                session.check_prompt(ids, "the prompt" if len(prompts) == 1 else f"prompt {i}")
            except UserError as exc:
                param = "messages" if chat else "prompt"
                raise ApiError(400, str(exc), param, code="context_length_exceeded") from None
        if max_tokens < 1:
            raise ApiError(400, f"max_tokens must be >= 1, got {max_tokens}", "max_tokens")
        dec = _decoding(
            defaults,
            max_tokens=max_tokens,
            temperature=float(_get(body, "temperature", (int, float), defaults.temperature)),
            top_p=float(_get(body, "top_p", (int, float), defaults.top_p)),
            top_k=_get(body, "top_k", int, defaults.top_k),
            seed=_get(body, "seed", int, defaults.seed),
        )
        n = _get(body, "n", int, 1)
        if not 1 <= n <= max_n:
            raise ApiError(400, f"n must be between 1 and {max_n}, got {n}", "n")
        stop = _stop_strings(body.get("stop"))
        include_stop = bool(_get(body, "include_stop_str_in_output", bool, False))
        for unsupported in ("logprobs", "tools", "functions", "response_format"):
            if body.get(unsupported) not in (None, False, [], {}):
                raise ApiError(400, f"{unsupported} is not supported by reasonexit serve", unsupported)
        stream = bool(_get(body, "stream", bool, False))
        stream_options = _get(body, "stream_options", dict, {})
        return _Call(
            prompts=prompts,
            decoding=dec,
            method=_request_method(body.get("reasonexit"), method, default_options, default_method, session,
                                   methods),
            n=n,
            stream=stream,
            include_usage=bool(stream_options.get("include_usage")),
            echo_model=name,
            stop=stop,
            include_stop=include_stop,
        )

    async def run(
        call: _Call, request_id: str, sinks: Sequence[Callable[[list[int]], None]] | None = None
    ) -> list[Result]:
        """All choices of a call (prompt-major), on the engine loop; cancelling this aborts them all.

        ``sinks[i]`` gets choice ``i``'s tokens as they become final (streaming)."""

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
        call: _Call, request_id: str, request: Request, sinks: Sequence[Callable[[list[int]], None]] | None = None
    ) -> list[Result]:
        """:func:`run`, cancelled if the client disconnects before it finishes."""
        task = asyncio.ensure_future(run(call, request_id, sinks))
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

    def record(endpoint: str, call: _Call, results: list[Result], start: float) -> None:
        name = call.method.name
        for r in results:
            metrics.exits.labels(name, r.exit_reason).inc()
            metrics.output_tokens.labels(name).inc(r.output_tokens)
            metrics.compute_tokens.labels(name).inc(r.compute_tokens)
        metrics.prompt_tokens.labels(name).inc(sum(len(p) for p in call.prompts))
        metrics.latency.labels(endpoint, name).observe(time.perf_counter() - start)
        metrics.requests.labels(endpoint, "200").inc()

    async def handle(request: Request, chat: bool) -> Any:
        endpoint = request.url.path
        start = time.perf_counter()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise ApiError(400, "the request body is not valid JSON") from None
        call = parse(body, chat)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if call.stream:
            # Starlette's StreamingResponse listens for the disconnect itself and cancels the stream,
            # which cancels the call: no polling per stream (hundreds of polls a second under load)
            starlette_watches = _streams_watch_disconnect(request.scope)

            def streamed(sinks: Sequence[Callable[[list[int]], None]]) -> Any:
                return run(call, rid, sinks) if starlette_watches else run_watching(call, rid, request, sinks)

            return StreamingResponse(
                _sse(call, rid, created, chat, session, streamed, lambda res: record(endpoint, call, res, start),
                     stream_interval),
                media_type="text/event-stream",
            )
        metrics.in_flight.inc()
        try:
            results = await run_watching(call, rid, request)
        finally:
            metrics.in_flight.dec()
        record(endpoint, call, results, start)
        return JSONResponse(_response(call, rid, created, chat, session, results))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    return app


def _streams_watch_disconnect(scope: Any) -> bool:
    """True when Starlette's ``StreamingResponse`` watches for the client's disconnect itself: it
    does for ASGI servers of spec version below 2.4 (uvicorn's today); from 2.4 on it relies on
    ``send`` failing, which only happens at the next chunk, so the call watches the connection."""
    spec = str(scope.get("asgi", {}).get("spec_version", "2.0"))
    try:
        return tuple(int(p) for p in spec.split(".")) < (2, 4)
    except ValueError:
        return False


def _decoding(defaults: Decoding, **changes: Any) -> Decoding:
    """The request's decoding settings, checked by :class:`Decoding` itself (a bad one is a 400)."""
    try:
        return replace(defaults, **changes)
    except UserError as exc:
        text = str(exc)
        param = next((p for p in ("temperature", "top_p", "top_k", "seed", "max_tokens") if p in text), None)
        raise ApiError(400, text, param) from None


#: Distinct request methods (name and options) a server keeps built.
_METHOD_CACHE_SIZE = 64


def _request_method(
    extra: Any,
    default_name: str,
    default_options: dict[str, Any],
    default_method: Method,
    session: EngineSession,
    cache: collections.OrderedDict[str, Method] | None = None,
) -> Method:
    """The method of a request: the server's unless ``"reasonexit": {"method": ..., options...}`` says
    otherwise. Options given for the server's own method are merged over the server's options; another
    method starts from its own defaults. Built methods are kept in ``cache`` (least recently used
    out first) by name and options."""
    if extra is None:
        return default_method
    if not isinstance(extra, dict):
        raise ApiError(400, "reasonexit must be an object such as {\"method\": \"deer\", \"threshold\": 0.9}",
                       "reasonexit")
    options = dict(extra)
    name = options.pop("method", default_name)
    if not isinstance(name, str):
        raise ApiError(400, f"reasonexit.method must be a method name, got {name!r}", "reasonexit.method")
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
        text = str(exc)
        param = "reasonexit.method"
        for key in options:
            flag = "--" + key.lstrip("-").replace("_", "-")
            if flag in text or repr(key) in text:
                param = f"reasonexit.{key}"
                break
        raise ApiError(400, text, param) from None
    if cache is not None:
        cache[key] = meth
        while len(cache) > _METHOD_CACHE_SIZE:
            cache.popitem(last=False)
    return meth


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text ones
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: only text content parts are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", where)


def _chat_ids(session: EngineSession, messages: Any) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of chat messages", "messages")
    msgs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]")
        msgs.append({"role": m["role"], "content": _content_text(m.get("content"), f"messages[{i}].content")})
    try:
        return session.chat_prompt_ids(msgs)
    except Exception as exc:  # noqa: BLE001 - the chat template rejected the messages
        raise ApiError(400, f"the chat template failed: {one_line(exc)}", "messages") from None


def _completion_ids(session: EngineSession, prompt: Any) -> list[list[int]]:
    """Token ids of a completions ``prompt``: a string, a list of strings, token ids or lists of them.

    Text is tokenized as is (no chat template), with the tokenizer's special tokens (BOS) added.
    """
    if isinstance(prompt, str):
        prompt = [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "prompt must be a string, a list of strings, or token ids", "prompt")
    out = []
    vocab = len(session.tokenizer)
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            if not p:
                raise ApiError(400, f"prompt[{i}] is empty", "prompt")
            out.append(list(session.tokenizer.encode(p, add_special_tokens=True)))
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < vocab for t in p):
                raise ApiError(400, f"prompt[{i}] has token ids outside the vocabulary (0..{vocab - 1})", "prompt")
            out.append(list(p))
        else:
            raise ApiError(400, f"prompt[{i}] must be a string or a non-empty list of token ids", "prompt")
    return out


#: Stop strings per request at most, and characters per stop string at most.
MAX_STOP, MAX_STOP_CHARS = 16, 256


def _stop_strings(value: Any) -> tuple[str, ...]:
    """The request's ``stop``: a string or a list of strings (absent, ``""`` or ``[]``: none)."""
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise ApiError(400, f"stop must be a non-empty string or a list of them, got {value!r}", "stop")
    if len(items) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in items):
        raise ApiError(400, f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(dict.fromkeys(items))


def _finish_reason(res: Result, session: EngineSession, stop: Sequence[str] = ()) -> str:
    """``stop`` when the completion ended with end-of-sequence or with the token that completes a
    stop string, else ``length``."""
    ids = res.token_ids
    if not ids:
        return "length"
    if ids[-1] in set(session.eos_ids):
        return "stop"
    if stop:
        before = session.decode(ids[:-1])
        if any(s in res.text and s not in before for s in stop):
            return "stop"
    return "length"


def _usage(call: _Call, results: Sequence[Result]) -> dict[str, Any]:
    reasons = [r.exit_reason for r in results]
    prompt = sum(len(p) for p in call.prompts)
    completion = sum(r.output_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "compute_tokens": sum(r.compute_tokens for r in results),
        # one reason per choice when n > 1 or several prompts
        "exit_reason": reasons[0] if len(reasons) == 1 else reasons,
        "method": call.method.name,
    }


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string in it (the OpenAI API leaves the stop string out), and
    whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _stop_prefix_start(text: str, stop: Sequence[str]) -> int:
    """Where the longest end of ``text`` that could begin a stop string starts (``len(text)`` if
    none): text from there on may still turn out to be part of a stop string."""
    start = len(text)
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                start = min(start, len(text) - k)
                break
    return start


def _final_fields(res: Result, chat: bool, stop: Sequence[str]) -> dict[str, str]:
    """The response text fields of a result, cut at the first of the ``stop`` strings (nothing
    after it: a stop string in the thinking leaves no answer)."""
    fields = {"reasoning_content": res.thinking, "content": res.answer_text} if chat else {"text": res.text}
    if not stop:
        return fields
    out, stopped = {}, False
    for name, text in fields.items():
        if stopped:
            out[name] = ""
            continue
        out[name], stopped = _cut_at_stop(text, stop)
    return out


def _response(
    call: _Call, rid: str, created: int, chat: bool, session: EngineSession, results: Sequence[Result]
) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        extra = {"exit_reason": r.exit_reason, "compute_tokens": r.compute_tokens, "output_tokens": r.output_tokens}
        fields = _final_fields(r, chat, call.trim)
        if chat:
            message = {"role": "assistant", "content": fields["content"],
                       "reasoning_content": fields["reasoning_content"] or None}
            choices.append({"index": i, "message": message, "finish_reason": _finish_reason(r, session, call.stop),
                            "logprobs": None, "reasonexit": extra})
        else:
            choices.append({"index": i, "text": fields["text"], "finish_reason": _finish_reason(r, session, call.stop),
                            "logprobs": None, "reasonexit": extra})
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": call.echo_model,
        "choices": choices,
        "usage": _usage(call, results),
    }


class _ChoiceText:
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
        cut, found = _cut_at_stop(self.sent[name] + text, self.stop)
        if found:
            self.stopped = True
            self.held[name] = ""
            return cut[len(self.sent[name]) :]
        keep = _stop_prefix_start(text, self.stop)
        self.held[name] = text[keep:]
        return text[:keep]

    def finish(self, res: Result) -> list[tuple[str, str]]:
        """The rest of the final response (held-back text, or all of it if nothing was streamed)."""
        full = _final_fields(res, self.chat, self.stop)
        out = []
        for name, text in full.items():
            done = self.sent[name]
            if not text.startswith(done):  # cannot happen when the tokens streamed were final
                log.warning("streamed %s is not a prefix of the final one (%r vs %r)", name, done[-40:], text[:80])
                continue
            if len(text) > len(done):
                out.append((name, text[len(done) :]))
        return out


async def _sse(call: _Call, rid: str, created: int, chat: bool, session: EngineSession, run: Any,
               record: Any, interval: float = 0.0) -> AsyncIterator[str]:
    """Server-sent events of a streaming call.

    Every choice gets a token sink (:attr:`~reasonexit.methods.base.Context.token_sink`): its
    controller hands over tokens once they are final. The first are sent at once; after that,
    chunks go out at least ``interval`` seconds apart, each with all that became final meanwhile
    (on 2 CPU cores, one SSE chunk per engine step per client costs the server a large share of
    the CPU the engine needs; vLLM's own server has ``--stream-interval`` for the same reason). ``run``
    watches the connection while the controllers run: if the client disconnects, they are
    cancelled, which aborts every engine request of the call.
    """
    kind = "chat.completion.chunk" if chat else "text_completion"

    # what every chunk of this stream starts with, rendered once
    head = json.dumps({"id": rid, "object": kind, "created": created, "model": call.echo_model})[:-1]

    no_usage = ', "usage": null' if call.include_usage else ""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        tail = f', "usage": {json.dumps(usage)}' if usage is not None else no_usage
        return f'data: {head}, "choices": {json.dumps(choices)}{tail}}}\n\n'

    # The chunks of text deltas (all but a few of a stream's) are rendered by hand: the same bytes as
    # ``chunk([{"index": i, "delta": {...}, "finish_reason": None}])``, with only the text going
    # through the JSON encoder. One entry per choice index in every chunk, as OpenAI's and vLLM's
    # servers send: a step whose text spans the end of the thinking carries both fields in one delta
    # (clients read ``choices[0]``, or merge entries by index, and would lose a second entry's text).
    keys = {name: json.dumps(name) for name in (("reasoning_content", "content") if chat else ())}

    def text_chunk(i: int, pieces: list[tuple[str, str]]) -> str:
        if chat:
            fields = ", ".join(f"{keys[n]}: {json.dumps(t)}" for n, t in pieces)
            item = f'{{"index": {i}, "delta": {{{fields}}}, "finish_reason": null}}'
        else:
            item = f'{{"index": {i}, "text": {json.dumps("".join(t for _, t in pieces))}, "finish_reason": null}}'
        return f'data: {head}, "choices": [{item}]{no_usage}}}\n\n'

    def last_chunk(i: int, pieces: list[tuple[str, str]], finish: str) -> str:
        """A choice's closing chunk: what remains of its text, and its finish reason."""
        if chat:
            item = {"index": i, "delta": dict(pieces), "finish_reason": finish}
        else:
            item = {"index": i, "text": "".join(t for _, t in pieces), "finish_reason": finish}
        return chunk([item])

    total = len(call.prompts) * call.n
    if chat:
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for i in range(total)])
    loop = asyncio.get_running_loop()
    texts = [_ChoiceText(session, chat, call.trim) for _ in range(total)]
    # Final tokens wait in ``pending`` until the next chunk; one future at a time wakes this
    # generator (tokens arrived, the interval passed, or the call ended). No task or queue per
    # chunk: under load this loop runs hundreds of times a second on the engine's loop.
    pending: list[tuple[int, list[int]]] = []
    waiter: asyncio.Future[None] | None = None
    wake_on_tokens = True

    def wake(_: Any = None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put(i: int, ids: list[int]) -> None:
        pending.append((i, ids))
        if wake_on_tokens:
            wake()

    def sink(i: int) -> Callable[[list[int]], None]:
        # called on the engine loop: hand the tokens over to this (the server's) loop, directly when
        # the server runs on the engine loop (``serve``), else thread-safely
        if session.on_engine_loop(loop):
            return lambda ids: put(i, ids)
        return lambda ids: loop.call_soon_threadsafe(put, i, ids)

    task = asyncio.ensure_future(run([sink(i) for i in range(total)]))
    task.add_done_callback(wake)
    last = None  # when the last text chunk went out
    try:
        while True:
            delay = last + interval - loop.time() if last is not None and interval > 0 else 0.0
            if delay > 0 and not task.done():  # wait out the interval; the call's end cuts it short
                wake_on_tokens = False
                waiter = loop.create_future()
                timer = loop.call_later(delay, wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
            if not pending and not task.done():
                wake_on_tokens = True
                waiter = loop.create_future()
                await waiter
            if not pending:
                break  # the call has ended and every token it handed over has been sent
            # everything that became final meanwhile, in one chunk per choice
            items, pending[:] = pending[:], []
            merged: dict[int, list[int]] = {}
            for i, ids in items:
                merged.setdefault(i, []).extend(ids)
            out = []  # one write for all choices (each write is a send on the socket)
            for i, ids in merged.items():
                pieces = texts[i].feed(ids)
                if pieces:
                    out.append(text_chunk(i, pieces))
            if out:
                yield "".join(out)
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
    record(results)
    tail = []  # the closing events go out in one write (each write is a send on the socket)
    for i, r in enumerate(results):
        tail.append(last_chunk(i, texts[i].finish(r), _finish_reason(r, session, call.stop)))
    if call.include_usage:
        tail.append(chunk([], _usage(call, results)))
    tail.append("data: [DONE]\n\n")
    yield "".join(tail)


def serve(
    session: EngineSession,
    options: ServeOptions,
    *,
    method_options: dict[str, Any] | None = None,
    decoding: Decoding | None = None,
) -> None:
    """Build the app and serve it with uvicorn until interrupted (the engine is started first)."""
    import uvicorn

    app = create_app(
        session,
        method=options.method,
        method_options=method_options,
        decoding=decoding,
        api_key=options.api_key,
        served_model_name=options.served_model_name,
        max_n=options.max_n,
        stream_interval=options.stream_interval,
    )
    # The HTTP front end (requests, SSE chunks, socket writes) works for every token it streams. On
    # a small CPU machine an engine whose model threads take every core shares them with it, and a
    # model thread preempted mid-step stalls the others at the next barrier: the front end keeps
    # vLLM's spare core (see README, Serving). The user's --cpu-cores still wins.
    reserve_spare_core()
    session.serving = True  # vLLM's server defaults (step token budget), as `vllm serve` has
    session.start()
    # Served on the engine's own loop: HTTP handling, controllers and token streams share one
    # event loop, so no token crosses threads on its way to the client.
    server = uvicorn.Server(uvicorn.Config(app, host=options.host, port=options.port, log_level="warning"))
    session.run(server.serve())


@dataclass
class RunningServer:
    """A server started by :func:`start_server`: the ``uvicorn.Server`` and its run on the engine loop."""

    server: Any
    future: concurrent.futures.Future[Any]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait (at most ``timeout`` seconds) for the server to finish."""
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            self.future.result(timeout=timeout)


def start_server(app: Any, session: EngineSession, host: str = "127.0.0.1", port: int = 8000) -> RunningServer:
    """Serve ``app`` with uvicorn on the session's engine loop in the background (as ``serve`` does);
    returns once it listens."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    future = session.submit(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if future.done():
            future.result()  # raises why it could not start
            raise RuntimeError("the server stopped before it started")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start listening on {host}:{port} within 30 s")
        time.sleep(0.02)
    return RunningServer(server, future)
