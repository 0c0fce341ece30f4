"""The whole stack on vLLM CUDA: equality oracle, streaming, bad inputs and cancellation.

Run on a GPU machine with scripts/gpu/device_run.sh (or `pytest -m gpu tests/gpu`). Models come
from GPU_TEST_MODELS="name=path[:dtype],..." (default: the tiny model in float32); a model needs
real weights (the oracle reads its embedding table), e.g. scripts/make_shape_model.py --weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from client.triton_sync import InferenceServerException, generate
from tests.conftest import TinyModel
from tests.integration.streams import OpenStream, gauge, wait_for
from tests.servers import TINY_MODEL, TritonServer, make_repository

pytestmark = pytest.mark.gpu
GREEDY = {"temperature": 0, "max_tokens": 32}


def _models() -> dict[str, tuple[Path, str]]:
    spec = os.environ.get("GPU_TEST_MODELS", f"tiny={TINY_MODEL}:float32")
    models = {}
    for item in spec.split(","):
        name, rest = item.split("=", 1)
        path, _, dtype = rest.partition(":")
        models[name] = (Path(path), dtype or "bfloat16")
    return models


@pytest.fixture(scope="module", params=list(_models()), ids=list(_models()))
def stack(request, tmp_path_factory):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    path, dtype = _models()[request.param]
    root = tmp_path_factory.mktemp(f"gpu-{request.param}")
    # CUDA graphs and torch.compile on, as users serve (the CPU model.json's enforce_eager is overridden).
    engine_args = {"model": str(path), "dtype": dtype, "gpu_memory_utilization": 0.35, "enforce_eager": False,
                   "max_model_len": 4096}
    engine_args.update(json.loads(os.environ.get("GPU_ENGINE_ARGS", "{}")))
    server = TritonServer(make_repository(root / "repo", engine_args=engine_args), root / "tritonserver.log")
    yield server, TinyModel(path)
    server.stop()


@pytest.mark.parametrize("text", ["Hello there", "The quick brown fox jumps over the lazy dog"])
def test_embeddings_match_text(stack, text):
    server, model = stack
    by_text = generate(server.grpc_url, text=text, sampling=GREEDY)
    by_embeds = generate(server.grpc_url, embeds=model.embed(model.ids(text, special=True)), sampling=GREEDY)
    assert len(by_text.token_ids) > 0
    assert by_embeds.token_ids == by_text.token_ids


@pytest.mark.parametrize("layout", [[(1, 1)], [(0, 0), (1, 2)]], ids=["middle", "two-messages"])
def test_chat_parts_match_text(stack, layout):
    server, model = stack
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": t} for t in ("alpha", "beta", "gamma")]}]
    by_text = generate(server.grpc_url, messages=chat, sampling=GREEDY)
    messages, rows, lengths = model.embed_parts(chat, layout)
    by_embeds = generate(server.grpc_url, messages=messages, embeds=rows, lengths=lengths, sampling=GREEDY)
    assert by_embeds.token_ids == by_text.token_ids


def test_streaming_matches_non_streaming(stack):
    server, model = stack
    embeds = model.embed(model.ids("Stream me", special=True))
    whole = generate(server.grpc_url, embeds=embeds, sampling=GREEDY)
    streamed = generate(server.grpc_url, embeds=embeds, sampling=GREEDY, stream=True)
    assert streamed.token_ids == whole.token_ids and streamed.responses > 1


def test_bad_inputs_then_same_output(stack):
    server, model = stack
    embeds = model.embed(model.ids("Still alive?", special=True))
    before = generate(server.grpc_url, embeds=embeds, sampling=GREEDY)
    bad = [np.zeros((4, model.hidden_size + 1), np.float32), np.full((4, model.hidden_size), np.nan, np.float32),
           np.zeros((4096, model.hidden_size), np.float32)]
    for tensor in bad:
        with pytest.raises(InferenceServerException, match="prompt_embeds: "):
            generate(server.grpc_url, embeds=tensor, sampling=GREEDY)
    assert generate(server.grpc_url, embeds=embeds, sampling=GREEDY).token_ids == before.token_ids


def test_cancelled_stream_is_aborted_in_the_engine(stack):
    server, _ = stack
    stream = OpenStream(server.grpc_url, text="cancel me", sampling={"max_tokens": 3000, "ignore_eos": True})
    stream.wait_responses(3)
    stream.cancel()
    wait_for(lambda: gauge(server.metrics(), "vllm:num_requests", state="engine_unfinished") == 0, 10,
             "the engine to drop the request")
    stream.close()
