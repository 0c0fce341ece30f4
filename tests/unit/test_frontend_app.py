"""The frontend app against a fake generation client: what reaches Triton, SSE shape, caps, errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from client.frontend.app import create_app
from client.frontend.config import FrontendConfig, from_json, parse_args, to_json
from client.frontend.errors import APIError
from client.frontend.generation import ChoiceStreams, FrontendState
from client.frontend.limits import Budget
from client.frontend.schemas import chat_body, completion_body
from client.frontend.sse import ChunkFormat
from client.frontend.payloads import encode_prompt_embeds
from client.frontend.triton_client import (
    RETURNS,
    Delta,
    TritonRequest,
    _read_delta_typed,
    engine_healthy_gauge,
    read_delta,
    triton_inputs,
)

HIDDEN = 8
TINY_MODEL = Path(__file__).resolve().parents[2] / "build" / "tiny-model"


class FakeClient:
    """Answers every request with 'abc' in three deltas; 'fail' and 'late-fail' prompts raise."""

    def __init__(self) -> None:
        self.requests: list[TritonRequest] = []
        self.ready = True
        self.facts_asked = 0
        self.facts = {"hidden_size": HIDDEN, "max_model_len": 16384, "vocab_size": 300, "model": "not/here",
                      "dtype": "float32"}

    async def is_ready(self) -> bool:
        return self.ready

    async def model_facts(self) -> dict[str, Any]:
        self.facts_asked += 1
        return self.facts

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        if request.text == "fail":
            raise APIError(400, "text_input: bad", "prompt")
        n_in = int(request.embeds.shape[0]) if request.embeds is not None else len(request.text or "x")
        for i, piece in enumerate("abc"):
            if i == 1 and request.text == "late-fail":
                raise APIError(503, "overloaded")
            yield Delta(text=piece, num_output_tokens=1, num_input_tokens=n_in,
                        finish_reason="length" if i == 2 else None, final=i == 2)


def make_client(**config: Any) -> tuple[TestClient, FakeClient]:
    fake = FakeClient()
    app = create_app(FrontendConfig(hidden_size=HIDDEN, **config), client_factory=lambda: fake)
    return TestClient(app), fake


@pytest.fixture
def api() -> Any:
    client, fake = make_client(max_body_bytes=16384)
    with client:
        yield client, fake


def sse(response: Any) -> list[Any]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in response.text.splitlines() if line.startswith("data: ")]


def test_completion_choices_and_usage(api) -> None:
    client, fake = api
    rows = encode_prompt_embeds(torch.randn(5, HIDDEN))
    body = client.post("/v1/completions", json={"prompt": ["hi", "there"], "prompt_embeds": rows}).json()
    assert [c["text"] for c in body["choices"]] == ["abc"] * 3
    assert body["usage"] == {"prompt_tokens": 5 + 2 + 5, "completion_tokens": 9, "total_tokens": 21}
    assert [r.embeds is not None for r in fake.requests] == [True, False, False]  # embeddings first
    assert fake.requests[0].sampling == {"max_tokens": 16}
    assert not any(r.stream for r in fake.requests)  # one Triton response per choice, not one per token


def test_chat_parts_reach_triton_as_messages_and_one_tensor(api) -> None:
    client, fake = api
    first, second = torch.randn(2, HIDDEN), torch.randn(3, HIDDEN)
    messages = [
        {"role": "system", "content": [{"type": "prompt_embeds", "data": encode_prompt_embeds(first)}]},
        {"role": "user", "content": [{"type": "text", "text": "look:"},
                                     {"type": "prompt_embeds", "data": encode_prompt_embeds(second)}]},
    ]
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "abc"
    (sent,) = fake.requests
    assert sent.messages == [
        {"role": "system", "content": [{"type": "prompt_embeds"}]},
        {"role": "user", "content": [{"type": "text", "text": "look:"}, {"type": "prompt_embeds"}]},
    ]
    assert sent.lengths == [2, 3] and torch.equal(sent.embeds, torch.cat([first, second]))
    assert "data" not in json.dumps(sent.messages)


def test_chat_stream_shape(api) -> None:
    client, fake = api
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                          "stream": True, "stream_options": {"include_usage": True}})
    events = sse(response)
    assert fake.requests[0].stream
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-2]) == "abc"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_stream_error_before_first_chunk_is_a_status(api) -> None:
    client, _ = api
    response = client.post("/v1/completions", json={"prompt": ["ok", "fail"], "stream": True})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_stream_error_after_first_chunk_is_in_band(api) -> None:
    client, _ = api
    response = client.post("/v1/completions", json={"prompt": "late-fail", "stream": True})
    events = sse(response)
    assert response.status_code == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 503


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_body_over_the_cap_is_413(api, chunked: bool) -> None:
    client, fake = api
    body = json.dumps({"prompt": "x" * 20000}).encode()
    content = iter([body[:9000], body[9000:]]) if chunked else body
    response = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "RequestTooLargeError"
    assert fake.requests == []


def test_pickle_refused_when_disabled() -> None:
    client, fake = make_client(allow_pickle=False)
    tensor = torch.randn(2, HIDDEN)
    with client:
        refused = client.post("/v1/completions", json={"prompt_embeds": encode_prompt_embeds(tensor)})
        accepted = client.post("/v1/completions", json={"prompt_embeds": encode_prompt_embeds(tensor, "safetensors"),
                                                        "prompt_embeds_format": "safetensors"})
    assert refused.status_code == 400 and "disabled" in refused.json()["error"]["message"]
    assert accepted.status_code == 200 and torch.equal(fake.requests[0].embeds, tensor)


def test_health_metrics_and_unknown_model(api) -> None:
    client, fake = api
    assert client.get("/health").status_code == 200
    fake.ready = False
    assert client.get("/health").status_code == 503
    assert client.post("/v1/completions", json={"model": "other", "prompt": "x"}).status_code == 404
    metrics = client.get("/metrics").text
    assert 'frontend_requests_total{endpoint="/health",status="503"} 1.0' in metrics
    assert 'frontend_requests_total{endpoint="/v1/completions",status="404"} 1.0' in metrics


def test_bad_json_and_token_ids_without_tokenizer(api) -> None:
    client, fake = api
    response = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"] == "request body is not valid JSON"
    # Token ids need no tokenizer: they go to the model as they are.
    assert client.post("/v1/completions", json={"prompt": [[1, 2, 3], [9]]}).status_code == 200
    assert [r.input_ids for r in fake.requests] == [[1, 2, 3], [9]] and fake.requests[0].text is None
    # Strings for echo and logprobs do need it.
    for extra, param in (({"echo": True}, "echo"), ({"logprobs": 1}, "logprobs")):
        response = client.post("/v1/completions", json={"prompt": [1, 2, 3], **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == param
        assert "--model-path" in response.json()["error"]["message"]


def test_engine_health_is_read_from_the_model_gauge() -> None:
    metrics = ('# TYPE vllm:engine_healthy gauge\n'
               'vllm:engine_healthy{model="other"} 1\n'
               'vllm:engine_healthy{model="vllm_model"} 0\n')
    assert engine_healthy_gauge(metrics, "vllm_model") is False
    assert engine_healthy_gauge(metrics.replace("} 0", "} 1"), "vllm_model") is True
    assert engine_healthy_gauge("nv_inference_count 3\n", "vllm_model") is None  # not reported: no verdict


@pytest.mark.parametrize("value, url", [
    ("auto", "http://triton.local:8002/metrics"),
    ("off", None),
    ("http://m:9/metrics", "http://m:9/metrics"),
])
def test_metrics_url_defaults_to_tritons_metrics_port(value, url) -> None:
    config = FrontendConfig(triton_url="triton.local:8001", triton_metrics_url=value).check()
    assert config.metrics_url == url


# -- closed by default: bind address and API key ------------------------------------------------


def test_cli_binds_loopback_by_default_and_takes_the_key_from_vllm_env(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    config = parse_args([])
    assert config.host == "127.0.0.1" and config.api_key is None and config.workers >= 1
    assert parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert parse_args([]).api_key == "from-env"
    assert parse_args(["--api-key", "given"]).api_key == "given"


def test_config_survives_the_trip_to_worker_processes() -> None:
    config = parse_args(["--api-key", "k", "--model-path", str(TINY_MODEL), "--workers", "3"])
    assert from_json(to_json(config)) == config


def test_api_key_is_required_except_for_health_and_metrics() -> None:
    client, fake = make_client(api_key="sekrit")
    with client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            response = client.post("/v1/completions", json={"prompt": "x"}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == {"message": "invalid or missing API key (Authorization: Bearer <key>)",
                                                "type": "AuthenticationError", "param": None, "code": 401}
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/models").status_code == 401
        assert fake.requests == []
        good = {"Authorization": "Bearer sekrit"}
        assert client.post("/v1/completions", json={"prompt": "x"}, headers=good).status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.get("/health").status_code == 200
        assert 'status="401"' in client.get("/metrics").text


# -- bounded work per request and per process ----------------------------------------------------


def test_prompts_per_request_are_capped() -> None:
    client, fake = make_client(max_prompts=2)
    with client:
        response = client.post("/v1/completions", json={"prompt": ["a", "b", "c"]})
        assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
        assert client.post("/v1/completions", json={"prompt": ["a", "b"]}).status_code == 200
    assert len(fake.requests) == 2


def test_model_facts_are_asked_once_and_bound_payloads() -> None:
    """No --hidden-size or --max-model-len: the model's published facts give both (asked once)."""
    fake = FakeClient()
    fake.facts = {**fake.facts, "max_model_len": 6}
    app = create_app(FrontendConfig(), client_factory=lambda: fake)
    part = {"type": "prompt_embeds", "data": encode_prompt_embeds(torch.randn(4, HIDDEN))}
    wrong = {"type": "prompt_embeds", "data": encode_prompt_embeds(torch.randn(4, HIDDEN + 1))}
    with TestClient(app) as client:
        for content, message in (([part, part], "context of 6"), ([wrong], "hidden size")):
            response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
            assert response.status_code == 400 and message in response.json()["error"]["message"]
        assert client.post("/v1/completions", json={"prompt_embeds": part["data"]}).status_code == 200
    assert fake.facts_asked == 1


def test_logprobs_use_the_models_own_tokenizer_when_it_is_here() -> None:
    fake = FakeClient()
    fake.facts = {**fake.facts, "model": str(TINY_MODEL)}
    with TestClient(create_app(FrontendConfig(hidden_size=HIDDEN), client_factory=lambda: fake)) as client:
        assert client.post("/v1/completions", json={"prompt": "x", "logprobs": 1}).status_code == 200


def test_request_rows_over_the_context_are_refused() -> None:
    client, fake = make_client(max_model_len=6)
    part = {"type": "prompt_embeds", "data": encode_prompt_embeds(torch.randn(4, HIDDEN))}
    with client:
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [part, part]}]})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages" and "context of 6" in response.json()["error"]["message"]
        state = client.app.state.frontend
        assert state.embed_bytes.used == 0  # what the refused request took is back
    assert fake.requests == []


def safetensors_rows(rows: int) -> str:
    return encode_prompt_embeds(torch.randn(rows, HIDDEN), "safetensors")


def test_embedding_bytes_budget_waits_then_429_and_is_given_back() -> None:
    client, fake = make_client(max_embed_bytes_in_flight=4000, limit_wait_s=0.2)
    body = {"prompt_embeds": safetensors_rows(2), "prompt_embeds_format": "safetensors"}
    with client:
        budget = client.app.state.frontend.embed_bytes
        too_big = client.post("/v1/completions", json={**body, "prompt_embeds": safetensors_rows(200)})
        assert too_big.status_code == 413 and too_big.json()["error"]["param"] == "prompt_embeds"
        held = client.portal.call(budget.take, 3900)
        busy = client.post("/v1/completions", json=body)
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "RateLimitError"
        client.portal.call(held.release)
        assert client.post("/v1/completions", json=body).status_code == 200
        assert sse(client.post("/v1/completions", json={**body, "stream": True}))[-1] == "[DONE]"
        assert budget.used == 0 and client.app.state.frontend.streams.used == 0
    assert len(fake.requests) == 2


def test_triton_streams_budget() -> None:
    client, fake = make_client(max_triton_streams=2, limit_wait_s=0)
    with client:
        assert client.post("/v1/completions", json={"prompt": ["a", "b", "c"]}).status_code == 413
        held = client.portal.call(client.app.state.frontend.streams.take, 1)
        assert client.post("/v1/completions", json={"prompt": ["a", "b"]}).status_code == 429
        client.portal.call(held.release)
        assert client.post("/v1/completions", json={"prompt": ["a", "b"]}).status_code == 200
        assert client.app.state.frontend.streams.used == 0


def test_budget_waiter_gets_what_is_released() -> None:
    async def scenario() -> list[str]:
        budget = Budget("units", 10, wait_s=5)
        first = await budget.take(8)
        events = []

        async def second() -> None:
            lease = await budget.take(5)
            events.append("second")
            lease.release()

        task = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        events.append("release")
        first.release()
        first.release()  # idempotent
        await task
        events.append(f"used={budget.used}")
        return events

    assert asyncio.run(scenario()) == ["release", "second", "used=0"]


# -- bad text is a 400 naming the field; token ids are decoded off the event loop ----------------


@pytest.mark.parametrize("endpoint, body, param", [
    ("/v1/completions", {"prompt": "a\ud800b"}, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "\udc00"]}, "prompt[1]"),
    ("/v1/completions", {"prompt": "x", "stop": ["ok", "\ud800"]}, "stop"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"\ud800": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "messages[0].content[0].text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "name": "\udfff"}]}, "messages[0].name"),
], ids=["prompt", "prompt_list", "stop", "logit_bias_key", "chat_content", "chat_part", "chat_name"])
def test_lone_surrogates_are_400_naming_the_field(api, endpoint: str, body: dict, param: str) -> None:
    client, fake = api
    response = client.post(endpoint, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake.requests == []


def test_token_id_prompts_go_untouched_and_echo_decodes_them_in_the_pool(monkeypatch) -> None:
    threads = []
    original = FrontendState._locked

    def recording(self, function, *args):
        threads.append(threading.current_thread().name)
        return original(self, function, *args)

    monkeypatch.setattr(FrontendState, "_locked", recording)
    client, fake = make_client(model_path=TINY_MODEL)
    ids = [5, 300, 7, 7]  # not what any text tokenizes to: still sent as they are
    with client:
        body = client.post("/v1/completions", json={"prompt": ids, "echo": True}).json()
    assert fake.requests[-1].input_ids == ids
    assert body["choices"][0]["text"] == AutoTokenizer.from_pretrained(TINY_MODEL).decode(ids) + "abc"
    assert threads and all(name.startswith("embeds-decode") for name in threads)


def test_small_payloads_decode_on_the_loop_and_large_ones_in_the_pool(monkeypatch) -> None:
    from client.frontend import generation

    threads = []
    original = generation.decode_request_embeds

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "decode_request_embeds", recording)
    small = encode_prompt_embeds(torch.randn(4, HIDDEN))
    large_rows = generation.INLINE_DECODE_BYTES // (HIDDEN * 3) + 1  # fp32, base64: more than 4 bytes a value
    large = encode_prompt_embeds(torch.randn(large_rows, HIDDEN))
    assert len(small) <= generation.INLINE_DECODE_BYTES < len(large)
    client, fake = make_client()
    with client:
        for payload in (small, large):
            assert client.post("/v1/completions", json={"prompt_embeds": payload}).status_code == 200
    assert not threads[0].startswith("embeds-decode") and threads[1].startswith("embeds-decode")
    assert [tuple(r.embeds.shape) for r in fake.requests] == [(4, HIDDEN), (large_rows, HIDDEN)]


# -- the Triton boundary: what is sent and how responses are read --------------------------------


def _infer_result(outputs: dict[str, np.ndarray], final: bool | None = None) -> Any:
    """A tritonclient InferResult as Triton's gRPC stream delivers it (raw output contents)."""
    from tritonclient.grpc import InferResult, service_pb2
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    response = service_pb2.ModelInferResponse(model_name="vllm_model")
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()
        response.raw_output_contents.append(raw)
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return InferResult(response)


@pytest.mark.parametrize("outputs, expected", [
    ({"text_output": np.array(["é!".encode()], dtype=np.object_),
      "num_output_tokens": np.array([2], dtype=np.uint32)},
     Delta("é!", 2, None, None, False)),
    ({"text_output": np.array([b""], dtype=np.object_), "finish_reason": np.array([b"length"], dtype=np.object_),
      "num_input_tokens": np.array([70000], dtype=np.uint32), "num_output_tokens": np.array([0], dtype=np.uint32)},
     Delta("", 0, 70000, "length", True)),
    ({"text_output": np.array([b"ab"], dtype=np.object_), "finish_reason": np.array([b""], dtype=np.object_)},
     Delta("ab", 0, None, None, False)),
], ids=["step", "final_with_counts", "empty_reason"])
def test_read_delta_from_raw_outputs(outputs: dict, expected: Delta) -> None:
    result = _infer_result(outputs)
    assert read_delta(result) == expected
    assert _read_delta_typed(result) == expected  # the fallback reads the same


def test_final_flag_without_outputs() -> None:
    assert read_delta(_infer_result({}, final=True)) == Delta("", 0, None, None, True)


@pytest.mark.parametrize("dtype, name", [(torch.float32, "prompt_embeds"), (torch.float16, "prompt_embeds_fp16"),
                                         (torch.bfloat16, "prompt_embeds_bf16")], ids=str)
def test_embeddings_go_to_triton_in_their_own_precision(dtype: torch.dtype, name: str) -> None:
    embeds = torch.randn(3, HIDDEN).to(dtype)
    inputs = {i.name(): i for i in triton_inputs(TritonRequest({"max_tokens": 2}, embeds=embeds))}
    tensor = inputs[name]
    assert tensor.shape() == [3, HIDDEN]
    assert torch.equal(torch.frombuffer(bytearray(tensor._raw_content), dtype=dtype).view(3, HIDDEN), embeds)
    # Only the outputs the frontend reads are asked for.
    assert sorted(n for n in inputs if n.startswith("return_")) == sorted(RETURNS)


@pytest.mark.parametrize("model, given, sent", [
    ("bfloat16", torch.float32, torch.bfloat16), ("float16", torch.float32, torch.float16),
    ("bfloat16", torch.float16, torch.float16), ("float32", torch.float16, torch.float16),
    ("float32", torch.float32, torch.float32), (None, torch.float32, torch.float32)], ids=str)
def test_rows_go_to_triton_in_the_model_dtype_when_it_is_narrower(model, given, sent) -> None:
    """The engine casts rows to the model's dtype: narrowing first halves the bytes and changes no value."""
    fake = FakeClient()
    fake.facts["dtype"] = model
    rows = torch.randn(4, HIDDEN).to(given)
    wide = rows.clone()
    wide[2, 1] = 1e5  # finite in float32 and bfloat16, not in float16
    with TestClient(create_app(FrontendConfig(), client_factory=lambda: fake)) as client:
        response = client.post("/v1/completions", json={"prompt_embeds": encode_prompt_embeds(rows)})
        assert response.status_code == 200, response.text
        assert fake.requests[0].embeds.dtype == sent and torch.equal(fake.requests[0].embeds, rows.to(sent))
        response = client.post("/v1/completions", json={"prompt_embeds": encode_prompt_embeds(wide)})
    if (given, sent) == (torch.float32, torch.float16):
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "prompt_embeds" and "float16 range" in response.text
    else:  # fp16 rows hold no 1e5 (it is their inf): refused as such; the others pass through
        assert response.status_code == (400 if given == torch.float16 else 200), response.text


# -- per token: coalescing under backlog, preformatted chunks --------------------------------------


class BurstClient(FakeClient):
    """Every response of a choice is ready at once (the HTTP client is behind the engine)."""

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        for i, piece in enumerate("hello"):
            yield Delta(text=piece, num_output_tokens=1, num_input_tokens=7 if i == 4 else None,
                        finish_reason="length" if i == 4 else None, final=i == 4)


def test_queued_responses_go_out_as_one_delta_per_choice() -> None:
    async def scenario() -> list[list[tuple[int, Delta]]]:
        streams = ChoiceStreams(BurstClient(), [TritonRequest({}, text="a"), TritonRequest({}, text="b")])
        await streams.start()
        await asyncio.sleep(0.01)  # both pumps run ahead of the consumer
        batches = [batch async for batch in streams.batches()]
        await streams.close()
        return batches

    (batch,) = asyncio.run(scenario())
    assert sorted(batch, key=lambda item: item[0]) == [(i, Delta("hello", 5, 7, "length", True)) for i in (0, 1)]


class PacedClient(FakeClient):
    """Responses 10 ms apart (an engine step), slower than the consumer."""

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        for i, piece in enumerate("hello"):
            await asyncio.sleep(0.01)
            yield Delta(text=piece, num_output_tokens=1, num_input_tokens=None, finish_reason=None, final=i == 4)


def test_a_consumer_that_keeps_up_gets_every_response() -> None:
    async def scenario() -> list[str]:
        streams = ChoiceStreams(PacedClient(), [TritonRequest({}, text="a")])
        await streams.start()
        return [delta.text async for batch in streams.batches() for _, delta in batch]

    assert asyncio.run(scenario()) == list("hello")


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("text, reason", [("a\"b\n\u2028é", None), ("", "stop"), ("x", "length")])
def test_preformatted_chunks_equal_the_json_bodies(chat: bool, text: str, reason: str | None) -> None:
    raw = ChunkFormat("id-1", "m\"odel", 123, chat=chat).chunk(2, text, reason)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    if chat:
        choice = {"index": 2, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": reason}
        expected = chat_body("id-1", "m\"odel", [choice], chunk=True, created=123)
    else:
        choice = {"index": 2, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": None}
        expected = completion_body("id-1", "m\"odel", [choice], chunk=True, created=123)
    assert json.loads(raw[6:]) == expected


def test_a_serving_process_runs_torch_on_one_thread_with_its_startup_heap_frozen() -> None:
    """Per-request tensor work is small; an OpenMP team per op waited ~40 ms for cores the engine held.
    The objects startup leaves are frozen, out of the garbage collector's full collections.

    In a fresh interpreter, as a frontend process starts (this one may have imported vLLM's CPU
    worker, which makes torch.set_num_threads a no-op).
    """
    code = ("import gc, torch; from client.frontend.app import setup_process; "
            "from client.frontend.config import FrontendConfig; "
            "setup_process(FrontendConfig()); print(torch.get_num_threads(), gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    threads, frozen = out.split()[-2:]
    assert threads == "1" and int(frozen) > 50_000


class PartialCharacterClient(FakeClient):
    """A byte-level model's steps: the first two end inside a UTF-8 character (no text yet)."""

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        for i, piece in enumerate(["", "", "é", "", "x"]):
            yield Delta(text=piece, num_output_tokens=1, num_input_tokens=3 if i == 4 else None,
                        finish_reason="length" if i == 4 else None, final=i == 4)
            await asyncio.sleep(0.005)  # one engine step: the consumer keeps up, nothing is merged


def test_a_choices_first_step_is_streamed_even_without_text_and_later_empty_ones_wait() -> None:
    fake = PartialCharacterClient()
    app = create_app(FrontendConfig(hidden_size=HIDDEN), client_factory=lambda: fake)
    with TestClient(app) as client:
        response = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5, "stream": True,
                                                        "stream_options": {"include_usage": True}})
    events = sse(response)
    assert [e["choices"][0]["text"] for e in events[:-2]] == ["", "é", "x"]  # no chunk for steps 2 and 4
    assert events[-2]["usage"]["completion_tokens"] == 5 and events[-1] == "[DONE]"
