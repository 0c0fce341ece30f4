"""Prompt logprobs in the Triton model: the sampling field, its refusals, the engine output's conversion,
the first response of each choice carrying them, and their output tensors."""

from __future__ import annotations

import asyncio
import json
import math
import types

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.logprobs import Logprob

from backend.config import ServingConfig
from backend.errors import ValidationError
from backend.prompt import EnginePrompt, PromptBuilder
from backend.request import parse_request
from backend.responses import ResponseStream
from backend.sampling import parse_sampling_params
from backend.stream import Active, PromptChoices, prompt_logprobs, run_request
from backend.types import Chunk, GenerationRequest, PromptLogprobs, Response
from tests.unit.fake_engine import Completion, FakeSink
from tests.unit.test_sender_triton_sink import make_sink, triton_io  # noqa: F401 - the fixture

CONFIG = ServingConfig(max_embedding_parts=4, max_request_json_bytes=4096)
PH = "<|prompt_embeds|>"
PROMPT = [5, 9, 7]
# vLLM's prompt logprobs for PROMPT with prompt_logprobs=2: none for position 0, then the prompt
# token first (any rank) and ranks 1..2. Position 1's token 9 is rank 4; position 2's token 7 is rank 1.
POSITIONS = [None,
             {9: Logprob(-3.0, 4, "b"), 1: Logprob(-0.5, 1, "x"), 2: Logprob(-1.5, 2, "y")},
             {7: Logprob(-0.25, 1, "c"), 3: Logprob(-2.0, 2, "z")}]


def sampling(raw: dict, max_logprobs: int = 20) -> SamplingParams:
    return parse_sampling_params(raw, vocab_size=262, prompt_tokens=3, max_model_len=64, prompt_input="text_input",
                                 max_logprobs=max_logprobs)


# -- the sampling field ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 20, "3"], ids=["0", "1", "20", "string"])
def test_prompt_logprobs_in_range_reach_sampling_params(value) -> None:
    assert sampling({"prompt_logprobs": value}).prompt_logprobs == int(value)


@pytest.mark.parametrize("value, fragment", [
    (-1, "prompt_logprobs must be in [0, 20] (-1, the whole vocabulary, is not supported)"),
    (21, "prompt_logprobs must be in [0, 20]"),
    (-2, "prompt_logprobs must be in [0, 20]"),
    (True, "prompt_logprobs must be an integer"),
    (1.0, "prompt_logprobs must be an integer"),
    ("x", "prompt_logprobs must be an integer"),
], ids=["whole_vocab", "over_max", "negative", "bool", "float", "text"])
def test_bad_prompt_logprobs_are_refused_naming_the_field(value, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        sampling({"prompt_logprobs": value})
    assert info.value.parameter == "sampling_parameters" and fragment in info.value.message


def test_the_engine_bound_on_prompt_logprobs_is_used() -> None:
    assert sampling({"prompt_logprobs": 5}, max_logprobs=5).prompt_logprobs == 5
    with pytest.raises(ValidationError, match=r"prompt_logprobs must be in \[0, 5\]"):
        sampling({"prompt_logprobs": 6}, max_logprobs=5)


# -- parse_request: asked only for token prompts ---------------------------------------------------


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


def _inputs(tiny, prompt: str, **extra) -> dict:
    inputs = {"sampling_parameters": np.array([json.dumps({"prompt_logprobs": 2}).encode()], dtype=object)}
    rows = tiny.embed(tiny.ids("Hi"))
    if prompt == "text":
        inputs["text_input"] = np.array([b"Hello"], dtype=object)
    elif prompt == "ids":
        inputs["input_ids"] = np.array([1, 2, 3], dtype=np.int64)
    elif prompt == "embeds":
        inputs["prompt_embeds"] = rows
    elif prompt == "text_with_embeds":
        inputs["text_input"] = np.array([f"Say {PH}".encode()], dtype=object)
        inputs["prompt_embeds"] = rows
    elif prompt == "messages_with_embeds":
        messages = [{"role": "user", "content": [{"type": "prompt_embeds"}, {"type": "text", "text": "Hi"}]}]
        inputs["messages"] = np.array([json.dumps(messages).encode()], dtype=object)
        inputs["prompt_embeds"] = rows
    return {**inputs, **extra}


@pytest.mark.parametrize("prompt", ["text", "ids"])
def test_token_prompts_take_prompt_logprobs(tiny, builder, prompt: str) -> None:
    request = parse_request(_inputs(tiny, prompt), builder, CONFIG, 64)
    assert request.prompt_logprobs == 2 == request.sampling.prompt_logprobs and request.logprobs is None


@pytest.mark.parametrize("prompt", ["embeds", "text_with_embeds", "messages_with_embeds"])
def test_prompts_with_embeddings_anywhere_refuse_prompt_logprobs(tiny, builder, prompt: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_request(_inputs(tiny, prompt), builder, CONFIG, 64)
    assert info.value.parameter == "sampling_parameters"
    assert str(info.value) == "sampling_parameters: prompt_logprobs is not compatible with prompt embeds"


# -- the engine's output -> PromptLogprobs ----------------------------------------------------------


def test_prompt_logprobs_keep_vllms_values_with_none_first_as_nan() -> None:
    out = prompt_logprobs(PROMPT, POSITIONS, 2)
    assert out.token_ids == PROMPT and math.isnan(out.logprobs[0]) and out.logprobs[1:] == [-3.0, -0.25]
    assert out.ranks == [0, 4, 1]
    assert out.top_ids == [[-1, -1], [1, 2], [7, 3]]  # ranks 1..2 in order; the prompt token only where ranked
    assert all(math.isnan(v) for v in out.top_logprobs[0]) and out.top_logprobs[1:] == [[-0.5, -1.5], [-0.25, -2.0]]


def test_prompt_logprobs_of_the_wrong_length_are_an_error() -> None:
    with pytest.raises(RuntimeError, match="2 prompt logprobs for 3 tokens"):
        prompt_logprobs(PROMPT, POSITIONS[:2], 2)


def _request(n: int = 1, prompt_logprobs_k: int | None = 2, stream: bool = True) -> GenerationRequest:
    return GenerationRequest(prompt=EnginePrompt(token_ids=list(PROMPT)), sampling=SamplingParams(n=n, max_tokens=3),
                             stream=stream, n=n, prompt_logprobs=prompt_logprobs_k)


def test_each_choice_gets_the_prompt_logprobs_once_even_when_vllm_joined_them_away() -> None:
    choices = PromptChoices(_request(n=2))
    assert choices.take(0) is None  # nothing read yet
    # vLLM keeps only the first output's prompt logprobs when it joins deltas: choice 1's own set is
    # lost, and later outputs carry an empty list.
    choices.read(types.SimpleNamespace(prompt_logprobs=POSITIONS))
    choices.read(types.SimpleNamespace(prompt_logprobs=[]))
    first = choices.take(0)
    assert first is not None and first.ranks == [0, 4, 1]
    assert choices.take(0) is None and choices.take(1) is first and choices.take(1) is None


def test_unasked_prompt_logprobs_are_never_read() -> None:
    choices = PromptChoices(_request(prompt_logprobs_k=None))
    choices.read(object())  # an output without the attribute: not touched
    assert choices.take(0) is None


class PromptEngine:
    """Two steps of one token each; the first output carries vLLM's prompt logprobs, the second []."""

    async def generate(self, prompt, sampling, request_id):
        for step in range(2):
            await asyncio.sleep(0)
            yield types.SimpleNamespace(outputs=[Completion(f"t{step}", [step], "length" if step else None)],
                                        finished=step == 1, prompt_logprobs=POSITIONS if step == 0 else [])


def test_run_request_puts_the_prompt_logprobs_on_the_first_chunk_only() -> None:
    pushed: list[Chunk] = []
    active = Active("r", _request(), push=pushed.append, fail=lambda exc: pytest.fail(str(exc)))
    record = asyncio.run(run_request(PromptEngine(), active, lambda: None))
    assert record.outcome == "success" and len(pushed) == 2
    assert pushed[0].prompt_logprobs is not None and pushed[0].prompt_logprobs.top_ids[1] == [1, 2]
    assert pushed[1].prompt_logprobs is None


# -- responses: the first response of each choice, whole or streamed --------------------------------

LOGPROBS = PromptLogprobs(token_ids=PROMPT, logprobs=[math.nan, -3.0, -0.25], ranks=[0, 4, 1],
                          top_ids=[[-1], [1], [7]], top_logprobs=[[math.nan], [-0.5], [-0.25]])


def test_a_stream_sends_the_prompt_logprobs_with_the_first_response_only() -> None:
    stream = ResponseStream(_request(), FakeSink(), 0, 0)
    stream.push(Chunk("a", [1], prompt_logprobs=LOGPROBS))
    (first,), _, _ = stream.take()
    stream.push(Chunk("b", [2], finish_reason="length", final=True))
    (last,), _, _ = stream.take()
    assert first.prompt_logprobs is LOGPROBS and last.prompt_logprobs is None


def test_each_choice_of_a_whole_response_carries_them_and_an_empty_chunk_is_kept_for_them() -> None:
    stream = ResponseStream(_request(n=2, stream=False), FakeSink(), 0, 0)
    stream.push(Chunk("", [], index=1, prompt_logprobs=LOGPROBS))  # n > 1: kept although empty
    stream.push(Chunk("a", [1], index=0, prompt_logprobs=LOGPROBS))
    stream.push(Chunk("b", [2], index=1, finish_reason="length"))
    stream.push(Chunk("c", [3], index=0, finish_reason="length", final=True))
    responses, error, final = stream.take()
    assert error is None and final
    assert {(r.index, r.text, r.prompt_logprobs is LOGPROBS) for r in responses} == {(0, "ac", True), (1, "b", True)}


def test_the_prompt_tensors_are_five_with_nan_first(triton_io) -> None:  # noqa: F811 - the fixture
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="x", prompt_logprobs=LOGPROBS), final=True)
    tensors = dict(sender.sent[0][0]["tensors"])
    assert list(tensors) == ["text_output", "prompt_token_ids", "prompt_logprobs", "prompt_logprob_ranks",
                             "prompt_top_logprobs_ids", "prompt_top_logprobs"]
    assert tensors["prompt_token_ids"].tolist() == PROMPT and tensors["prompt_token_ids"].dtype == np.int64
    assert tensors["prompt_logprobs"].dtype == np.float32 and math.isnan(tensors["prompt_logprobs"][0])
    assert tensors["prompt_logprob_ranks"].tolist() == [0, 4, 1]
    assert tensors["prompt_top_logprobs_ids"].shape == (3, 1) and tensors["prompt_top_logprobs_ids"][0, 0] == -1
    assert tensors["prompt_top_logprobs"].shape == (3, 1) and tensors["prompt_top_logprobs"].dtype == np.float32


def test_a_response_without_them_has_no_prompt_tensor(triton_io) -> None:  # noqa: F811 - the fixture
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="x", logprobs=[-1.0], top_logprobs_ids=[[1]], top_logprobs=[[-1.0]], token_ids=[1]),
              final=True)
    assert not any(name.startswith("prompt_") for name, _ in sender.sent[0][0]["tensors"])
