"""Shared dataclasses and protocols of the serving path: no behaviour, no Triton, no vLLM engine.

The parser (backend.request) produces a GenerationRequest, the engine side produces Chunks, the
response side turns them into Responses for a ResponseSink (backend.triton_io implements it).
Keeping them here lets each side import the types without importing the other side.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # annotations only: importing vLLM or the prompt builder is not needed here
    import torch
    from vllm import SamplingParams

    from backend.prompt import EnginePrompt


@dataclasses.dataclass
class GenerationRequest:
    """Everything the engine driver needs for one request; no Triton types inside."""

    prompt: EnginePrompt
    sampling: SamplingParams
    stream: bool = False
    exclude_input_in_output: bool = True
    return_finish_reason: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_output_token_ids: bool = False
    n: int = 1  # choices (sampling.n): responses carry `index` when n > 1
    logprobs: int | None = None  # sampling.logprobs: responses carry logprobs and token ids when set
    prompt_logprobs: int | None = None  # sampling.prompt_logprobs: the first response of each choice carries them


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What request parsing needs to know about the loaded model."""

    hidden_size: int
    max_model_len: int
    dtype: torch.dtype
    tokenizer: Any  # the engine's own Hugging Face tokenizer, so both sides tokenize alike
    model: str = ""  # path or hub name, as model.json gives it
    max_logprobs: int = 20  # the engine's max_logprobs (vLLM's default 20)
    # The model's generation_config.json sampling defaults (ModelConfig.get_diff_sampling_param()),
    # applied to fields a client leaves unset, as vLLM's OpenAI server does.
    sampling_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    # vLLM's own SamplingParams.verify with the engine's configs (structured-output grammars compiled
    # and checked); None in unit tests without an engine.
    verify_sampling: Callable[[SamplingParams], None] | None = None


@dataclasses.dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's token ids and, per position, its token's logprob and rank and the top m (ids, logprobs).

    Position 0 has nothing before it, so no logprob: NaN, rank 0, top ids -1 and top logprobs NaN
    (vLLM gives None there); every row of the top m has m entries.
    """

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


@dataclasses.dataclass
class Chunk:
    """New output of one choice since its previous chunk (one engine step, or several joined)."""

    text: str
    token_ids: list[int]
    final: bool = False  # the whole request ended (every choice)
    finish_reason: str | None = None  # set when this choice ended
    index: int = 0  # the choice (0..n-1)
    logprobs: list[float] | None = None  # per token, when asked
    top_logprobs_ids: list[list[int]] | None = None  # per token, the top-m alternatives by rank
    top_logprobs: list[list[float]] | None = None
    prompt_logprobs: PromptLogprobs | None = None  # on the choice's first chunk, when asked


@dataclasses.dataclass
class Response:
    """One response as the client gets it: the text, and only the outputs the client asked for."""

    text: str
    token_ids: list[int] | None = None  # return_output_token_ids, or logprobs asked
    num_output_tokens: int | None = None  # return_num_output_tokens: tokens in this response
    finish_reason: str | None = None  # return_finish_reason: the choice's last response only
    num_input_tokens: int | None = None  # return_num_input_tokens: the choice's last response only
    index: int | None = None  # the choice, when n > 1
    logprobs: list[float] | None = None  # sampling_parameters.logprobs set
    top_logprobs_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None
    prompt_logprobs: PromptLogprobs | None = None  # sampling_parameters.prompt_logprobs: the choice's first response
    model_info: str | None = None  # the JSON facts (answer to the model_info input): nothing else then


class ResponseSink(Protocol):
    """Where a request's responses go (a Triton response sender, or a list in tests)."""

    def send(self, response: Response | None, *, final: bool) -> None:
        """Send one response; `final` closes the request (at most once)."""

    def send_error(self, exc: BaseException) -> None:
        """Send an error response carrying the final flag."""

    def is_cancelled(self) -> bool:
        """Whether the client cancelled; False (and no call into Triton) once the final flag went out."""


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """What one finished request did, for metrics."""

    outcome: str  # success, cancelled, invalid, engine_dead, stalled, error
    prompt_tokens: int
    prompt_embeds_tokens: int
    output_tokens: int
    ttft_s: float | None
    tpot_s: float | None  # mean time per output token after the first, None with fewer than 2


class Observer(Protocol):
    """Receives measurements (Triton custom metrics implement this)."""

    def on_finish(self, record: RequestRecord) -> None:
        """One finished request."""

    def on_counts(self, counts: dict[str, int]) -> None:
        """Current load: see EngineDriver.counts()."""
