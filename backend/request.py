"""Request parsing: named input arrays (as Triton delivers them) to one typed GenerationRequest.

Input names follow Triton's vllm_backend so existing clients and perf_analyzer work unchanged;
prompt-embedding inputs are added. Every failure is a ValidationError naming the input.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

import numpy as np
import torch

from backend.config import ServingConfig
from backend.embeddings import split_parts, validate_embeddings
from backend.errors import ValidationError
from backend.interface import EMBEDDING_INPUTS, INPUT_IDS, RETURN_FLAGS
from backend.prompt import EnginePrompt, PromptBuilder
from backend.sampling import DEFAULT_MAX_LOGPROBS, PARAMETER, parse_sampling_params
from backend.types import GenerationRequest  # defined with the other shared types; imported here for callers


def scalar_bool(inputs: Mapping[str, Any], name: str, default: bool) -> bool:
    """A one-element BOOL input, or `default` when absent; anything else is a ValidationError."""
    value = inputs.get(name)
    if value is None:
        return default
    array = np.asarray(value)
    if array.size != 1 or array.dtype != np.bool_:
        raise ValidationError(name, "must be one BOOL value")
    return bool(array.reshape(-1)[0])


def _scalar_string(inputs: Mapping[str, Any], name: str, max_bytes: int) -> str | None:
    value = inputs.get(name)
    if value is None:
        return None
    array = np.asarray(value, dtype=object)
    if array.size != 1:
        raise ValidationError(name, f"must be one string, got {array.size} elements")
    raw = array.reshape(-1)[0]
    if isinstance(raw, str):  # only in-process callers; Triton delivers bytes
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(name, "is not valid UTF-8") from None
    if not isinstance(raw, (bytes, np.bytes_)):
        raise ValidationError(name, "must be a string")
    if len(raw) > max_bytes:
        raise ValidationError(name, f"is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(name, "is not valid UTF-8") from None


def _json_input(inputs: Mapping[str, Any], name: str, max_bytes: int) -> Any:
    text = _scalar_string(inputs, name, max_bytes)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValidationError(name, "is not valid JSON") from None
    except ValueError:  # an integer over Python's int conversion limit (4300 digits)
        raise ValidationError(name, "holds a number too long to read") from None


def _embeddings(inputs: Mapping[str, Any], config: ServingConfig, hidden_size: int,
                max_rows: int, dtype: torch.dtype) -> list[torch.Tensor]:
    given = [name for name in EMBEDDING_INPUTS if inputs.get(name) is not None]
    if len(given) > 1:
        raise ValidationError(given[1], f"give only one of {', '.join(EMBEDDING_INPUTS)}")
    lengths_raw = inputs.get("prompt_embeds_lengths")
    if not given:
        if lengths_raw is not None:
            raise ValidationError("prompt_embeds_lengths", "given without prompt_embeds")
        return []
    name = given[0]
    value = inputs[name]
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    tensor = validate_embeddings(tensor, hidden_size=hidden_size, max_rows=max_rows, parameter=name, dtype=dtype)
    lengths = None
    if lengths_raw is not None:
        array = np.asarray(lengths_raw)
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise ValidationError("prompt_embeds_lengths", "must be a 1-D integer tensor")
        lengths = [int(n) for n in array[: config.max_embedding_parts + 1]]
        if array.size > config.max_embedding_parts:
            raise ValidationError("prompt_embeds_lengths",
                                  f"{array.size} parts exceed the limit of {config.max_embedding_parts}")
    return split_parts(tensor, lengths, max_parts=config.max_embedding_parts)


def _input_ids(inputs: Mapping[str, Any], vocab_size: int, max_ids: int) -> list[int] | None:
    """The `input_ids` tensor: a 1-D integer tensor of ids in [0, vocab_size), at most max_ids long."""
    value = inputs.get(INPUT_IDS)
    if value is None:
        return None
    others = [name for name in ("text_input", "messages", *EMBEDDING_INPUTS, "prompt_embeds_lengths")
              if inputs.get(name) is not None]
    if others:
        raise ValidationError(INPUT_IDS, f"give input_ids alone, not with {others[0]}")
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.ndim != 1:
        raise ValidationError(INPUT_IDS, "must be a 1-D INT64 tensor")
    if array.size == 0:
        raise ValidationError(INPUT_IDS, "the prompt is empty")
    if array.size > max_ids:
        raise ValidationError(INPUT_IDS, f"{array.size} ids leave no room in the context of {max_ids + 1}")
    if int(array.min()) < 0 or int(array.max()) >= vocab_size:
        raise ValidationError(INPUT_IDS, f"holds a token id outside the vocabulary [0, {vocab_size})")
    return [int(i) for i in array.tolist()]


def parse_request(
    inputs: Mapping[str, Any],
    builder: PromptBuilder,
    config: ServingConfig,
    max_model_len: int,
    vocab_size: int | None = None,
    *,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    sampling_defaults: Mapping[str, Any] | None = None,
    verify_sampling: Callable[[Any], None] | None = None,
) -> GenerationRequest:
    """Validate every input and build the engine prompt; raises ValidationError on bad input.

    `vocab_size` bounds token ids and top_k; by default the tokenizer's size (ids past it are
    never real tokens, and vLLM refuses ids past the model's own vocabulary). `max_logprobs`,
    `sampling_defaults` and `verify_sampling` come from the engine (see ModelInfo).
    """
    vocab_size = len(builder.tokenizer) if vocab_size is None else vocab_size
    ids = _input_ids(inputs, vocab_size, max_ids=max_model_len - 1)
    text = _scalar_string(inputs, "text_input", config.max_request_json_bytes)
    messages = _json_input(inputs, "messages", config.max_request_json_bytes)
    if text is not None and messages is not None:
        raise ValidationError("messages", "give either messages or text_input, not both")
    parts = _embeddings(inputs, config, builder.hidden_size, max_rows=max_model_len - 1, dtype=builder.dtype)

    if ids is not None:
        # Sent as they are: no tokenization, no BOS, no round trip through text.
        prompt, prompt_input = EnginePrompt(token_ids=ids), INPUT_IDS
    elif messages is not None:
        prompt, prompt_input = builder.from_messages(messages, parts), "messages"
    elif text is not None:
        prompt, prompt_input = builder.from_text(text, parts), "text_input"
    elif parts:
        if inputs.get("prompt_embeds_lengths") is not None and len(parts) > 1:
            raise ValidationError("prompt_embeds_lengths", "several parts need messages or text_input with placeholders")
        prompt, prompt_input = builder.from_embeddings(parts[0]), "prompt_embeds"
    else:
        raise ValidationError("text_input", "one of text_input, messages, input_ids or prompt_embeds is required")
    if prompt.num_tokens == 0:
        raise ValidationError(prompt_input, "the prompt is empty")

    stream = scalar_bool(inputs, "stream", False)
    # As vllm_backend: a non-streaming response includes the prompt text unless told otherwise;
    # a stream never repeats it.
    exclude_input = scalar_bool(inputs, "exclude_input_in_output", stream)
    if stream and not exclude_input:
        raise ValidationError("exclude_input_in_output", "must be true when streaming")
    sampling = parse_sampling_params(
        _json_input(inputs, "sampling_parameters", config.max_request_json_bytes),
        vocab_size=vocab_size, prompt_tokens=prompt.num_tokens, max_model_len=max_model_len,
        prompt_input=prompt_input, max_logprobs=max_logprobs, defaults=sampling_defaults, verify=verify_sampling,
    )
    if sampling.prompt_logprobs is not None and prompt.embeds is not None:
        # As vLLM's server: an embedding row has no token whose logprob could be given.
        raise ValidationError(PARAMETER, "prompt_logprobs is not compatible with prompt embeds")
    if ids is not None and not exclude_input:  # the echo of a token-id prompt is its decoded text
        prompt.echo_text = builder.decode(ids)
    flags = {name: scalar_bool(inputs, name, False) for name in RETURN_FLAGS}
    return GenerationRequest(prompt=prompt, sampling=sampling, stream=stream, exclude_input_in_output=exclude_input,
                             n=sampling.n, logprobs=sampling.logprobs, prompt_logprobs=sampling.prompt_logprobs,
                             **flags)
