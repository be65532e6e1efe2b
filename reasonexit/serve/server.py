"""Running the app of ``reasonexit serve`` under uvicorn on the engine session's own loop."""

import concurrent.futures
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from ..engine import EngineSession, reserve_spare_core
from ..methods.base import Decoding
from ..options import opt
from .app import create_app


@dataclass
class ServeOptions:
    """Settings of ``reasonexit serve`` (engine, decoding and method flags are those of ``eval``)."""

    host: str = opt("127.0.0.1", help="address to listen on")
    port: int = opt(8000, help="TCP port to listen on")
    api_key: str | None = opt(None, help="require this key as 'Authorization: Bearer KEY' (default: no auth)")
    method: str = opt("vanilla", help="default method of requests that name none (`reasonexit methods` lists them)")
    settings: str | None = opt(
        None, help="settings file of the default method and its options (written by `reasonexit calibrate`)"
    )
    served_model_name: str | None = opt(None, help="model name in /v1/models and responses (default: --model)")
    max_n: int = opt(16, help="largest n (choices per request) accepted")
    stream_interval: float = opt(
        0.1,
        help="seconds at least between a stream's chunks after its first (tokens final meanwhile go in one "
        "chunk; 0: a chunk per engine step)",
    )


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
