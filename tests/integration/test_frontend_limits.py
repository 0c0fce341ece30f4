"""The frontend's limits on the real stack: hostile payloads cost memory bounded by what was sent, and keys.

The frontend runs as one process here so its peak RSS (VmHWM) can be read before and after a
burst of 4 concurrent hostile requests. The issue this guards against: 64 stride-0 parts of
(16000, H) in one 180 KB chat request, 8 at once, took a frontend to 19 GB and the OOM killer.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import torch

from client.frontend.payloads import encode_prompt_embeds
from tests.servers import TINY_MODEL, FrontendServer

API_KEY = "test-key"
CONTEXT = 8192  # model.json's max_model_len
GIB = 1 << 30
CONCURRENT = 4


def raw_payload(tensor: torch.Tensor) -> str:
    """torch.save of the tensor as it is (views kept: no .contiguous()), base64."""
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def chat(parts: list[str], **extra: Any) -> dict[str, Any]:
    content = [{"type": "prompt_embeds", "data": p} for p in parts]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 1, **extra}


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def current_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def concurrently(send: Callable[[], httpx.Response], n: int = CONCURRENT) -> list[httpx.Response]:
    """`send` from n threads at once; their responses."""
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = send()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert all(isinstance(r, httpx.Response) for r in results), results
    return results


@pytest.fixture(scope="module")
def frontend(triton, tmp_path_factory) -> Iterator[FrontendServer]:
    log = tmp_path_factory.mktemp("frontend-limits") / "frontend.log"
    server = FrontendServer(triton.grpc_url, log, "--model-path", str(TINY_MODEL), "--workers", "1",
                            "--max-model-len", str(CONTEXT), "--api-key", API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(frontend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=frontend.url, timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        yield session


def _post(http: httpx.Client, path: str, body: dict) -> Callable[[], httpx.Response]:
    return lambda: http.post(path, json=body)


# Each: (endpoint, body factory, expected status). Built lazily: some bodies are tens of MB.
def _stride0_chat(hidden: int) -> dict:
    part = raw_payload(torch.zeros(1, hidden).expand(16000, hidden))  # 2.8 KB, 8 MB if made dense
    return chat([part] * 64)


def _stride0_completions(hidden: int) -> dict:
    part = raw_payload(torch.zeros(1, hidden).expand(16000, hidden))
    return {"prompt_embeds": [part] * 64, "max_tokens": 1}


def _many_dense_parts_over_context(hidden: int) -> dict:
    # 64 honest parts of 512 rows: 32768 rows together, 4x the context; 22 MB of base64.
    return chat([encode_prompt_embeds(torch.randn(512, hidden) * 0.01) for _ in range(64)])


def _many_dense_parts_within_context(hidden: int) -> dict:
    # 16 parts of 100 rows: served (1600 rows), and still costs the frontend little.
    return chat([encode_prompt_embeds(torch.randn(100, hidden) * 0.01) for _ in range(16)])


HOSTILE = {
    "stride0_chat": ("/v1/chat/completions", _stride0_chat, 400),
    "stride0_completions": ("/v1/completions", _stride0_completions, 400),
    "many_parts_over_context": ("/v1/chat/completions", _many_dense_parts_over_context, 400),
    "many_parts_within_context": ("/v1/chat/completions", _many_dense_parts_within_context, 200),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_memory_is_bounded_by_what_was_sent(frontend, http: httpx.Client, tiny, name: str) -> None:
    path, make_body, status = HOSTILE[name]
    body = make_body(tiny.hidden_size)
    pid = frontend.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    baseline = current_rss(pid)
    responses = concurrently(_post(http, path, body))
    growth = peak_rss(pid) - baseline
    assert [r.status_code for r in responses] == [status] * CONCURRENT, responses[0].text[:300]
    if status == 400:
        error = responses[0].json()["error"]
        assert error["param"] and len(error["message"]) < 300
    assert growth < GIB, f"frontend peak RSS grew by {growth / GIB:.2f} GiB"


def test_good_request_unchanged_after_hostile_ones(http: httpx.Client, tiny) -> None:
    text = "The capital of France is"
    greedy = {"max_tokens": 8, "temperature": 0}
    reference = http.post("/v1/completions", json={"prompt": text, **greedy}).json()["choices"][0]["text"]
    embeds = torch.from_numpy(tiny.embed(tiny.ids(text, special=True)))
    response = http.post("/v1/completions", json={"prompt_embeds": encode_prompt_embeds(embeds), **greedy})
    assert response.json()["choices"][0]["text"] == reference


def test_api_key_guards_everything_but_health_and_metrics(frontend) -> None:
    with httpx.Client(base_url=frontend.url, timeout=60) as anonymous:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = anonymous.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "AuthenticationError"
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/health").status_code == 200
        assert "frontend_requests_total" in anonymous.get("/metrics").text
        response = anonymous.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                                  headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2

