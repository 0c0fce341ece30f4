"""The small interface the routers use to generate, and its implementation over Triton's asyncio gRPC streams.

One HTTP choice is one Triton request on a bidirectional stream that carries nothing else while it
runs; streams are reused from request to request (`triton_streams.StreamPool`). A streaming HTTP
request runs the model with `stream=true` (one response per step, as deltas); a whole one with
`stream=false` (one response with everything). Leaving the iterator early (client disconnect,
another choice failing) cancels the gRPC call, which Triton turns into a cancelled request that
the model aborts in the engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
import httpx
import ml_dtypes
import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferResult
from tritonclient.utils import InferenceServerException

from backend import interface as io
from backend.types import PromptLogprobs
from client.frontend.errors import APIError, from_grpc_error, from_triton_message
from client.frontend.triton_streams import StreamPool, infer_request, is_final
from client.triton_inputs import build_inputs, model_info_inputs, read_model_info

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TritonRequest:
    """One generation: text, or chat messages, plus embedding rows; no HTTP or Triton types inside."""

    sampling: dict[str, Any]
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    embeds: torch.Tensor | None = None  # all parts' rows, concatenated in order
    lengths: list[int] | None = None  # rows per part (chat); None for one whole-prompt tensor
    input_ids: list[int] | None = None  # a token-id prompt, sent to the engine as it is
    stream: bool = False  # responses per step (deltas), or one response at the end

    @property
    def choices(self) -> int:
        """How many sequences (vLLM's `n`) this request generates; its responses carry their index."""
        return int(self.sampling.get("n") or 1)


@dataclasses.dataclass
class Delta:
    """One Triton response: the new text and the counts; with logprobs, the tokens and their logprobs.

    `index` is the choice (0..n-1) within its request; `final` means the whole request has ended.
    """

    text: str
    num_output_tokens: int
    num_input_tokens: int | None
    finish_reason: str | None
    final: bool
    index: int = 0
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_ids: list[list[int]] = dataclasses.field(default_factory=list)  # per token, by rank
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    prompt: PromptLogprobs | None = None  # the prompt's logprobs: on a choice's first response, when asked


class GenerationClient(Protocol):
    """What the routers need from an inference server."""

    def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        """Stream one request's deltas; the last has `final`. Raises APIError."""

    async def is_ready(self) -> bool:
        """True when the server and the model can take requests."""

    async def model_facts(self) -> dict[str, Any]:
        """The served model's facts (hidden_size, max_model_len, vocab_size, model, ...). Raises APIError."""


# Only the outputs the frontend reads (no output_token_ids): the model builds no other tensor.
RETURNS = (io.RETURN_FINISH_REASON, io.RETURN_NUM_INPUT_TOKENS, io.RETURN_NUM_OUTPUT_TOKENS)


def _embeds_array(embeds: torch.Tensor) -> np.ndarray:
    """The tensor as numpy in its own precision: fp16 and bf16 are sent as they came, never widened."""
    embeds = embeds.contiguous()
    if embeds.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits (no copy)
        return embeds.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if embeds.dtype in (torch.float16, torch.float32):
        return embeds.numpy()
    return embeds.to(torch.float32).numpy()


def triton_inputs(request: TritonRequest) -> list[Any]:
    """The request as tritonclient InferInputs (only the outputs read here asked for, the input never echoed)."""
    return build_inputs(
        grpcclient,
        text=request.text,
        messages=request.messages,
        embeds=None if request.embeds is None else _embeds_array(request.embeds),
        lengths=request.lengths,
        input_ids=request.input_ids,
        stream=request.stream,
        sampling=request.sampling,
        exclude_input_in_output=True,
        returns=RETURNS,
    )


def _bytes_elements(raw: bytes) -> list[bytes]:
    """A serialized BYTES tensor (4-byte little-endian length, then the bytes, per element) -> its elements."""
    if len(raw) >= 4 and int.from_bytes(raw[:4], "little") == len(raw) - 4:
        return [raw[4:]]  # the usual case: one element
    out, offset = [], 0
    while offset + 4 <= len(raw):
        length = int.from_bytes(raw[offset:offset + 4], "little")
        out.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    return out


# The numeric outputs read for logprobs and choices: (numpy dtype, Delta field).
_NUMERIC_OUTPUTS = {
    io.OUTPUT_TOKEN_IDS: np.int64,
    io.OUTPUT_LOGPROBS: np.float32,
    io.TOP_LOGPROBS_IDS: np.int64,
    io.TOP_LOGPROBS: np.float32,
    io.PROMPT_TOKEN_IDS: np.int64,
    io.PROMPT_LOGPROBS: np.float32,
    io.PROMPT_LOGPROB_RANKS: np.int64,
    io.PROMPT_TOP_LOGPROBS_IDS: np.int64,
    io.PROMPT_TOP_LOGPROBS: np.float32,
}


def _prompt_logprobs(arrays: dict[str, np.ndarray]) -> PromptLogprobs | None:
    """The prompt-logprob outputs of a response (the model sends all five or none)."""
    if io.PROMPT_TOKEN_IDS not in arrays:
        return None
    ids = [int(i) for i in arrays[io.PROMPT_TOKEN_IDS].reshape(-1)]
    p = len(ids)
    try:
        return PromptLogprobs(
            token_ids=ids, logprobs=arrays[io.PROMPT_LOGPROBS].astype(np.float64).reshape(p).tolist(),
            ranks=arrays[io.PROMPT_LOGPROB_RANKS].reshape(p).tolist(),
            top_ids=arrays[io.PROMPT_TOP_LOGPROBS_IDS].reshape(p, -1).tolist(),
            top_logprobs=arrays[io.PROMPT_TOP_LOGPROBS].astype(np.float64).reshape(p, -1).tolist())
    except (KeyError, ValueError):
        raise APIError(500, "the inference server sent incomplete prompt logprobs") from None


def _add_token_outputs(delta: Delta, arrays: dict[str, np.ndarray]) -> Delta:
    """Fill the choice index and the per-token ids and logprobs from their output arrays."""
    if io.INDEX in arrays and arrays[io.INDEX].size:
        delta.index = int(arrays[io.INDEX].reshape(-1)[0])
    if io.OUTPUT_TOKEN_IDS in arrays:
        delta.token_ids = [int(i) for i in arrays[io.OUTPUT_TOKEN_IDS].reshape(-1)]
    if io.OUTPUT_LOGPROBS in arrays:
        delta.logprobs = [float(v) for v in arrays[io.OUTPUT_LOGPROBS].reshape(-1)]
    k = len(delta.logprobs)
    if io.TOP_LOGPROBS_IDS in arrays and k:
        delta.top_ids = arrays[io.TOP_LOGPROBS_IDS].reshape(k, -1).tolist()
    if io.TOP_LOGPROBS in arrays and k:
        delta.top_logprobs = arrays[io.TOP_LOGPROBS].astype(np.float64).reshape(k, -1).tolist()
    delta.prompt = _prompt_logprobs(arrays)
    return delta


def _final_flag(result: Any) -> bool:
    """Triton's final-response flag, when the response carries it."""
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


def read_delta(result: Any) -> Delta:
    """One InferResult -> Delta, read straight from the protobuf (no numpy object arrays per token).

    `final` from the response parameter, else from a finish reason (TritonClient.generate decides it
    for n > 1). The counts and the finish reason may come on every response or only on the final
    one: each is read where present.
    """
    response = result.get_response()
    if len(response.raw_output_contents) != len(response.outputs):
        return _read_delta_typed(result)
    text, reason, n_in, n_out = "", "", None, 0
    arrays: dict[str, np.ndarray] = {}
    for output, raw in zip(response.outputs, response.raw_output_contents):
        name = output.name
        if name == io.TEXT_OUTPUT:
            text = b"".join(_bytes_elements(raw)).decode("utf-8", errors="replace")
        elif name == io.FINISH_REASON:
            elements = _bytes_elements(raw)
            reason = elements[0].decode("utf-8", errors="replace") if elements else ""
        elif name == io.NUM_OUTPUT_TOKENS and len(raw) >= 4:
            n_out = int.from_bytes(raw[:4], "little")
        elif name == io.NUM_INPUT_TOKENS and len(raw) >= 4:
            n_in = int.from_bytes(raw[:4], "little")
        elif name == io.INDEX and len(raw) >= 4:
            arrays[name] = np.frombuffer(raw[:4], dtype=np.uint32)
        elif name in _NUMERIC_OUTPUTS:
            dtype = np.dtype(_NUMERIC_OUTPUTS[name])
            arrays[name] = np.frombuffer(raw[: len(raw) // dtype.itemsize * dtype.itemsize], dtype=dtype)
    final = bool(reason) or _final_flag(result)
    delta = Delta(text=text, num_output_tokens=n_out, num_input_tokens=n_in, finish_reason=reason or None,
                  final=final)
    return _add_token_outputs(delta, arrays)


def _read_delta_typed(result: Any) -> Delta:
    """read_delta for a response whose outputs are not all raw bytes (tritonclient's own decoding)."""
    text_array = result.as_numpy(io.TEXT_OUTPUT)
    text = b"".join(text_array.reshape(-1)).decode("utf-8", errors="replace") if text_array is not None else ""
    reason_array = result.as_numpy(io.FINISH_REASON)
    reason = reason_array.reshape(-1)[0].decode() if reason_array is not None and reason_array.size else ""
    n_in = result.as_numpy(io.NUM_INPUT_TOKENS)
    n_out = result.as_numpy(io.NUM_OUTPUT_TOKENS)
    final = bool(reason) or _final_flag(result)
    delta = Delta(text=text, num_output_tokens=int(n_out.reshape(-1)[0]) if n_out is not None and n_out.size else 0,
                  num_input_tokens=int(n_in.reshape(-1)[0]) if n_in is not None and n_in.size else None,
                  finish_reason=reason or None, final=final)
    arrays = {name: result.as_numpy(name) for name in (io.INDEX, *_NUMERIC_OUTPUTS)}
    return _add_token_outputs(delta, {name: a for name, a in arrays.items() if a is not None})


def engine_healthy_gauge(metrics_text: str, model: str) -> bool | None:
    """vllm:engine_healthy of `model` from Prometheus text: True/False, or None if not reported."""
    values = []
    for line in metrics_text.splitlines():
        if line.startswith("vllm:engine_healthy{") and f'model="{model}"' in line:
            values.append(float(line.rsplit(" ", 1)[1]))
    return None if not values else all(v >= 1 for v in values)


class TritonClient:
    """GenerationClient over `tritonclient.grpc.aio`; create it inside the serving event loop."""

    def __init__(self, url: str, model: str, *, timeout_s: float = 600.0, metrics_url: str | None = None,
                 on_stream_open: Callable[[], None] | None = None) -> None:
        self._client = aioclient.InferenceServerClient(url)
        self._model = model
        self._timeout_s = timeout_s
        self._ids = itertools.count()
        self._metrics_url = metrics_url
        self._http = httpx.AsyncClient(timeout=2.0) if metrics_url else None
        self._streams = StreamPool(url, on_open=on_stream_open)

    async def close(self) -> None:
        await self._streams.close()
        await self._client.close()
        if self._http is not None:
            await self._http.aclose()

    async def is_ready(self) -> bool:
        try:
            ready = bool(await self._client.is_server_ready(client_timeout=5)) and bool(
                await self._client.is_model_ready(self._model, client_timeout=5))
        except InferenceServerException as exc:
            logger.info("triton not ready: %s", str(exc)[:200])
            return False
        return ready and await self._engine_healthy()

    async def _engine_healthy(self) -> bool:
        """The model's vllm:engine_healthy gauge; True when it can't be read (metrics off or elsewhere)."""
        if self._http is None:
            return True
        try:
            response = await self._http.get(self._metrics_url)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            logger.debug("no engine-health gauge from %s: %s", self._metrics_url, exc)
            return True
        healthy = engine_healthy_gauge(response.text, self._model)
        if healthy is False:
            logger.info("model %s: the engine is down or restarting", self._model)
        return healthy is not False

    async def model_facts(self) -> dict[str, Any]:
        """The model's facts (backend.interface.MODEL_INFO_KEYS): one model_info request, no generation."""
        message = {"model_name": self._model, "inputs": model_info_inputs(grpcclient),
                   "request_id": f"frontend-facts-{next(self._ids)}"}
        done = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield message
            await done.wait()

        call = self._client.stream_infer(requests(), stream_timeout=self._timeout_s)
        try:
            async for result, error in call:
                if error is not None:
                    raise from_triton_message(str(error.message() if hasattr(error, "message") else error))
                return read_model_info(result)
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from None
        except InferenceServerException as exc:
            raise from_triton_message(str(exc.message())) from None
        finally:
            done.set()
            call.cancel()
        raise APIError(503, "the inference server closed the stream before answering model_info")

    async def generate(self, request: TritonRequest) -> AsyncIterator[Delta]:
        request_id = f"frontend-{next(self._ids)}"
        message = infer_request(self._model, triton_inputs(request), request_id)
        call = self._streams.take()
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            call.cancel()  # Triton cancels the request; the pending read raises CancelledError

        timer = asyncio.get_running_loop().call_later(self._timeout_s, time_out)
        finished = reusable = False  # the request is over on Triton's side / its stream may carry another
        try:
            await call.write(message)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    finished = True
                    raise APIError(500, "the inference server closed the stream before the final response")
                result = response.infer_response
                if result.id != request_id:  # the stream is cancelled below, with whatever runs on it
                    raise APIError(500, "the inference server sent a response of another request")
                final = is_final(result)
                if response.error_message:
                    # The model's errors end its request (final); Triton's own (model not found, bad
                    # input) come before the model runs, without the flag: the request is over either way.
                    finished, reusable = True, final
                    raise from_triton_message(response.error_message)
                delta = read_delta(InferResult(result))
                delta.final = final
                # Before the yield: a consumer may stop at the final delta and close this generator.
                finished = reusable = final
                yield delta
                if final:
                    return
        except grpc.RpcError as exc:
            finished = True
            raise from_grpc_error(exc) from None
        except asyncio.InvalidStateError:  # a write to a stream Triton ended (status OK) meanwhile
            finished = True
            raise APIError(503, "inference server unavailable: the stream was closed") from None
        except asyncio.CancelledError:
            if not timed_out:
                raise
            finished = True
            raise APIError(503, f"inference server unavailable: no final response within {self._timeout_s:g} s"
                           ) from None
        finally:
            timer.cancel()
            if reusable:
                self._streams.give_back(call)
            elif finished:
                self._streams.retire(call)
            else:
                # Left early (client gone, cancelled task): cancel the RPC so Triton cancels the request.
                call.cancel()
