"""Blocking gRPC streaming calls to the model, for tests, scripts and examples."""

from __future__ import annotations

import queue
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client.triton_inputs import MODEL_NAME, Generation, build_inputs, model_info_inputs, read_model_info


def generate(url: str = "localhost:8001", model: str = MODEL_NAME, *, timeout_s: float = 120.0,
             **request: Any) -> Generation:
    """Send one request over a gRPC stream and join its responses; raises InferenceServerException."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(model, build_inputs(grpcclient, **request), enable_empty_final_response=True)
        generation = Generation()
        while True:
            result, error = results.get(timeout=timeout_s)
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                generation.add(result)
            if response.parameters["triton_final_response"].bool_param:
                return generation
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def model_info(url: str = "localhost:8001", model: str = MODEL_NAME, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """The model's facts (hidden size, context, dtype, placeholder, vocab size, ...): no generation."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(model, model_info_inputs(grpcclient))
        result, error = results.get(timeout=timeout_s)
        if error is not None:
            raise error
        return read_model_info(result)
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


__all__ = ["InferenceServerException", "generate", "model_info"]
