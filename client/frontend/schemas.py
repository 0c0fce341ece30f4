"""Request schemas (OpenAI Completions and Chat Completions, plus vLLM's prompt_embeds) and response builders.

Every request model forbids unknown fields: a parameter this server does not implement is a 400
naming it, never silently ignored. `to_sampling_params()` gives the JSON object the Triton model's
`sampling_parameters` input takes (only fields the caller set, so the model's defaults apply).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from backend.errors import ValidationError
from backend.sampling import INT64_MAX, read_field
from client.frontend.payloads import FORMATS

Role = Literal["system", "developer", "user", "assistant", "tool"]
GREEDY_TEMPERATURE = 1e-5  # below it vLLM samples greedily (its _SAMPLING_EPS)
TokenIds = list[Annotated[int, Field(ge=0)]]
# The frontend does not know the vocabulary: top_k and token ids are bounded by int64 here, and by
# the vocabulary in the model (a 400 from its INVALID_ARG).
_NO_VOCAB = INT64_MAX


def _sampling_value(name: str) -> BeforeValidator:
    """The model's own reader for one sampling field (backend.sampling), as a pydantic validator.

    One set of rules on both sides: exact types (no bool for a number, no 5.0 for an int, no "1"
    for a bool), ranges, caps, NaN refused; a refusal is a 400 naming the field.
    """

    def read(value: Any) -> Any:
        if value is None:
            return None
        try:
            return read_field(name, value, _NO_VOCAB)
        except ValidationError as exc:
            raise ValueError(exc.message.removeprefix(f"{name} ")) from None

    return BeforeValidator(read)


# Request fields that map one to one onto the model's SamplingParams fields.
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "min_tokens", "stop_token_ids",
                    "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
                    "spaces_between_special_tokens", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "bad_words", "logit_bias")


class StrictModel(BaseModel):
    """Base of every request model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    include_usage: bool | None = False


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs`: exactly one constraint (the model compiles and checks it)."""

    # `json` would shadow BaseModel.json: the field is json_schema, spelled `json` on the wire.
    json_schema: dict[str, Any] | str | None = Field(default=None, alias="json")
    json_object: Literal[True] | None = None
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "StructuredOutputs":
        given = [name for name in ("json_schema", "json_object", "regex", "choice", "grammar")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, json_object, regex, choice, grammar")
        return self

    def to_sampling(self) -> dict[str, Any]:
        """The model's `sampling_parameters.structured_outputs` object."""
        return self.model_dump(exclude_none=True, by_alias=True)


class JsonSchemaFormat(StrictModel):
    """OpenAI's `response_format.json_schema`: the schema under `schema`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """OpenAI's `response_format`: text, json_object or json_schema (vLLM maps the last two to structured outputs)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.json_schema is None):
            raise ValueError("type 'json_schema' needs json_schema.schema")
        return self

    def to_sampling(self) -> dict[str, Any] | None:
        """The structured_outputs object it stands for (None for plain text)."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            return {"json": self.json_schema.json_schema}
        return None


class SamplingFields(StrictModel):
    """The sampling parameters both endpoints share (OpenAI's plus vLLM's extras)."""

    model: str | None = None
    n: Annotated[int, _sampling_value("n")] = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Annotated[list[str] | None, _sampling_value("stop")] = None
    seed: Annotated[int | None, _sampling_value("seed")] = None
    temperature: Annotated[float | None, _sampling_value("temperature")] = None
    top_p: Annotated[float | None, _sampling_value("top_p")] = None
    top_k: Annotated[int | None, _sampling_value("top_k")] = None
    min_p: Annotated[float | None, _sampling_value("min_p")] = None
    presence_penalty: Annotated[float | None, _sampling_value("presence_penalty")] = None
    frequency_penalty: Annotated[float | None, _sampling_value("frequency_penalty")] = None
    repetition_penalty: Annotated[float | None, _sampling_value("repetition_penalty")] = None
    logit_bias: Annotated[dict[int, float] | None, _sampling_value("logit_bias")] = None
    user: str | None = None
    min_tokens: Annotated[int | None, _sampling_value("min_tokens")] = None
    stop_token_ids: Annotated[list[int] | None, _sampling_value("stop_token_ids")] = None
    ignore_eos: Annotated[bool | None, _sampling_value("ignore_eos")] = None
    include_stop_str_in_output: Annotated[bool | None, _sampling_value("include_stop_str_in_output")] = None
    skip_special_tokens: Annotated[bool | None, _sampling_value("skip_special_tokens")] = None
    spaces_between_special_tokens: Annotated[bool | None, _sampling_value("spaces_between_special_tokens")] = None
    bad_words: Annotated[list[str] | None, _sampling_value("bad_words")] = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # Wire format of every prompt_embeds payload in this request (see docs/frontend.md).
    prompt_embeds_format: Literal[FORMATS] = "torch"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be given with stream=true")
        return self

    @model_validator(mode="after")
    def _n_needs_sampling(self) -> "SamplingFields":
        # vLLM's SamplingParams rule and wording: greedy decoding gives one sequence.
        if self.n > 1 and self.temperature is not None and self.temperature < GREEDY_TEMPERATURE:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        return self

    @model_validator(mode="after")
    def _one_structure(self) -> "SamplingFields":
        if self.structured_outputs is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise ValueError("response_format: give either response_format or structured_outputs, not both")
        return self

    @property
    def structure_parameter(self) -> str:
        """The request field a structured-outputs error names."""
        return "structured_outputs" if self.structured_outputs is not None else "response_format"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int | None, *, send_null_max_tokens: bool,
                  logprobs: int | None, prompt_logprobs: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {name: getattr(self, name) for name in _SAMPLING_FIELDS
                                  if getattr(self, name) is not None}
        if self.stop is not None:
            params["stop"] = list(self.stop)
        if self.n != 1:
            params["n"] = self.n
        if logprobs is not None:
            params["logprobs"] = logprobs
        if prompt_logprobs is not None:
            params["prompt_logprobs"] = prompt_logprobs
        structure = self.structured_outputs.to_sampling() if self.structured_outputs is not None else (
            self.response_format.to_sampling() if self.response_format is not None else None)
        if structure is not None:
            params["structured_outputs"] = structure
        if max_tokens is not None or send_null_max_tokens:
            params["max_tokens"] = max_tokens
        return params


class CompletionRequest(SamplingFields):
    """POST /v1/completions: `prompt` and/or `prompt_embeds`; each input is its own choice."""

    prompt: str | list[str] | TokenIds | list[TokenIds] | None = None
    prompt_embeds: str | list[str] | None = None
    max_tokens: Annotated[int | None, _sampling_value("max_tokens")] = 16
    echo: bool | None = False
    logprobs: Annotated[int | None, _sampling_value("logprobs")] = None
    prompt_logprobs: Annotated[int | None, _sampling_value("prompt_logprobs")] = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_inputs(self) -> "CompletionRequest":
        prompt_empty = self.prompt is None or self.prompt == "" or self.prompt == []
        embeds_empty = self.prompt_embeds is None or self.prompt_embeds == []
        if prompt_empty and embeds_empty:
            raise ValueError("either prompt or prompt_embeds must be provided and non-empty")
        return self

    @property
    def engine_prompt_logprobs(self) -> int | None:
        """Prompt logprobs to ask of the model: vLLM's (prompt_logprobs, else logprobs when echo), when shown.

        A stream shows them only as echo's logprobs; `prompt_logprobs: 0` on a stream (vLLM allows
        only 0 there) shows nothing, so nothing is asked.
        """
        k = self.prompt_logprobs if self.prompt_logprobs is not None else (self.logprobs if self.echo else None)
        if k is None or (self.stream and not (self.echo and self.logprobs is not None)):
            return None
        return k

    def to_sampling_params(self) -> dict[str, Any]:
        """The model's `sampling_parameters` JSON; max_tokens defaults to 16 as in OpenAI and vLLM."""
        return self._sampling(16 if self.max_tokens is None else self.max_tokens, send_null_max_tokens=False,
                              logprobs=self.logprobs, prompt_logprobs=self.engine_prompt_logprobs)

    def embeds_payloads(self) -> list[str]:
        """The prompt_embeds payloads, in order (they become the first choices)."""
        if self.prompt_embeds is None:
            return []
        return [self.prompt_embeds] if isinstance(self.prompt_embeds, str) else list(self.prompt_embeds)

    def text_prompts(self) -> list[str | list[int]]:
        """The text (or token-id) prompts, in order (choices after the embeddings)."""
        prompt = self.prompt
        if prompt is None:
            return []
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # one token-id prompt
        return list(prompt)


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class PromptEmbedsPart(StrictModel):
    type: Literal["prompt_embeds"]
    data: str = Field(min_length=1)


ContentPart = Annotated[TextPart | PromptEmbedsPart, Field(discriminator="type")]


class ChatMessage(StrictModel):
    role: Role
    content: str | list[ContentPart]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _non_empty_parts(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("content must be a string or a non-empty list of parts")
        return value


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions: messages whose parts may carry prompt_embeds, in any order and role."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Annotated[int | None, _sampling_value("max_tokens")] = None
    max_completion_tokens: Annotated[int | None, _sampling_value("max_tokens")] = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int | None, _sampling_value("logprobs")] = None
    prompt_logprobs: Annotated[int | None, _sampling_value("prompt_logprobs")] = None

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:  # vLLM's rule and wording
            raise ValueError("top_logprobs: when using `top_logprobs`, `logprobs` must be set to true.")
        return self

    @property
    def num_top_logprobs(self) -> int | None:
        """Alternatives per token when logprobs are asked (vLLM: top_logprobs, default 0), else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_sampling_params(self) -> dict[str, Any]:
        """The model's `sampling_parameters` JSON; no max_tokens means "up to the context", as in vLLM."""
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        # A stream never shows prompt logprobs (vLLM allows only 0 there): not asked then.
        return self._sampling(max_tokens, send_null_max_tokens=True, logprobs=self.num_top_logprobs,
                              prompt_logprobs=None if self.stream else self.prompt_logprobs)


# -- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, choices: list[dict[str, Any]], *, chunk: bool,
                    usage_info: dict[str, int] | None = None, created: int | None = None) -> dict[str, Any]:
    """A text_completion object (the same shape for a response and a stream chunk, as OpenAI)."""
    body: dict[str, Any] = {"id": request_id, "object": "text_completion", "created": created or int(time.time()),
                            "model": model, "choices": choices}
    if not chunk or usage_info is not None:
        body["usage"] = usage_info
    return body


def chat_body(request_id: str, model: str, choices: list[dict[str, Any]], *, chunk: bool,
              usage_info: dict[str, int] | None = None, created: int | None = None) -> dict[str, Any]:
    """A chat.completion object, or a chat.completion.chunk."""
    body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk" if chunk else "chat.completion",
                            "created": created or int(time.time()), "model": model, "choices": choices}
    if not chunk or usage_info is not None:
        body["usage"] = usage_info
    return body
