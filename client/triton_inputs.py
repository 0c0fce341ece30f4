"""Build the model's Triton input tensors and read its outputs; shared by every client here.

Works with both `tritonclient.grpc` and `tritonclient.http` (same InferInput API).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from backend import interface as io
from backend.types import PromptLogprobs

MODEL_NAME = io.MODEL_NAME
RETURN_ALL = io.RETURN_FLAGS
# Embedding tensors by numpy dtype: (input name, Triton datatype). tritonclient (since r26.06) takes
# BF16 only as ml_dtypes.bfloat16 arrays; anything else goes as FP32.
EMBEDDING_INPUTS = {
    np.dtype(np.float16): (io.PROMPT_EMBEDS_FP16, "FP16"),
    np.dtype(ml_dtypes.bfloat16): (io.PROMPT_EMBEDS_BF16, "BF16"),
    np.dtype(np.float32): (io.PROMPT_EMBEDS, "FP32"),
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
    input_ids: Sequence[int] | None = None,
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
        inputs.append(_string(module, io.TEXT_INPUT, text))
    if messages is not None:
        inputs.append(_string(module, io.MESSAGES, json.dumps(messages)))
    if input_ids is not None:
        tensor = module.InferInput(io.INPUT_IDS, [len(input_ids)], "INT64")
        tensor.set_data_from_numpy(np.asarray(input_ids, dtype=np.int64).reshape(-1))
        inputs.append(tensor)
    if embeds is not None:
        if embeds.dtype not in EMBEDDING_INPUTS:
            embeds = embeds.astype(np.float32)
        embeds = np.ascontiguousarray(embeds)
        name, wire = EMBEDDING_INPUTS[embeds.dtype]
        tensor = module.InferInput(name, list(embeds.shape), wire)
        tensor.set_data_from_numpy(embeds)
        inputs.append(tensor)
    if lengths is not None:
        tensor = module.InferInput(io.PROMPT_EMBEDS_LENGTHS, [len(lengths)], "INT32")
        tensor.set_data_from_numpy(np.asarray(lengths, dtype=np.int32))
        inputs.append(tensor)
    inputs.append(_bool(module, io.STREAM, stream))
    if sampling is not None:
        inputs.append(_string(module, io.SAMPLING_PARAMETERS, json.dumps(sampling)))
    if exclude_input_in_output is not None:
        inputs.append(_bool(module, io.EXCLUDE_INPUT_IN_OUTPUT, exclude_input_in_output))
    if returns is not None:
        inputs.extend(_bool(module, name, True) for name in returns)
    elif return_all:
        inputs.extend(_bool(module, name, True) for name in RETURN_ALL)
    return inputs


def model_info_inputs(module: Any) -> list[Any]:
    """The one input of a model-facts request (answered with the model_info output, no generation)."""
    return [_bool(module, io.MODEL_INFO, True)]


def read_model_info(result: Any) -> dict[str, Any]:
    """The model facts (keys: backend.interface.MODEL_INFO_KEYS) from the answer to model_info_inputs()."""
    return json.loads(result.as_numpy(io.MODEL_INFO_OUTPUT).reshape(-1)[0])


@dataclasses.dataclass
class Choice:
    """One choice's responses, joined."""

    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int = 0
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs_ids: list[list[int]] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    prompt: PromptLogprobs | None = None  # with sampling prompt_logprobs (from the choice's first response)
    responses: int = 0

    def add(self, result: Any) -> None:
        """Fold one InferResult (gRPC or HTTP) into the totals."""
        self.responses += 1
        text = result.as_numpy(io.TEXT_OUTPUT)
        if text is not None:
            self.text += b"".join(text.reshape(-1)).decode("utf-8", errors="replace")
        ids = result.as_numpy(io.OUTPUT_TOKEN_IDS)
        if ids is not None:
            self.token_ids.extend(int(i) for i in ids.reshape(-1))
        reason = result.as_numpy(io.FINISH_REASON)
        if reason is not None and reason.reshape(-1)[0]:
            self.finish_reason = reason.reshape(-1)[0].decode()
        n_in = result.as_numpy(io.NUM_INPUT_TOKENS)
        if n_in is not None:
            self.num_input_tokens = int(n_in.reshape(-1)[0])
        n_out = result.as_numpy(io.NUM_OUTPUT_TOKENS)
        if n_out is not None:
            self.num_output_tokens += int(n_out.reshape(-1)[0])
        logprobs = result.as_numpy(io.OUTPUT_LOGPROBS)
        if logprobs is not None:
            self.logprobs.extend(float(x) for x in logprobs.reshape(-1))
            self.top_logprobs_ids.extend(result.as_numpy(io.TOP_LOGPROBS_IDS).tolist())
            self.top_logprobs.extend(result.as_numpy(io.TOP_LOGPROBS).tolist())
        prompt_ids = result.as_numpy(io.PROMPT_TOKEN_IDS)
        if prompt_ids is not None:
            self.prompt = PromptLogprobs(
                token_ids=prompt_ids.reshape(-1).tolist(), logprobs=result.as_numpy(io.PROMPT_LOGPROBS).tolist(),
                ranks=result.as_numpy(io.PROMPT_LOGPROB_RANKS).tolist(),
                top_ids=result.as_numpy(io.PROMPT_TOP_LOGPROBS_IDS).tolist(),
                top_logprobs=result.as_numpy(io.PROMPT_TOP_LOGPROBS).tolist())


@dataclasses.dataclass
class Generation(Choice):
    """A request's responses, joined: the fields are choice 0's (the only one when n = 1), `choices` all."""

    choices: dict[int, Choice] = dataclasses.field(default_factory=dict)

    def add(self, result: Any) -> None:
        """Fold one InferResult into its choice (the `index` output; 0 without it)."""
        index = result.as_numpy(io.INDEX)
        i = 0 if index is None else int(index.reshape(-1)[0])
        self.choices.setdefault(i, Choice()).add(result)
        if i == 0:
            super().add(result)
        else:
            self.responses += 1
