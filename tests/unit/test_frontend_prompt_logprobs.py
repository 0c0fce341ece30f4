"""Prompt logprobs in the frontend: echo + logprobs and prompt_logprobs in vLLM's shapes (held to vLLM's own
code on the same engine values), what is asked of the model, the refusals, and reading the outputs."""

from __future__ import annotations

import math
import random
import types
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from backend.stream import prompt_logprobs
from backend.types import PromptLogprobs
from client.frontend.app import create_app
from client.frontend.config import FrontendConfig
from client.frontend.errors import APIError
from client.frontend.generation import merge_deltas
from client.frontend.logprobs import ChoiceLogprobs, TokenText, prompt_logprobs_field
from client.frontend.triton_client import Delta, TritonRequest, read_delta
from tests.unit.test_frontend_app import _infer_result
from tests.unit.test_frontend_parity import TEXT, TINY_MODEL, LogprobsClient, events

PROMPT = "Hé 😀 ü!"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_MODEL)


def vllm_prompt_logprobs(tokenizer, ids: list[int], k: int, seed: int = 0) -> list:
    """vLLM's own PromptLogprobs for `ids` (engine values made up): its LogprobsProcessor decodes the strings."""
    from vllm.v1.engine.logprobs import LogprobsProcessor

    rng = random.Random(seed)
    rows, values, ranks = [], [], []
    for token in ids[1:]:
        top = rng.sample(range(len(tokenizer)), k)
        rank = top.index(token) + 1 if token in top else rng.randint(k + 1, 200)
        rows.append([token, *top])
        logprob = float(np.float32(-rng.uniform(0.1, 9.0)))
        values.append([logprob, *sorted((float(np.float32(-rng.uniform(0.1, 3.0))) for _ in top), reverse=True)])
        if token in top:  # a ranked prompt token has its rank's value
            values[-1][0] = values[-1][rank]
        ranks.append(rank)
    processor = LogprobsProcessor(tokenizer=tokenizer, logprobs=None, prompt_logprobs=[None], cumulative_logprob=None,
                                  num_logprobs=None, num_prompt_logprobs=k)
    processor._update_prompt_logprobs((torch.tensor(rows), torch.tensor(values), torch.tensor(ranks)))
    return processor.prompt_logprobs


def vllm_echo_logprobs(tokenizer, ids: list[int], positions: list, num: int) -> dict:
    """vLLM's server's completions logprobs object for an echoed prompt (its own _create_completion_logprobs)."""
    from vllm.entrypoints.generate.base.serving import GenerateBaseServing
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    server = types.SimpleNamespace(return_tokens_as_token_ids=False,
                                   _get_decoded_token=GenerateBaseServing._get_decoded_token)  # a staticmethod
    out = OpenAIServingCompletion._create_completion_logprobs(
        server, token_ids=ids, top_logprobs=positions, num_output_top_logprobs=num, tokenizer=tokenizer)
    return out.model_dump()


@pytest.mark.parametrize("k, num, special", [(3, 2, True), (2, 2, False), (1, 3, True), (0, 0, False)],
                         ids=["k3-num2", "k2-num2-no-bos", "k1-num3", "k0-no-bos"])
def test_echo_logprobs_and_the_prompt_logprobs_field_are_vllms(tokenizer, k: int, num: int, special: bool) -> None:
    """Through the model's conversion (backend.stream) and back: the same strings, offsets, nulls, dicts as vLLM.

    Without BOS the prompt starts inside "é": vLLM leaves position 0 out of the context, so the
    second byte of "é" decodes to "" there.
    """
    from vllm.entrypoints.generate.base.serving import clamp_prompt_logprobs

    ids = tokenizer(PROMPT if special else PROMPT[1:], add_special_tokens=special)["input_ids"]
    positions = vllm_prompt_logprobs(tokenizer, ids, k)
    ours_prompt = prompt_logprobs(ids, positions, k)  # what the Triton model sends
    text = TokenText(tokenizer)
    ours = ChoiceLogprobs(text).completion([], [], [], [], num, prompt=ours_prompt)
    theirs = vllm_echo_logprobs(tokenizer, ids, positions, num)
    assert ours == theirs
    assert "" in theirs["tokens"] and ("é" in theirs["tokens"]) == special  # byte pieces completed by context
    expected = [None] + [{str(token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
                          for token_id, lp in position.items()} for position in clamp_prompt_logprobs(positions)[1:]]
    assert prompt_logprobs_field(text, ours_prompt) == expected


def test_echo_offsets_continue_into_the_output(tokenizer) -> None:
    ids = tokenizer("ab", add_special_tokens=True)["input_ids"]
    builder = ChoiceLogprobs(TokenText(tokenizer))
    prompt = prompt_logprobs(ids, vllm_prompt_logprobs(tokenizer, ids, 1), 1)
    out = builder.completion(tokenizer("c", add_special_tokens=False)["input_ids"], [-0.5], [[99]], [[-0.5]], 1,
                             prompt=prompt)
    assert out["tokens"] == [tokenizer.decode([ids[0]]), "a", "b", "c"]
    assert out["text_offset"] == [0, len(out["tokens"][0]), len(out["tokens"][0]) + 1, len(out["tokens"][0]) + 2]
    assert out["token_logprobs"][0] is None and out["top_logprobs"][0] is None


def test_minus_infinity_is_minus_9999_in_the_prompt_logprobs_field(tokenizer) -> None:
    prompt = PromptLogprobs(token_ids=[1, 2], logprobs=[math.nan, float("-inf")], ranks=[0, 262],
                            top_ids=[[-1], [3]], top_logprobs=[[math.nan], [-0.1]])
    field = prompt_logprobs_field(TokenText(tokenizer), prompt)
    assert field[0] is None and field[1]["2"]["logprob"] == -9999.0 and list(field[1]) == ["2", "3"]


# -- the routes, over a fake model that sends prompt logprobs when asked -----------------------------


class PromptClient(LogprobsClient):
    """LogprobsClient whose first response of each choice carries the prompt's logprobs when they are asked."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.tokenizer = tokenizer

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        k = request.sampling.get("prompt_logprobs")
        text = request.text if request.text is not None else "a chat"
        ids = request.input_ids or self.tokenizer(text, add_special_tokens=True)["input_ids"]
        due = set(range(request.choices)) if k is not None else set()
        async for delta in super().generate(request):
            if delta.index in due:
                due.discard(delta.index)
                delta.prompt = prompt_logprobs(ids, vllm_prompt_logprobs(self.tokenizer, ids, k), k)
            yield delta


@pytest.fixture
def api(tokenizer) -> Any:
    fake = PromptClient(tokenizer)
    app = create_app(FrontendConfig(hidden_size=8, model_path=TINY_MODEL), client_factory=lambda: fake)
    with TestClient(app) as client:
        yield client, fake


def _prompt_strings(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return [tokenizer.decode([ids[0]]), *(tokenizer.decode([i]) for i in ids[1:])]


def test_echo_with_logprobs_asks_for_prompt_logprobs_and_puts_them_first(api, tokenizer) -> None:
    client, fake = api
    response = client.post("/v1/completions", json={"prompt": "Hi", "echo": True, "logprobs": 2, "n": 2, "seed": 1})
    assert response.status_code == 200, response.text
    assert fake.requests[0].sampling["prompt_logprobs"] == 2 and fake.requests[0].sampling["logprobs"] == 2
    prompt = _prompt_strings(tokenizer, "Hi")
    for choice in response.json()["choices"]:
        logprobs = choice["logprobs"]
        assert choice["text"] == "Hi" + TEXT and logprobs["tokens"][:len(prompt)] == prompt
        assert "".join(logprobs["tokens"][len(prompt):]) == TEXT
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert None not in logprobs["token_logprobs"][1:]
        assert logprobs["text_offset"] == [len("".join(logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))]
        # vLLM also fills the choice's prompt_logprobs field whenever its engine computed them.
        assert choice["prompt_logprobs"][0] is None and len(choice["prompt_logprobs"]) == len(prompt)


def test_echo_with_logprobs_streams_the_prompt_in_each_choices_first_chunk(api, tokenizer) -> None:
    client, _ = api
    response = client.post("/v1/completions", json={"prompt": "Hi", "echo": True, "logprobs": 1, "n": 2, "seed": 1,
                                                    "stream": True})
    prompt = _prompt_strings(tokenizer, "Hi")
    chunks = [e["choices"][0] for e in events(response) if e["choices"]]
    for index in (0, 1):
        mine = [c for c in chunks if c["index"] == index]
        assert mine[0]["text"].startswith("Hi") and mine[0]["logprobs"]["tokens"][:len(prompt)] == prompt
        assert mine[0]["logprobs"]["token_logprobs"][0] is None
        assert all(c["logprobs"]["token_logprobs"][0] is not None for c in mine[1:])
        assert "prompt_logprobs" not in mine[0]  # vLLM's stream has no such field
        tokens = [t for c in mine for t in c["logprobs"]["tokens"]]
        offsets = [o for c in mine for o in c["logprobs"]["text_offset"]]
        assert offsets == [len("".join(tokens[:i])) for i in range(len(tokens))]


def test_echo_of_a_token_id_prompt_with_logprobs(api, tokenizer) -> None:
    client, fake = api
    ids = tokenizer("Hé", add_special_tokens=False)["input_ids"]
    choice = client.post("/v1/completions", json={"prompt": ids, "echo": True, "logprobs": 0}).json()["choices"][0]
    assert fake.requests[0].input_ids == ids and fake.requests[0].sampling["prompt_logprobs"] == 0
    assert choice["text"] == "Hé" + TEXT
    assert choice["logprobs"]["tokens"][:len(ids)] == [tokenizer.decode([ids[0]]), "", "é"][:len(ids)]


def test_prompt_logprobs_alone_fill_only_the_prompt_logprobs_field(api) -> None:
    client, fake = api
    choice = client.post("/v1/completions", json={"prompt": "Hi", "prompt_logprobs": 3}).json()["choices"][0]
    assert fake.requests[0].sampling == {"prompt_logprobs": 3, "max_tokens": 16}
    assert choice["logprobs"] is None and choice["text"] == TEXT
    assert choice["prompt_logprobs"][0] is None and all(len(entry) >= 3 for entry in choice["prompt_logprobs"][1:])


def test_nothing_about_the_prompt_is_asked_or_shown_otherwise(api) -> None:
    client, fake = api
    choice = client.post("/v1/completions", json={"prompt": "Hi", "echo": True, "logprobs": 1, "prompt_logprobs": 0,
                                                  "stream": True})
    assert choice.status_code == 200 and fake.requests[0].sampling["prompt_logprobs"] == 0  # explicit wins (vLLM)
    for body in ({"prompt": "Hi", "logprobs": 1}, {"prompt": "Hi", "echo": True},
                 {"prompt": "Hi", "prompt_logprobs": 0, "stream": True}):
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200 and "prompt_logprobs" not in fake.requests[-1].sampling
        assert "prompt_logprobs" not in response.text


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "Hi", "prompt_logprobs": 1, "stream": True}),
    ("/v1/completions", {"prompt": None, "prompt_embeds": "AAAA", "prompt_logprobs": 1}),
    ("/v1/completions", {"prompt": "Hi", "prompt_logprobs": -1}),
    ("/v1/completions", {"prompt": "Hi", "prompt_logprobs": 21}),
    ("/v1/completions", {"prompt": "Hi", "prompt_logprobs": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 1, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "prompt_embeds", "data": "AAAA"}]}],
                              "prompt_logprobs": 0}),
], ids=["stream", "embeds", "whole_vocab", "over_max", "bool", "chat_stream", "chat_embeds"])
def test_refusals_name_prompt_logprobs(api, path: str, body: dict) -> None:
    client, fake = api
    response = client.post(path, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt_logprobs", response.text
    assert fake.requests == []


def test_chat_prompt_logprobs_come_once_beside_the_choices(api) -> None:
    client, fake = api
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "n": 2,
                                                     "seed": 1, "prompt_logprobs": 2}).json()
    assert fake.requests[0].sampling["prompt_logprobs"] == 2
    assert body["prompt_logprobs"][0] is None and len(body["prompt_logprobs"]) > 1
    assert all("prompt_logprobs" not in choice for choice in body["choices"])
    stream = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                       "prompt_logprobs": 0, "stream": True})
    assert stream.status_code == 200 and "prompt_logprobs" not in fake.requests[-1].sampling


# -- reading the model's outputs ---------------------------------------------------------------------

PROMPT_OUTPUTS = {
    "text_output": np.array([b"a"], dtype=np.object_),
    "prompt_token_ids": np.array([5, 9, 7], dtype=np.int64),
    "prompt_logprobs": np.array([np.nan, -3.0, -0.25], dtype=np.float32),
    "prompt_logprob_ranks": np.array([0, 4, 1], dtype=np.int64),
    "prompt_top_logprobs_ids": np.array([[-1, -1], [1, 2], [7, 3]], dtype=np.int64),
    "prompt_top_logprobs": np.array([[np.nan, np.nan], [-0.5, -1.5], [-0.25, -2.0]], dtype=np.float32),
}


def test_prompt_outputs_are_read_from_a_triton_response() -> None:
    prompt = read_delta(_infer_result(PROMPT_OUTPUTS)).prompt
    assert prompt is not None and prompt.token_ids == [5, 9, 7] and prompt.ranks == [0, 4, 1]
    assert math.isnan(prompt.logprobs[0]) and prompt.logprobs[1:] == [-3.0, -0.25]
    assert prompt.top_ids == [[-1, -1], [1, 2], [7, 3]] and prompt.top_logprobs[2] == [-0.25, -2.0]
    assert read_delta(_infer_result({"text_output": PROMPT_OUTPUTS["text_output"]})).prompt is None


def test_incomplete_prompt_outputs_are_a_server_error() -> None:
    outputs = {name: value for name, value in PROMPT_OUTPUTS.items() if name != "prompt_logprob_ranks"}
    with pytest.raises(APIError) as info:
        read_delta(_infer_result(outputs))
    assert info.value.status == 500


def test_joined_responses_keep_the_prompt_logprobs() -> None:
    prompt = read_delta(_infer_result(PROMPT_OUTPUTS)).prompt
    first, then = Delta("a", 1, None, None, False, prompt=prompt), Delta("b", 1, None, None, False)
    assert merge_deltas(first, then).prompt is prompt and merge_deltas(then, first).prompt is prompt
