"""OpenAI-shape errors, and the one place that maps failures (ours, Triton's, gRPC's) to HTTP statuses."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import grpc
from fastapi.responses import Response

from backend.errors import (
    ERROR_CODES,
    ErrorKind,
    OverloadedError,
    ServingError,
    ValidationError,
    error_kind,
    public_message,
)

logger = logging.getLogger(__name__)

# OpenAI's error `type` per HTTP status (as vLLM's create_error_response names them).
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    499: "CancelledError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

# The Triton model's input names, and the OpenAI parameter each one comes from.
TRITON_INPUT_PARAMS = {
    "text_input": "prompt",
    "input_ids": "prompt",
    "messages": "messages",
    "prompt_embeds": "prompt_embeds",
    "prompt_embeds_fp16": "prompt_embeds",
    "prompt_embeds_bf16": "prompt_embeds",
    "prompt_embeds_lengths": "messages",
    "sampling_parameters": None,
    "stream": "stream",
    "exclude_input_in_output": None,
    "request": None,  # the engine's own input checks (backend/engine.py)
    "return_finish_reason": None,
    "return_num_input_tokens": None,
    "return_num_output_tokens": None,
    "return_output_token_ids": None,
}
_TRITON_PARAM_RE = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?([a-z_0-9]+)(?:\.([a-z_0-9]+))?: ")
_UNAVAILABLE_WORDS = ("overloaded", "shutting down", "not running", "engine died", "unavailable",
                      "not ready", "unknown model", "is not found", "failed to connect", "connection refused")


@dataclasses.dataclass
class APIError(Exception):
    """An error that is answered to the client as OpenAI error JSON with `status`."""

    status: int
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """OpenAI's error object (vLLM's ErrorResponse shape)."""
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "APIError"),
                          "param": self.param, "code": self.status}}

    def response(self) -> Response:
        """The error as JSON; ASCII-escaped, so any text (even a lone surrogate) encodes."""
        return Response(json.dumps(self.body()), status_code=self.status, media_type="application/json")


def from_serving_error(exc: ServingError, param_map: dict[str, str | None] | None = None) -> APIError:
    """Our typed errors (backend.errors) -> APIError, through backend.errors.ERROR_CODES."""
    _, status = ERROR_CODES[error_kind(exc)]
    if isinstance(exc, OverloadedError):
        status = 429
    param = exc.parameter if isinstance(exc, ValidationError) else None
    if param_map and param in param_map:
        param = param_map[param] or param
    return APIError(status, public_message(exc), param)


def from_triton_message(text: str) -> APIError:
    """Triton's error text (gRPC streams carry no code) -> APIError, by its leading parameter name."""
    text = text.strip()
    if len(text) > 300:
        text = text[:297] + "..."
    match = _TRITON_PARAM_RE.match(text)
    if match and match.group(1) in TRITON_INPUT_PARAMS:
        name = match.group(1)
        param = TRITON_INPUT_PARAMS[name] or name
        if name == "sampling_parameters" and match.group(2):
            # `sampling_parameters.structured_outputs: ...`: the request field of the same name.
            return APIError(400, f"{match.group(2)}: {text[match.end():]}", match.group(2))
        # Name the parameter the HTTP client sent (`prompt`, not Triton's `text_input`).
        return APIError(400, f"{param}: {text[match.end():]}" if param != name else text, param)
    lowered = text.lower()
    if lowered.startswith("overloaded"):  # the model's admission control: retry later
        return APIError(429, text)
    if "cancelled" in lowered:
        return APIError(499, text)
    if any(word in lowered for word in _UNAVAILABLE_WORDS):
        return APIError(503, text)
    return APIError(500, text)


def from_grpc_error(exc: grpc.RpcError) -> APIError:
    """A transport failure talking to Triton: unreachable is 503, the rest 500."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return APIError(503, f"inference server unavailable: {str(details)[:200]}")
    if code == grpc.StatusCode.CANCELLED:
        return APIError(499, "request cancelled")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return from_triton_message(str(details))
    return APIError(500, f"inference server error: {code}: {str(details)[:200]}")


def to_api_error(exc: BaseException) -> APIError:
    """Any exception -> APIError; the single mapping the routers use."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ServingError):
        return from_serving_error(exc)
    if isinstance(exc, grpc.RpcError):
        return from_grpc_error(exc)
    logger.error("internal error", exc_info=exc)
    _, status = ERROR_CODES[ErrorKind.INTERNAL]
    return APIError(status, public_message(exc))
