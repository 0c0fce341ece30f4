"""The model's Triton interface, defined once: tensor names, datatypes, dims, and the OpenAI field map.

No Triton and no vLLM imports: the backend (backend.triton_io), the clients (client.triton_inputs,
the frontend) and a unit test that holds config.pbtxt to this module all read it.
Names follow Triton's vllm_backend where it has one.
"""

from __future__ import annotations

import dataclasses

MODEL_NAME = "vllm_model"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input or output: config.pbtxt's name, data_type (TYPE_ prefix dropped) and dims."""

    name: str
    datatype: str  # Triton's config name without TYPE_ (tritonclient's wire name differs for STRING: BYTES)
    dims: tuple[int, ...]
    optional: bool = True

    @property
    def wire_datatype(self) -> str:
        """The datatype as tritonclient's InferInput names it."""
        return "BYTES" if self.datatype == "STRING" else self.datatype


# -- inputs -------------------------------------------------------------------------------------
TEXT_INPUT = "text_input"
MESSAGES = "messages"
INPUT_IDS = "input_ids"
PROMPT_EMBEDS = "prompt_embeds"
PROMPT_EMBEDS_FP16 = "prompt_embeds_fp16"
PROMPT_EMBEDS_BF16 = "prompt_embeds_bf16"
PROMPT_EMBEDS_LENGTHS = "prompt_embeds_lengths"
STREAM = "stream"
SAMPLING_PARAMETERS = "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
RETURN_FINISH_REASON = "return_finish_reason"
RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
RETURN_OUTPUT_TOKEN_IDS = "return_output_token_ids"
MODEL_INFO = "model_info"  # BOOL input true: answered with the model facts, no generation

# One embedding input per wire dtype (Triton fixes an input's datatype in config.pbtxt).
EMBEDDING_INPUTS = (PROMPT_EMBEDS, PROMPT_EMBEDS_FP16, PROMPT_EMBEDS_BF16)
RETURN_FLAGS = (RETURN_FINISH_REASON, RETURN_NUM_INPUT_TOKENS, RETURN_NUM_OUTPUT_TOKENS, RETURN_OUTPUT_TOKEN_IDS)
# The prompt inputs; input_ids goes alone, the others may be combined as documented.
PROMPT_INPUTS = (TEXT_INPUT, MESSAGES, INPUT_IDS, *EMBEDDING_INPUTS)

INPUTS: tuple[Tensor, ...] = (
    Tensor(TEXT_INPUT, "STRING", (1,)),
    Tensor(MESSAGES, "STRING", (1,)),
    Tensor(INPUT_IDS, "INT64", (-1,)),
    Tensor(PROMPT_EMBEDS, "FP32", (-1, -1)),
    Tensor(PROMPT_EMBEDS_FP16, "FP16", (-1, -1)),
    Tensor(PROMPT_EMBEDS_BF16, "BF16", (-1, -1)),
    Tensor(PROMPT_EMBEDS_LENGTHS, "INT32", (-1,)),
    Tensor(STREAM, "BOOL", (1,)),
    Tensor(SAMPLING_PARAMETERS, "STRING", (1,)),
    Tensor(EXCLUDE_INPUT_IN_OUTPUT, "BOOL", (1,)),
    *(Tensor(name, "BOOL", (1,)) for name in RETURN_FLAGS),
    Tensor(MODEL_INFO, "BOOL", (1,)),
)

# -- outputs ------------------------------------------------------------------------------------
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
NUM_INPUT_TOKENS = "num_input_tokens"
NUM_OUTPUT_TOKENS = "num_output_tokens"
OUTPUT_TOKEN_IDS = "output_token_ids"
INDEX = "index"  # the choice (0..n-1), on every response when n > 1
OUTPUT_LOGPROBS = "output_logprobs"  # [k]: each token's logprob (when sampling_parameters.logprobs is set)
TOP_LOGPROBS_IDS = "top_logprobs_ids"  # [k, m]: the top-m alternatives per token, by rank
TOP_LOGPROBS = "top_logprobs"  # [k, m]: their logprobs
# With sampling_parameters.prompt_logprobs = m, on the first response of each choice only. Position 0
# of a prompt has no logprob (nothing precedes it): NaN there, rank 0, top ids -1, top logprobs NaN.
PROMPT_TOKEN_IDS = "prompt_token_ids"  # [p]: the prompt's token ids, as the engine got them
PROMPT_LOGPROBS = "prompt_logprobs"  # [p]: each prompt token's logprob given the tokens before it
PROMPT_LOGPROB_RANKS = "prompt_logprob_ranks"  # [p]: its rank in the vocabulary (1 = the likeliest)
PROMPT_TOP_LOGPROBS_IDS = "prompt_top_logprobs_ids"  # [p, m]: the top-m tokens per position, by rank
PROMPT_TOP_LOGPROBS = "prompt_top_logprobs"  # [p, m]: their logprobs
MODEL_INFO_OUTPUT = "model_info"  # JSON object of the model facts (answer to the model_info input)

OUTPUTS: tuple[Tensor, ...] = (
    Tensor(TEXT_OUTPUT, "STRING", (-1,), optional=False),
    Tensor(FINISH_REASON, "STRING", (-1,), optional=False),
    Tensor(NUM_INPUT_TOKENS, "UINT32", (-1,), optional=False),
    Tensor(NUM_OUTPUT_TOKENS, "UINT32", (-1,), optional=False),
    Tensor(OUTPUT_TOKEN_IDS, "INT64", (-1,), optional=False),
    Tensor(INDEX, "UINT32", (1,), optional=False),
    Tensor(OUTPUT_LOGPROBS, "FP32", (-1,), optional=False),
    Tensor(TOP_LOGPROBS_IDS, "INT64", (-1, -1), optional=False),
    Tensor(TOP_LOGPROBS, "FP32", (-1, -1), optional=False),
    Tensor(PROMPT_TOKEN_IDS, "INT64", (-1,), optional=False),
    Tensor(PROMPT_LOGPROBS, "FP32", (-1,), optional=False),
    Tensor(PROMPT_LOGPROB_RANKS, "INT64", (-1,), optional=False),
    Tensor(PROMPT_TOP_LOGPROBS_IDS, "INT64", (-1, -1), optional=False),
    Tensor(PROMPT_TOP_LOGPROBS, "FP32", (-1, -1), optional=False),
    Tensor(MODEL_INFO_OUTPUT, "STRING", (1,), optional=False),
)

INPUT_NAMES = tuple(t.name for t in INPUTS)
OUTPUT_NAMES = tuple(t.name for t in OUTPUTS)

# -- model facts (the JSON object of the model_info output) -------------------------------------
# hidden_size, max_model_len, dtype (torch name without "torch."), placeholder, vocab_size (token
# ids in [0, vocab_size)), model (path or hub name), max_logprobs, max_n.
MODEL_INFO_KEYS = ("hidden_size", "max_model_len", "dtype", "placeholder", "vocab_size", "model",
                   "max_logprobs", "max_n")

# -- sampling_parameters ------------------------------------------------------------------------
MAX_N = 16  # choices per request (vLLM allows more; each costs a sequence slot)
STRUCTURED_OUTPUT_KINDS = ("json", "json_object", "regex", "choice", "grammar")

# OpenAI / vLLM request field -> `sampling_parameters` field, for fields passed through unchanged.
# Fields that need shaping (max_tokens vs max_completion_tokens, response_format -> structured_outputs,
# chat's logprobs + top_logprobs -> logprobs, stop as a string) are the frontend's to translate.
OPENAI_TO_SAMPLING: dict[str, str] = {
    name: name
    for name in (
        "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens", "stop",
        "stop_token_ids", "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
        "spaces_between_special_tokens", "presence_penalty", "frequency_penalty", "repetition_penalty",
        "bad_words", "logit_bias", "n", "structured_outputs",
    )
}
OPENAI_TO_SAMPLING["max_completion_tokens"] = "max_tokens"  # chat's newer name
OPENAI_TO_SAMPLING["logprobs"] = "logprobs"  # completions: an int; chat: top_logprobs when logprobs is true
OPENAI_TO_SAMPLING["top_logprobs"] = "logprobs"
OPENAI_TO_SAMPLING["prompt_logprobs"] = "prompt_logprobs"  # completions also when echo + logprobs (vLLM)

# Triton input -> the OpenAI request field a client would name in a 400 (None: not a client field).
INPUT_TO_OPENAI: dict[str, str | None] = {
    TEXT_INPUT: "prompt",
    MESSAGES: "messages",
    INPUT_IDS: "prompt",
    PROMPT_EMBEDS: "prompt_embeds",
    PROMPT_EMBEDS_FP16: "prompt_embeds",
    PROMPT_EMBEDS_BF16: "prompt_embeds",
    PROMPT_EMBEDS_LENGTHS: "messages",
    SAMPLING_PARAMETERS: None,
    STREAM: "stream",
    EXCLUDE_INPUT_IN_OUTPUT: None,
    MODEL_INFO: None,
    **{name: None for name in RETURN_FLAGS},
}

# -- error kind tags ----------------------------------------------------------------------------
# Every error message the model sends starts with "[TAG] " (backend.errors formats it,
# client.triton_errors parses it): gRPC streams carry only the message text.
ERROR_TAGS = ("INVALID_ARG", "UNAVAILABLE", "CANCELLED", "INTERNAL")
# An UNAVAILABLE error from admission control (too much queued) starts with this after the tag.
OVERLOADED_PREFIX = "overloaded: "
