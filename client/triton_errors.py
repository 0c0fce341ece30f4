"""Read the kind and the parameter back out of an error message the model sent (see backend.errors)."""

from __future__ import annotations

import dataclasses
import re

from backend.interface import ERROR_TAGS, INPUT_NAMES, OVERLOADED_PREFIX

# "[KIND] parameter: message"; the parameter part only when it names one of the model's inputs
# (or "request", the engine's own checks).
_TAGGED = re.compile(r"^\s*\[([A-Z_]+)\] ?(.*)\Z", re.DOTALL)
# str(InferenceServerException) puts the gRPC status first: "[StatusCode.INVALID_ARGUMENT] [INVALID_ARG] ..."
_GRPC_STATUS = re.compile(r"^\s*\[StatusCode\.[A-Z_]+\]\s*")
_PARAMETER = re.compile(r"^([a-z_0-9]+): ")


@dataclasses.dataclass(frozen=True)
class TritonErrorInfo:
    """An error from the model: its kind tag (None when the text has none), the input it names, the text."""

    kind: str | None  # one of backend.interface.ERROR_TAGS
    parameter: str | None  # a model input name ("sampling_parameters"), or "request"
    message: str  # the text after the tag (still starting with "parameter: ")

    @property
    def overloaded(self) -> bool:
        """The model's admission control refused it ("[UNAVAILABLE] overloaded: ..."): retry later (HTTP 429)."""
        return self.kind == "UNAVAILABLE" and self.message.startswith(OVERLOADED_PREFIX)


def parse_error(text: str) -> TritonErrorInfo:
    """Split a model error message into kind, parameter and text; untagged text (Triton's own errors,
    e.g. an unknown model) gives kind None and the whole text."""
    text = _GRPC_STATUS.sub("", text, count=1)
    match = _TAGGED.match(text)
    kind, message = (match.group(1), match.group(2)) if match and match.group(1) in ERROR_TAGS else (None, text)
    named = _PARAMETER.match(message)
    parameter = named.group(1) if named and (named.group(1) in INPUT_NAMES or named.group(1) == "request") else None
    return TritonErrorInfo(kind=kind, parameter=parameter, message=message)


# What grpcio reports when tritonserver drops the TCP connection under a stream (not a model error;
# see README, Known issues).
_CONNECTION_RESET_WORDS = ("Stream removed", "Connection reset", "Broken pipe", "Socket closed")


def is_connection_reset(error: BaseException | str | None) -> bool:
    """The stream ended because the gRPC connection was dropped, not with an answer from the model."""
    return error is not None and any(word in str(error) for word in _CONNECTION_RESET_WORDS)
