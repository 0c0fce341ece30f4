"""GET /v1/models, /health and /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from client.frontend.errors import APIError
from client.frontend.routes.common import frontend_state

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The one served model, in OpenAI's list shape."""
    name = frontend_state(request).config.served_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": _STARTED,
                                        "owned_by": "triton", "root": name, "parent": None}]}


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when Triton and the model are ready, 503 otherwise (load balancers poll this)."""
    if await frontend_state(request).client.is_ready():
        return Response(status_code=200)
    raise APIError(503, "the inference server or the model is not ready")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format: request counts, latencies, token counts (all workers together)."""
    return Response(frontend_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
