"""A model served in bfloat16: float32 rows are narrowed to the model's dtype with the engine's own cast.

The frontend narrows before gRPC (half the bytes to Triton), the model narrows what Triton clients
send; either way the engine must see exactly the rows it would have cast itself. Oracle: the tiny
model served with `dtype: bfloat16`; `embed_tokens(ids)` as float32 through the frontend and
straight to Triton gives the text prompt's greedy tokens. A float32 value past bfloat16's range
(3.4e38: finite as float32, infinite as bfloat16) is refused naming the parameter, on both paths.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest
import torch

from client.triton_sync import InferenceServerException, generate, model_info
from tests.integration.test_frontend import encode
from tests.servers import TINY_MODEL, FrontendServer, TritonServer, make_repository

GREEDY = {"temperature": 0, "max_tokens": 12}
TEXT = "The quick brown fox jumps"


@pytest.fixture(scope="module")
def bf16_triton(tmp_path_factory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton-bf16")
    server = TritonServer(make_repository(root / "repo", engine_args={"dtype": "bfloat16"}), root / "tritonserver.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bf16_client(bf16_triton, tmp_path_factory) -> Iterator[openai.OpenAI]:
    server = FrontendServer(bf16_triton.grpc_url, tmp_path_factory.mktemp("frontend-bf16") / "frontend.log",
                            "--model-path", str(TINY_MODEL), "--model-name", "tiny")
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    server.stop()


def test_the_model_says_bfloat16(bf16_triton) -> None:
    assert model_info(bf16_triton.grpc_url)["dtype"] == "bfloat16"


def test_float32_rows_to_triton_equal_text(bf16_triton, tiny) -> None:
    by_text = generate(bf16_triton.grpc_url, text=TEXT, sampling=GREEDY)
    by_rows = generate(bf16_triton.grpc_url, embeds=tiny.embed(tiny.ids(TEXT, special=True)), sampling=GREEDY)
    assert len(by_text.token_ids) == GREEDY["max_tokens"]
    assert by_rows.token_ids == by_text.token_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_frontend_payloads_of_any_dtype_equal_text(bf16_client, tiny, dtype) -> None:
    """float32 is narrowed by the frontend, bfloat16 goes as it is, float16 (as wide) is cast by the model."""
    reference = bf16_client.completions.create(model="tiny", prompt=TEXT, **GREEDY).choices[0].text
    rows = torch.from_numpy(tiny.embed(tiny.ids(TEXT, special=True)))
    if dtype == torch.float16:  # float16 is not exact for every float32 row: compare with what the model sees
        rows = rows.to(torch.float16).to(torch.float32)
        reference = bf16_client.completions.create(model="tiny", prompt=None, extra_body={"prompt_embeds": encode(rows)},
                                                   **GREEDY).choices[0].text
    response = bf16_client.completions.create(model="tiny", prompt=None,
                                              extra_body={"prompt_embeds": encode(rows.to(dtype))}, **GREEDY)
    assert response.choices[0].text == reference
    assert response.usage.completion_tokens == GREEDY["max_tokens"]
    # The comparison can fail: other rows give other text.
    other = torch.from_numpy(tiny.embed(tiny.ids("Bonjour, je m'appelle", special=True))).to(dtype)
    assert bf16_client.completions.create(model="tiny", prompt=None, extra_body={"prompt_embeds": encode(other)},
                                          **GREEDY).choices[0].text != reference


def test_values_past_the_model_dtype_range_are_refused_and_serving_goes_on(bf16_triton, bf16_client, tiny) -> None:
    rows = tiny.embed(tiny.ids(TEXT, special=True))
    rows[1, 3] = 3.4e38  # finite float32; bfloat16's largest finite value is 3.39e38
    with pytest.raises(openai.BadRequestError) as info:
        bf16_client.completions.create(model="tiny", prompt=None, extra_body={"prompt_embeds": encode(rows)}, **GREEDY)
    assert info.value.body["param"] == "prompt_embeds" and "bfloat16 range" in info.value.body["message"]
    with pytest.raises(InferenceServerException, match="bfloat16 range"):
        generate(bf16_triton.grpc_url, embeds=rows, sampling=GREEDY)
    again = generate(bf16_triton.grpc_url, embeds=np.ascontiguousarray(rows[:1]), sampling=GREEDY)
    assert len(again.token_ids) == GREEDY["max_tokens"]
