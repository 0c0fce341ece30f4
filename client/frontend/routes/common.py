"""Small helpers the routers share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from client.frontend.errors import APIError
from client.frontend.generation import FrontendState
from client.frontend.schemas import SamplingFields


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


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string under `value` that is not valid Unicode (a lone surrogate), or None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, BaseModel):
        named = ((f"{path}.{k}" if path else k, v) for k, v in value.__dict__.items())
    elif isinstance(value, dict):
        # Map keys (logit_bias) are checked too, but the error names the map, never the caller's key.
        named = ((path, item) for pair in value.items() for item in pair)
    elif isinstance(value, (list, tuple)):
        named = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for name, item in named:
        found = _unencodable(item, name)
        if found is not None:
            return found
    return None


def check_unicode(body: BaseModel) -> None:
    """400 naming the field when any string in the request holds a lone UTF-16 surrogate.

    JSON allows `\\ud800` escapes that decode to no character; such text cannot be sent on as UTF-8.
    """
    path = _unencodable(body, "")
    if path is not None:
        raise APIError(400, f"{path}: contains an unpaired UTF-16 surrogate (not valid Unicode)", path)


@contextlib.contextmanager
def structure_errors(body: SamplingFields) -> Iterator[None]:
    """The model's refusal of a structured-outputs constraint names the field the client sent it in."""
    try:
        yield
    except APIError as exc:
        if exc.param == "structured_outputs" and body.structure_parameter != "structured_outputs":
            exc.param = body.structure_parameter
            exc.message = exc.message.replace("structured_outputs", body.structure_parameter, 1)
        raise
