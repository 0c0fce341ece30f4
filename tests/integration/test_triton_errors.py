"""Bad input over the real server: INVALID_ARG naming the input, and the engine keeps serving."""

from __future__ import annotations

import json
import re
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.triton_sync import InferenceServerException, generate

GREEDY = {"temperature": 0, "max_tokens": 12}
PH = "<|prompt_embeds|>"
H = 128
USER_EMBED = [{"role": "user", "content": [{"type": "prompt_embeds"}]}]


def rows(n: int, h: int = H) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, h)).astype(np.float32)


# name -> (request for client.triton_sync.generate, input named in the error)
BAD_REQUESTS = {
    "rank-1": (dict(embeds=rows(1)[0]), "prompt_embeds"),
    "rank-3-batch-2": (dict(embeds=np.zeros((2, 3, H), np.float32)), "prompt_embeds"),
    "hidden-129": (dict(embeds=rows(4, H + 1)), "prompt_embeds"),
    "nan": (dict(embeds=np.full((3, H), np.nan, np.float32)), "prompt_embeds"),
    "inf": (dict(embeds=np.full((3, H), np.inf, np.float32)), "prompt_embeds"),
    "zero-rows": (dict(embeds=np.zeros((0, H), np.float32)), "prompt_embeds"),
    "over-context": (dict(embeds=np.zeros((8192, H), np.float32)), "prompt_embeds"),
    "rows-plus-max-tokens": (dict(embeds=rows(8000), sampling={"max_tokens": 500}), "prompt_embeds"),
    "lengths-dont-sum": (dict(messages=USER_EMBED, embeds=rows(4), lengths=[1, 2]), "prompt_embeds_lengths"),
    "placeholders-vs-parts": (dict(messages=USER_EMBED, embeds=rows(4), lengths=[2, 2]), "messages"),
    "text-placeholders-vs-parts": (dict(text=f"a{PH}b{PH}", embeds=rows(4)), "text_input"),
    "placeholder-in-user-text": (dict(messages=[{"role": "user", "content": f"hi {PH}"}]), "messages"),
    "malformed-messages-json": (dict(text=None, messages=None, raw_messages="[{"), "messages"),
    "malformed-sampling-json": (dict(text="hi", raw_sampling="{temperature"), "sampling_parameters"),
    "unknown-sampling-field": (dict(text="hi", sampling={"temprature": 0}), "sampling_parameters"),
    "messages-and-text": (dict(text="hi", messages=[{"role": "user", "content": "hi"}]), "messages"),
    "nothing": (dict(), "text_input"),
}


def _send(url: str, request: dict) -> None:
    request = dict(request)
    raw_messages = request.pop("raw_messages", None)
    raw_sampling = request.pop("raw_sampling", None)
    if raw_messages is None and raw_sampling is None:
        request.setdefault("sampling", GREEDY)
        generate(url, **request)
        return
    # Malformed JSON can't come from the helper (it serializes): build the tensors by hand.
    from client.triton_inputs import build_inputs

    inputs = build_inputs(grpcclient, **{k: v for k, v in request.items() if v is not None})
    for name, raw in (("messages", raw_messages), ("sampling_parameters", raw_sampling)):
        if raw is not None:
            tensor = grpcclient.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([raw.encode()], dtype=np.object_))
            inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    errors: list = []
    client.start_stream(callback=lambda result, error: errors.append(error))
    client.async_stream_infer("vllm_model", inputs)
    deadline = time.monotonic() + 60
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop_stream()
    if errors and errors[0] is not None:
        raise errors[0]


@pytest.fixture(scope="module")
def reference(triton, tiny):
    """A good request's output before any bad input was sent."""
    return generate(triton.grpc_url, embeds=tiny.embed(tiny.ids("Still alive?", special=True)), sampling=GREEDY)


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_input_is_rejected_with_the_input_named(triton, reference, case):
    request, parameter = case
    with pytest.raises(InferenceServerException) as info:
        _send(triton.grpc_url, request)
    message = info.value.message()
    # Ours start with the kind tag and the input's name; Triton's own shape check (rank) quotes it.
    assert message.startswith(f"[INVALID_ARG] {parameter}: ") or f"input '{parameter}'" in message, message
    assert len(message) < 400


def test_bf16_and_fp32_both_given_is_rejected_over_http(triton):
    """HTTP carries the Triton error code: INVALID_ARG is 400."""
    body = {"text_input": "hi", "sampling_parameters": json.dumps({"foo": 1})}
    response = httpx.post(f"{triton.http_url}/v2/models/vllm_model/generate", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"].startswith("[INVALID_ARG] sampling_parameters: ")


def test_engine_still_serves_the_same_output(triton, tiny, reference):
    """Runs after every bad input above (pytest keeps file order)."""
    again = generate(triton.grpc_url, embeds=tiny.embed(tiny.ids("Still alive?", special=True)), sampling=GREEDY)
    assert again.token_ids == reference.token_ids
    assert triton.model_ready()
    metrics = triton.metrics()
    assert re.search(r'vllm:request_outcome_total\{.*outcome="success".*\} [1-9]', metrics)
