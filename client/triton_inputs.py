"""Build the model's Triton input tensors and read its outputs; shared by every client here.

Works with both `tritonclient.grpc` and `tritonclient.http` (same InferInput API).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import ml_dtypes
import numpy as np

MODEL_NAME = "vllm_model"
RETURN_ALL = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
              "return_output_token_ids")
# Embedding tensors by numpy dtype: (input name, Triton datatype). tritonclient (since r26.06) takes
# BF16 only as ml_dtypes.bfloat16 arrays; anything else goes as FP32.
EMBEDDING_INPUTS = {
    np.dtype(np.float16): ("prompt_embeds_fp16", "FP16"),
    np.dtype(ml_dtypes.bfloat16): ("prompt_embeds_bf16", "BF16"),
    np.dtype(np.float32): ("prompt_embeds", "FP32"),
}


def _string(module: Any, name: str, value: str) -> Any:
    tensor = module.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=np.object_))
    return tensor


def _bool(module: Any, name: str, value: bool) -> Any:
    tensor = module.InferInput(name, [1], "BOOL")
    tensor.set_data_from_numpy(np.array([value], dtype=np.bool_))
    return tensor


def build_inputs(
    module: Any,
    *,
    text: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    embeds: np.ndarray | None = None,
    lengths: Sequence[int] | None = None,
    stream: bool = False,
    sampling: dict[str, Any] | None = None,
    exclude_input_in_output: bool | None = None,
    return_all: bool = True,
    returns: Sequence[str] | None = None,
) -> list[Any]:
    """Input tensors for one request.

    `embeds`: float16, ml_dtypes.bfloat16 or float32 go as prompt_embeds_fp16 / _bf16 / prompt_embeds,
    unchanged; other dtypes are cast to float32. `returns` names the return_* flags to set (the model
    builds only those outputs); without it, `return_all` sets every one.
    """
    inputs = []
    if text is not None:
        inputs.append(_string(module, "text_input", text))
    if messages is not None:
        inputs.append(_string(module, "messages", json.dumps(messages)))
    if embeds is not None:
        if embeds.dtype not in EMBEDDING_INPUTS:
            embeds = embeds.astype(np.float32)
        embeds = np.ascontiguousarray(embeds)
        name, wire = EMBEDDING_INPUTS[embeds.dtype]
        tensor = module.InferInput(name, list(embeds.shape), wire)
        tensor.set_data_from_numpy(embeds)
        inputs.append(tensor)
    if lengths is not None:
        tensor = module.InferInput("prompt_embeds_lengths", [len(lengths)], "INT32")
        tensor.set_data_from_numpy(np.asarray(lengths, dtype=np.int32))
        inputs.append(tensor)
    inputs.append(_bool(module, "stream", stream))
    if sampling is not None:
        inputs.append(_string(module, "sampling_parameters", json.dumps(sampling)))
    if exclude_input_in_output is not None:
        inputs.append(_bool(module, "exclude_input_in_output", exclude_input_in_output))
    if returns is not None:
        inputs.extend(_bool(module, name, True) for name in returns)
    elif return_all:
        inputs.extend(_bool(module, name, True) for name in RETURN_ALL)
    return inputs


@dataclasses.dataclass
class Generation:
    """A request's responses, joined."""

    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int = 0
    responses: int = 0

    def add(self, result: Any) -> None:
        """Fold one InferResult (gRPC or HTTP) into the totals."""
        self.responses += 1
        text = result.as_numpy("text_output")
        if text is not None:
            self.text += b"".join(text.reshape(-1)).decode("utf-8", errors="replace")
        ids = result.as_numpy("output_token_ids")
        if ids is not None:
            self.token_ids.extend(int(i) for i in ids.reshape(-1))
        reason = result.as_numpy("finish_reason")
        if reason is not None and reason.reshape(-1)[0]:
            self.finish_reason = reason.reshape(-1)[0].decode()
        n_in = result.as_numpy("num_input_tokens")
        if n_in is not None:
            self.num_input_tokens = int(n_in.reshape(-1)[0])
        n_out = result.as_numpy("num_output_tokens")
        if n_out is not None:
            self.num_output_tokens += int(n_out.reshape(-1)[0])
