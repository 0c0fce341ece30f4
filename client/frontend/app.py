"""The FastAPI application: routers, error handlers, middleware, and the lifespan that owns the Triton client."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import AsyncIterator, Callable

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from backend.errors import ServingError
from backend.lifecycle import freeze_heap
from client.frontend.config import FrontendConfig, from_json
from client.frontend.errors import APIError, to_api_error
from client.frontend.generation import FrontendState
from client.frontend.limits import LeaseMiddleware
from client.frontend.middleware import APIKeyMiddleware, BodyLimitMiddleware, Metrics, MetricsMiddleware
from client.frontend.routes import chat, completions, system
from client.frontend.triton_client import GenerationClient, TritonClient

logger = logging.getLogger(__name__)
CONFIG_ENV = "TRITON_FRONTEND_CONFIG"  # the config, as JSON, for worker processes (app_from_env)


def _location(loc: tuple) -> str:
    """Pydantic's error location -> `messages[0].content[1].data` (union branch names dropped)."""
    out = ""
    for item in loc:
        if item == "body":
            continue
        if isinstance(item, int):
            out += f"[{item}]"
        elif "[" in str(item) or "-" in str(item):  # e.g. 'list[...]', 'function-after[...]'
            continue
        else:
            out += ("." if out else "") + str(item)
    return out


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI/pydantic request errors -> one short 400 that names the first bad parameter."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON")
    param = _location(tuple(first.get("loc", ()))) or None
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")[:200]
    if first.get("type") == "extra_forbidden":
        message = "unknown or unsupported parameter"
    return APIError(400, f"{param}: {message}" if param else message, param)


def create_app(config: FrontendConfig, client_factory: Callable[[], GenerationClient] | None = None) -> FastAPI:
    """Build the app; the generation client is made inside the serving loop (gRPC aio needs it)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = client_factory() if client_factory else TritonClient(
            config.triton_url, config.triton_model, timeout_s=config.request_timeout_s,
            metrics_url=config.metrics_url, on_stream_open=metrics.triton_streams.inc)
        app.state.frontend = FrontendState(config, client, metrics)
        logger.info("serving %s (Triton model %s at %s)", config.served_name, config.triton_model, config.triton_url)
        try:
            yield
        finally:
            app.state.frontend.close()
            close = getattr(client, "close", None)
            if close is not None:
                await close()

    app = FastAPI(title="Triton vLLM prompt-embeds frontend", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(system.router)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc).response()

    @app.exception_handler(ServingError)
    async def _serving(_: Request, exc: ServingError) -> Response:
        return to_api_error(exc).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        return to_api_error(exc).response()

    # add_middleware wraps: the last added runs first. Order of a request: metrics (sees every
    # status), API key (before any body is read), body cap, lease release (after the response ends).
    app.add_middleware(LeaseMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def setup_process(config: FrontendConfig) -> None:
    """Process-wide settings of a serving process: logging, torch on one intra-op thread, a frozen heap.

    A request's tensor work here is small (a finiteness check, a cast), but torch spreads each op over
    every core with OpenMP; where the engine keeps the cores busy, waiting for that thread team cost
    ~40 ms a request (2-core box, 128 x 2048 rows: decode 40 ms -> 3 ms, TTFT 73 -> 33 ms). Requests
    run in parallel on the decode pool and the worker processes instead.

    The heap is frozen for the garbage collector (backend.lifecycle.freeze_heap), as vLLM's API
    server does: the ~220,000 objects the imports leave are never garbage, yet a full collection walks them all (0.11-0.13 s on the
    CPU box, measured during startup) with the event loop stopped. Requests' objects are collected
    as before. No change in throughput was measurable (benchmarks/ab_frontend); it keeps those
    pauses out of serving.
    """
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    freeze_heap()


def app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes: the config comes as JSON in TRITON_FRONTEND_CONFIG."""
    config = from_json(os.environ[CONFIG_ENV])
    setup_process(config)
    return create_app(config)
