"""vLLM parity fields over a fake generation client: n, logprobs shapes (whole and streamed), token strings."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from client.frontend.app import create_app
from client.frontend.config import FrontendConfig
from client.frontend.errors import APIError
from client.frontend.logprobs import ChoiceLogprobs, TokenText
from client.frontend.triton_client import Delta, TritonRequest, read_delta, triton_inputs
from tests.unit.test_frontend_app import _infer_result

TINY_MODEL = Path(__file__).resolve().parents[2] / "build" / "tiny-model"
# "é" is two byte tokens in the tiny byte-level tokenizer: each decodes alone to U+FFFD.
TEXT = "Hi é!"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(TINY_MODEL)


class LogprobsClient:
    """Answers each choice with TEXT, one token per response, with fake logprobs and m alternatives."""

    def __init__(self, tokenizer: Any) -> None:
        self.ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
        self.requests: list[TritonRequest] = []

    async def is_ready(self) -> bool:
        return True

    async def model_facts(self) -> dict[str, Any]:
        return {"hidden_size": 8, "max_model_len": 8192}

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        m = request.sampling.get("logprobs")
        if request.text == "bad-structure":
            raise APIError(400, "structured_outputs: invalid regex", "structured_outputs")
        for step, token in enumerate(self.ids):
            for index in range(request.choices):  # choices interleave, as the model streams them
                last = step == len(self.ids) - 1
                delta = Delta(text="", num_output_tokens=1, num_input_tokens=4, finish_reason="length" if last else None,
                              final=last and index == request.choices - 1, index=index)
                if m is not None:
                    delta.token_ids = [token]
                    delta.logprobs = [-0.5 - index]
                    # Top m: the sampled token first (greedy), then others.
                    delta.top_ids = [[token, *range(40, 40 + m - 1)][:m]]
                    delta.top_logprobs = [[-0.5 - index, *[-2.0 - j for j in range(m - 1)]][:m]]
                delta.text = TEXT if step == 0 else ""  # the text may lag or lead the tokens
                yield delta


@pytest.fixture
def api(tokenizer) -> Any:
    fake = LogprobsClient(tokenizer)
    app = create_app(FrontendConfig(hidden_size=8, model_path=TINY_MODEL), client_factory=lambda: fake)
    with TestClient(app) as client:
        yield client, fake


def events(response: Any) -> list[Any]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_token_strings_match_vllms(tokenizer) -> None:
    """Each id alone, and byte pieces completed by context, exactly as vLLM's engine decodes them."""
    from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens
    from vllm.v1.engine.logprobs import LogprobsProcessor

    text = TokenText(tokenizer)
    ids = list(range(len(tokenizer)))
    assert [text.alone(i) for i in ids] == convert_ids_list_to_tokens(tokenizer, ids)
    sampled = tokenizer("a é ü 😀", add_special_tokens=False)["input_ids"]
    vllm_side = types.SimpleNamespace(tokenizer=tokenizer)
    for position in range(len(sampled)):
        context = sampled[max(0, position - 4):position]
        for token in (sampled[position], *sampled[:3]):
            expected = convert_ids_list_to_tokens(tokenizer, [token])[0]
            if expected.endswith("\ufffd"):
                expected = LogprobsProcessor._correct_decoded_token(vllm_side, token, context)
            assert text.token(token, context) == expected


def test_completion_logprobs_shape(tokenizer) -> None:
    builder = ChoiceLogprobs(TokenText(tokenizer))
    ids = tokenizer("ab", add_special_tokens=False)["input_ids"]
    out = builder.completion(ids, [-0.1, float("-inf")], [[ids[0], 7], [8, ids[1]]], [[-0.1, -3.0], [-1.0, -2.0]], 2)
    assert out["tokens"] == ["a", "b"] and out["text_offset"] == [0, 1]
    assert out["token_logprobs"] == [-0.1, -9999.0]  # -inf clamped as vLLM does
    # The sampled token first, then the top ones by rank (up to logprobs + 1 entries).
    assert list(out["top_logprobs"][1]) == ["b", tokenizer.decode([8])]
    assert out["top_logprobs"][1]["b"] == -9999.0
    assert builder.completion(ids[:1], [-1.0], [[ids[0]]], [[-1.0]], 0)["text_offset"] == [2]  # continues


def test_completions_n_and_logprobs(api, tokenizer) -> None:
    client, fake = api
    body = client.post("/v1/completions", json={"prompt": "x", "n": 3, "logprobs": 2, "seed": 5}).json()
    assert fake.requests[0].sampling == {"n": 3, "logprobs": 2, "seed": 5, "max_tokens": 16}
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        assert "".join(logprobs["tokens"]) == TEXT == choice["text"]
        assert logprobs["text_offset"] == [sum(len(t) for t in logprobs["tokens"][:i])
                                           for i in range(len(logprobs["tokens"]))]
        assert all(len(top) == 2 for top in logprobs["top_logprobs"])
        assert logprobs["token_logprobs"][0] == -0.5 - choice["index"]
    assert body["usage"]["prompt_tokens"] == 4  # one prompt, counted once for its 3 choices


def test_completions_stream_carries_logprobs_per_chunk(api) -> None:
    client, _ = api
    response = client.post("/v1/completions", json={"prompt": ["x", "y"], "n": 2, "logprobs": 1, "stream": True})
    chunks = [e for e in events(response) if e["choices"]]
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1, 2, 3}  # prompt j's choice i is j * n + i
    for index in range(4):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        tokens = [t for c in mine for t in c["logprobs"]["tokens"]]
        offsets = [o for c in mine for o in c["logprobs"]["text_offset"]]
        assert "".join(tokens) == TEXT and offsets == [len("".join(tokens[:i])) for i in range(len(tokens))]
        assert mine[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_logprobs_shape(api, stream: bool) -> None:
    client, _ = api
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2, "n": 2,
        "stream": stream})
    if stream:
        chunks = [e["choices"][0] for e in events(response)]
        assert [c["delta"].get("role") for c in chunks[:2]] == ["assistant", "assistant"]
        content = {i: [e for c in chunks if c["index"] == i and c["logprobs"] for e in c["logprobs"]["content"]]
                   for i in (0, 1)}
    else:
        choices = response.json()["choices"]
        content = {c["index"]: c["logprobs"]["content"] for c in choices}
    for index, entries in content.items():
        assert "".join(e["token"] for e in entries) == TEXT
        for entry in entries:
            assert entry["bytes"] == list(entry["token"].encode())
            assert entry["logprob"] == -0.5 - index
            assert [t["token"] for t in entry["top_logprobs"]][0] == entry["token"] and len(entry["top_logprobs"]) == 2


def test_no_logprobs_means_null(api) -> None:
    client, fake = api
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).json()
    assert body["choices"][0]["logprobs"] is None and "logprobs" not in fake.requests[0].sampling


@pytest.mark.parametrize("body, param", [
    ({"prompt": "bad-structure", "structured_outputs": {"regex": "("}}, "structured_outputs"),
    ({"prompt": "bad-structure", "response_format": {"type": "json_object"}}, "response_format"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
], ids=["structured_outputs", "response_format", "suffix"])
def test_refusals_name_the_field(api, body: dict, param: str) -> None:
    client, _ = api
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_parity_outputs_are_read_from_triton_responses() -> None:
    result = _infer_result({
        "text_output": np.array([b"ab"], dtype=np.object_), "index": np.array([2], dtype=np.uint32),
        "output_token_ids": np.array([5, 6], dtype=np.int64),
        "output_logprobs": np.array([-0.25, -1.5], dtype=np.float32),
        "top_logprobs_ids": np.array([[5, 9], [1, 6]], dtype=np.int64),
        "top_logprobs": np.array([[-0.25, -2.0], [-1.0, -1.5]], dtype=np.float32)})
    delta = read_delta(result)
    assert (delta.index, delta.token_ids, delta.logprobs) == (2, [5, 6], [-0.25, -1.5])
    assert delta.top_ids == [[5, 9], [1, 6]] and delta.top_logprobs == [[-0.25, -2.0], [-1.0, -1.5]]


def test_token_id_prompt_goes_as_input_ids() -> None:
    inputs = {i.name(): i for i in triton_inputs(TritonRequest({"max_tokens": 2}, input_ids=[1, 5, 8]))}
    assert inputs["input_ids"].datatype() == "INT64" and inputs["input_ids"].shape() == [3]
    assert "text_input" not in inputs
