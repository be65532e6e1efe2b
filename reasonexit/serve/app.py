"""The FastAPI app of ``reasonexit serve``: thin routes that hand each request to the serving object.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text format). What a request may hold is in
:mod:`~reasonexit.serve.protocol`, how it runs in :mod:`~reasonexit.serve.serving`, what comes
back in :mod:`~reasonexit.serve.responses` and :mod:`~reasonexit.serve.streaming`.
"""

from typing import Any

from ..engine import EngineSession
from ..methods.base import Decoding


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
    # imported here, not at module level: the CLI imports this package for its flags. No
    # ``from __future__ import annotations`` in this module, so FastAPI sees ``Request`` itself.
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    from .middleware import BearerAuth, Metrics, error_response
    from .protocol import ApiError
    from .serving import Serving

    metrics = Metrics.create()
    serving = Serving(session, metrics, method=method, method_options=method_options, decoding=decoding,
                      served_model_name=served_model_name, max_n=max_n, stream_interval=stream_interval)
    app = FastAPI(title="reasonexit", docs_url=None, redoc_url=None)
    app.state.session = session
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Any:
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return error_response(exc)

    if api_key is not None:
        app.add_middleware(
            BearerAuth, api_key=api_key, rejected=lambda path: metrics.requests.labels(path, "401").inc()
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
            {"id": serving.model_name, "object": "model", "created": 0, "owned_by": "reasonexit",
             "root": session.config.model}
        ]}

    async def completion(request: Request, chat: bool) -> Any:
        out = await serving.create(request, chat)
        if isinstance(out, dict):
            return JSONResponse(out)
        return StreamingResponse(out, media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await completion(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await completion(request, chat=False)

    return app
