"""ASGI middleware: the API key (401), the request-body cap (413) and Prometheus request metrics.

All are plain ASGI so they see streamed bodies and streamed responses: the body cap counts bytes
as they arrive (Content-Length can be absent or wrong), and a request's latency runs until the
last byte of its response, also for Server-Sent Events.

With several worker processes, metrics use prometheus_client's multiprocess mode (the
PROMETHEUS_MULTIPROC_DIR the launcher sets): every worker writes its own files and /metrics, on
whichever worker answers, adds them all up.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from client.frontend.errors import APIError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})


async def _send_error(send: Send, error: APIError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()] + (headers or [])})
    await send({"type": "http.response.body", "body": response.body})


OPEN_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapers need no key


class APIKeyMiddleware:
    """Answers 401 (OpenAI error JSON) unless `Authorization: Bearer <key>`; /health and /metrics stay open."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):  # constant time: the key is not guessable by timing
            await _send_error(send, APIError(401, "invalid or missing API key (Authorization: Bearer <key>)"),
                              [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 (OpenAI error JSON) once a request body passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = APIError(413, f"request body exceeds the limit of {self.max_bytes} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_error(send, error)
                return
        # Read the whole body here (the app would buffer it anyway), stopping at the cap, then
        # replay it: FastAPI turns any error raised while it reads the body into a 400.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, error)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], None, receive), send)


def _replay(messages: list[Message], then: Message | None, receive: Receive) -> Receive:
    """A receive() that gives `messages`, then `then`, then whatever the client sends next (disconnect)."""
    pending = list(messages) + ([then] if then is not None else [])

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class Metrics:
    """The frontend's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.requests = Counter("frontend_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("frontend_request_duration_seconds",
                                 "Time from request to the last response byte (streams included)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("frontend_time_to_first_token_seconds",
                                     "Time from request to the first generated text, streaming requests",
                                     ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("frontend_prompt_tokens_total",
                                     "Prompt tokens after placeholder expansion", ["endpoint"], registry=self.registry)
        self.completion_tokens = Counter("frontend_completion_tokens_total", "Generated tokens",
                                         ["endpoint"], registry=self.registry)
        self.disconnects = Counter("frontend_client_disconnects_total",
                                 "Requests whose client left before the end (Triton request cancelled)",
                                 ["endpoint"], registry=self.registry)
        self.triton_streams = Counter("frontend_triton_streams_opened_total",
                                      "gRPC streams opened to Triton (each carries one request at a time and is "
                                      "kept for the next)", registry=self.registry)

    def exposition(self) -> bytes:
        """Prometheus text: this process's metrics, or all workers' added up in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class MetricsMiddleware:
    """Counts requests by endpoint and status, and times them to the end of the response."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope.get("path", "") if scope.get("path") in ENDPOINTS else "other"
        start = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
