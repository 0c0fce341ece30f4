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
from backend.interface import INPUT_TO_OPENAI, SAMPLING_PARAMETERS
from backend.sampling import FIELDS as SAMPLING_FIELDS
from client.triton_errors import parse_error

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

# An error's kind tag (client.triton_errors) -> HTTP status, from the one table (backend.errors).
_TAG_STATUS = {code_name: status for code_name, status in ERROR_CODES.values()}
# Untagged text comes from Triton itself, not the model (unknown model, model not loaded, server
# shutting down): the model answers every error of its own with a tag.
_UNTAGGED_STATUS = 503
_SAMPLING_FIELD_RE = re.compile(r"([a-z_0-9]+)[ .:]")

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


def _sampling_field(message: str) -> str | None:
    """The request field a `sampling_parameters: <field> ...` error is about (the sampling table's names)."""
    match = _SAMPLING_FIELD_RE.match(message.removeprefix(f"{SAMPLING_PARAMETERS}: "))
    return match.group(1) if match and match.group(1) in SAMPLING_FIELDS else None


def from_triton_message(text: str) -> APIError:
    """A model error's text (gRPC streams carry no code) -> APIError, by its kind tag and the input it names."""
    info = parse_error(text)
    message = info.message.strip()
    if len(message) > 300:
        message = message[:297] + "..."
    if info.kind is None:
        return APIError(_UNTAGGED_STATUS, message)
    status = _TAG_STATUS[info.kind]
    if info.overloaded:
        status = 429  # the model's admission control: retry later
    param = None
    if status == 400 and info.parameter is not None:
        param = INPUT_TO_OPENAI.get(info.parameter) or info.parameter
        if info.parameter == SAMPLING_PARAMETERS:
            field = _sampling_field(message)
            if field is not None:  # `sampling_parameters: structured_outputs is not valid` names the field
                return APIError(400, f"{field}: {message.removeprefix(f'{SAMPLING_PARAMETERS}: ')}", field)
        elif param != info.parameter:
            # Name the parameter the HTTP client sent (`prompt`, not Triton's `text_input`).
            message = f"{param}: {message.removeprefix(f'{info.parameter}: ')}"
    return APIError(status, message, param)


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
