"""Typed errors of the serving path, and the one table that maps them to Triton and HTTP codes."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, independent of the transport that reports it."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


# One mapping for every transport: Triton error code name, HTTP status.
ERROR_CODES: dict[ErrorKind, tuple[str, int]] = {
    ErrorKind.INVALID_ARGUMENT: ("INVALID_ARG", 400),
    ErrorKind.UNAVAILABLE: ("UNAVAILABLE", 503),
    ErrorKind.CANCELLED: ("CANCELLED", 499),
    ErrorKind.INTERNAL: ("INTERNAL", 500),
}


class ServingError(Exception):
    """Base of every error this package raises on purpose."""

    kind = ErrorKind.INTERNAL


class ValidationError(ServingError):
    """A request input is malformed; `parameter` names the input at fault."""

    kind = ErrorKind.INVALID_ARGUMENT

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        self.message = message
        super().__init__(f"{parameter}: {message}")


class EngineUnavailableError(ServingError):
    """The engine is not running (dead, starting or shutting down); retrying later may work."""

    kind = ErrorKind.UNAVAILABLE


class OverloadedError(EngineUnavailableError):
    """Admission control refused the request: too much work is already queued."""


class RequestCancelledError(ServingError):
    """The client cancelled the request."""

    kind = ErrorKind.CANCELLED


class ConfigError(Exception):
    """The model's configuration is invalid; raised while the model loads, never per request."""


def error_kind(exc: BaseException) -> ErrorKind:
    """Classify any exception; unknown ones are internal errors."""
    if isinstance(exc, ServingError):
        return exc.kind
    return ErrorKind.INTERNAL


def public_message(exc: BaseException, limit: int = 300) -> str:
    """Short, bounded error text for clients; internal errors don't leak their details' size."""
    text = str(exc) if isinstance(exc, ServingError) else f"internal error: {type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tagged_message(exc: BaseException) -> str:
    """The error text the model sends: "[INVALID_ARG] sampling_parameters: ...".

    The kind tag (the Triton code name, see backend.interface.ERROR_TAGS) leads the text because
    a gRPC stream carries only the message; client.triton_errors.parse_error reads it back.
    """
    code_name, _ = ERROR_CODES[error_kind(exc)]
    return f"[{code_name}] {public_message(exc)}"
