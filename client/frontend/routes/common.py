"""Small helpers the routers share."""

from __future__ import annotations

from fastapi import Request

from client.frontend.errors import APIError
from client.frontend.generation import FrontendState


def frontend_state(request: Request) -> FrontendState:
    """The app's FrontendState (set by the lifespan)."""
    return request.app.state.frontend


def check_model(requested: str | None, state: FrontendState) -> None:
    """404 for a model name this server does not serve (no name means the served one, as vLLM)."""
    if requested is not None and requested != state.config.served_name:
        raise APIError(404, f"The model `{requested[:100]}` does not exist.", "model")


def count_tokens(state: FrontendState, endpoint: str, prompt_tokens: int, completion_tokens: int) -> None:
    state.metrics.prompt_tokens.labels(endpoint).inc(prompt_tokens)
    state.metrics.completion_tokens.labels(endpoint).inc(completion_tokens)
