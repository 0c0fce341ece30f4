"""The serving core against a real tritonserver + vLLM CPU engine, over gRPC and HTTP.

The oracle is exact: with greedy decoding, a prompt given as embed_tokens(ids) generates the same
token ids as the same prompt given as text/ids.
"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest

from client.triton_sync import generate

GREEDY = {"temperature": 0, "max_tokens": 24}
PH = "<|prompt_embeds|>"


@pytest.mark.parametrize("text", ["Hello there", "The quick brown fox jumps", "héllo wörld ✓"],
                         ids=["short", "sentence", "unicode"])
def test_embeddings_generate_the_same_tokens_as_text(triton, tiny, text):
    by_text = generate(triton.grpc_url, text=text, sampling=GREEDY)
    ids = tiny.ids(text, special=True)
    by_embeds = generate(triton.grpc_url, embeds=tiny.embed(ids), sampling=GREEDY)
    assert len(by_text.token_ids) == GREEDY["max_tokens"]
    assert by_embeds.token_ids == by_text.token_ids
    assert by_embeds.num_input_tokens == by_text.num_input_tokens == len(ids)
    assert by_text.text.startswith(text)  # non-streaming echoes the prompt by default


def test_different_embeddings_generate_different_tokens(triton, tiny):
    """Guards the oracle: the engine really reads the rows (not the placeholder ids)."""
    a = generate(triton.grpc_url, embeds=tiny.embed(tiny.ids("Hello there", special=True)), sampling=GREEDY)
    b = generate(triton.grpc_url, embeds=tiny.embed(tiny.ids("Goodbye now", special=True)), sampling=GREEDY)
    assert a.token_ids != b.token_ids


def test_fp16_embeddings_are_accepted(triton, tiny):
    ids = tiny.ids("Hello there", special=True)
    result = generate(triton.grpc_url, embeds=tiny.embed(ids).astype(np.float16), sampling=GREEDY)
    assert len(result.token_ids) == GREEDY["max_tokens"] and result.num_input_tokens == len(ids)


def _text_part(text: str) -> dict:
    return {"type": "text", "text": text}


# Chats whose parts are text; each layout names the parts to send as embeddings instead.
CHAT = [
    {"role": "system", "content": [_text_part("You are terse."), _text_part("Answer briefly.")]},
    {"role": "user", "content": [_text_part("alpha"), _text_part("beta"), _text_part("gamma"), _text_part("delta")]},
]
LAYOUTS = {
    "start": [(1, 0)],
    "middle": [(1, 1)],
    "end": [(1, 3)],
    "adjacent": [(1, 1), (1, 2)],
    "two-messages": [(0, 1), (1, 2)],
    "system": [(0, 0)],
    "all-user-parts": [(1, 0), (1, 1), (1, 2), (1, 3)],
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_chat_parts_as_embeddings_match_text(triton, tiny, layout):
    by_text = generate(triton.grpc_url, messages=CHAT, sampling=GREEDY)
    messages, rows, lengths = tiny.embed_parts(CHAT, layout)
    by_embeds = generate(triton.grpc_url, messages=messages, embeds=rows, lengths=lengths, sampling=GREEDY)
    assert by_embeds.token_ids == by_text.token_ids
    assert by_embeds.num_input_tokens == by_text.num_input_tokens


def test_raw_text_with_adjacent_placeholders_matches_text(triton, tiny):
    """A caller-rendered prompt: two placeholders back to back, no separator between the parts."""
    by_text = generate(triton.grpc_url, text="one two three", sampling=GREEDY)
    parts = [tiny.ids("two"), tiny.ids(" thr")]
    by_embeds = generate(triton.grpc_url, text=f"one {PH}{PH}ee", embeds=np.concatenate([tiny.embed(p) for p in parts]),
                         lengths=[len(p) for p in parts], sampling=GREEDY)
    assert by_embeds.token_ids == by_text.token_ids


@pytest.mark.parametrize("kind", ["text", "embeds", "chat"])
def test_streaming_matches_non_streaming(triton, tiny, kind):
    request = {"text": dict(text="Stream me"),
               "embeds": dict(embeds=tiny.embed(tiny.ids("Stream me", special=True))),
               "chat": dict(messages=[{"role": "user", "content": [{"type": "prompt_embeds"}]}],
                            embeds=tiny.embed(tiny.ids("Stream me")))}[kind]
    whole = generate(triton.grpc_url, sampling=GREEDY, exclude_input_in_output=True, **request)
    streamed = generate(triton.grpc_url, sampling=GREEDY, stream=True, **request)
    assert streamed.token_ids == whole.token_ids
    assert streamed.text == whole.text
    assert streamed.responses > 1  # one per engine step (plus nothing after the final flag)
    assert streamed.num_output_tokens == whole.num_output_tokens == GREEDY["max_tokens"]
    assert streamed.finish_reason == whole.finish_reason == "length"


def test_http_generate_endpoint(triton, tiny):
    """Triton's HTTP generate extension: same result as gRPC."""
    body = {"text_input": "Hello there", "sampling_parameters": json.dumps(GREEDY),
            "return_output_token_ids": True, "exclude_input_in_output": True}
    response = httpx.post(f"{triton.http_url}/v2/models/vllm_model/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    grpc = generate(triton.grpc_url, text="Hello there", sampling=GREEDY)
    assert response.json()["output_token_ids"] == grpc.token_ids


def test_stop_and_eos_finish_reasons(triton):
    result = generate(triton.grpc_url, text="abc", sampling={"temperature": 0, "max_tokens": 3})
    assert result.finish_reason == "length"
    longer = generate(triton.grpc_url, text="abc", sampling={"temperature": 0, "max_tokens": 8})
    stop_id = longer.token_ids[2]
    stopped = generate(triton.grpc_url, text="abc",
                       sampling={"temperature": 0, "max_tokens": 8, "stop_token_ids": [stop_id]})
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == longer.token_ids[: longer.token_ids.index(stop_id) + 1]


def test_the_loaded_model_froze_its_startup_heap(triton):
    """Out of the garbage collector's full collections, which stalled every stream for 0.38 s."""
    frozen = re.search(r"froze (\d+) startup objects", triton.log_path.read_text(errors="replace"))
    assert frozen is not None and int(frozen.group(1)) > 100_000
