"""What wraps the routes of ``reasonexit serve``: bearer-key checking, Prometheus counters, error bodies."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .protocol import ApiError


def error_response(err: ApiError) -> Any:
    """The JSON response of an :class:`ApiError`, with its status."""
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status)


class BearerAuth:
    """ASGI middleware: ``/v1/`` requests need ``Authorization: Bearer <api_key>`` (else 401).

    A plain ASGI class rather than Starlette's ``BaseHTTPMiddleware``, which re-wraps every
    response body and ``receive`` call in anyio streams and task groups: a cost paid per chunk
    by every streaming client.
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
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass
class Metrics:
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
    def create(cls) -> "Metrics":
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

    def record(self, endpoint: str, method: str, prompt_tokens: int, results: Any, seconds: float) -> None:
        """Count a finished request: its choices' exits and tokens, its latency, a 200."""
        for r in results:
            self.exits.labels(method, r.exit_reason).inc()
            self.output_tokens.labels(method).inc(r.output_tokens)
            self.compute_tokens.labels(method).inc(r.compute_tokens)
        self.prompt_tokens.labels(method).inc(prompt_tokens)
        self.latency.labels(endpoint, method).observe(seconds)
        self.requests.labels(endpoint, "200").inc()
