"""The Triton boundary: pb_utils tensors in, plain arrays out; responses and errors back out.

Only this module imports triton_python_backend_utils.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from backend import interface as io
from backend.errors import ERROR_CODES, error_kind, tagged_message
from backend.types import PromptLogprobs, RequestRecord, Response

logger = logging.getLogger(__name__)


def read_inputs(request: Any) -> dict[str, Any]:
    """Triton request -> {input name: numpy array (torch tensor for BF16, which numpy lacks)}."""
    inputs: dict[str, Any] = {}
    for name in io.INPUT_NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        if name == io.PROMPT_EMBEDS_BF16:
            inputs[name] = torch.from_dlpack(tensor.to_dlpack()).cpu()
        else:
            inputs[name] = tensor.as_numpy()
    return inputs


class TritonSink:
    """Sends a request's responses through its decoupled response sender; final flag once only.

    Called from the sender threads (send, send_error) and the cancellation sweep (is_cancelled).
    """

    def __init__(self, request: Any) -> None:
        self._sender = request.get_response_sender()
        self._done = False
        self._lock = threading.Lock()

    def send(self, response: Response | None, *, final: bool) -> None:
        """One response (only the tensors it carries), or just the final flag when None."""
        built = None if response is None else pb_utils.InferenceResponse(output_tensors=_tensors(response))
        self._send(built, final)

    def send_error(self, exc: BaseException) -> None:
        """An error response with the final flag; the error's kind picks the Triton code and leads the text."""
        code_name, _ = ERROR_CODES[error_kind(exc)]
        error = pb_utils.TritonError(tagged_message(exc), getattr(pb_utils.TritonError, code_name))
        self._send(pb_utils.InferenceResponse(error=error), final=True)

    def is_cancelled(self) -> bool:
        """Whether the client cancelled; never asks Triton after the final response."""
        # Triton frees the response factory once the final response is sent: asking it then
        # reads freed memory (a segfault in TRITONBACKEND_ResponseFactoryIsCancelled).
        with self._lock:
            return not self._done and self._sender.is_cancelled()

    def _send(self, response: Any, final: bool) -> None:
        with self._lock:
            if self._done:
                return
            self._done = final
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            try:
                self._sender.send(response, flags=flags)
            except Exception:  # noqa: BLE001 - the client may be gone; nothing else to tell it
                logger.warning("could not send a response (client gone?)", exc_info=True)
            if final:
                # Let go of Triton's sender now, while the stub runs: one still held by some object
                # at interpreter exit is freed after the shared memory it points into (segfault).
                self._sender = None


def _string(name: str, value: str) -> Any:
    return pb_utils.Tensor(name, np.array([value.encode("utf-8")], dtype=np.object_))


def _prompt_tensors(prompt: PromptLogprobs) -> list[Any]:
    """The five prompt-logprob outputs (position 0: NaN logprob, rank 0, top ids -1, see backend.interface)."""
    p, m = len(prompt.token_ids), len(prompt.top_ids[0]) if prompt.top_ids else 0
    return [
        pb_utils.Tensor(io.PROMPT_TOKEN_IDS, np.array(prompt.token_ids, dtype=np.int64)),
        pb_utils.Tensor(io.PROMPT_LOGPROBS, np.array(prompt.logprobs, dtype=np.float32)),
        pb_utils.Tensor(io.PROMPT_LOGPROB_RANKS, np.array(prompt.ranks, dtype=np.int64)),
        pb_utils.Tensor(io.PROMPT_TOP_LOGPROBS_IDS, np.array(prompt.top_ids, dtype=np.int64).reshape(p, m)),
        pb_utils.Tensor(io.PROMPT_TOP_LOGPROBS, np.array(prompt.top_logprobs, dtype=np.float32).reshape(p, m)),
    ]


def _tensors(response: Response) -> list[Any]:
    """Output tensors of one response: text_output always, the others only when the response has them."""
    if response.model_info is not None:
        return [_string(io.MODEL_INFO_OUTPUT, response.model_info)]
    tensors = [_string(io.TEXT_OUTPUT, response.text)]
    if response.finish_reason is not None:
        tensors.append(_string(io.FINISH_REASON, response.finish_reason))
    if response.num_input_tokens is not None:
        tensors.append(pb_utils.Tensor(io.NUM_INPUT_TOKENS, np.array([response.num_input_tokens], dtype=np.uint32)))
    if response.num_output_tokens is not None:
        tensors.append(pb_utils.Tensor(io.NUM_OUTPUT_TOKENS, np.array([response.num_output_tokens], dtype=np.uint32)))
    if response.token_ids is not None:
        tensors.append(pb_utils.Tensor(io.OUTPUT_TOKEN_IDS, np.array(response.token_ids, dtype=np.int64)))
    if response.index is not None:
        tensors.append(pb_utils.Tensor(io.INDEX, np.array([response.index], dtype=np.uint32)))
    if response.logprobs is not None:
        k = len(response.logprobs)
        m = len(response.top_logprobs_ids[0]) if k and response.top_logprobs_ids else 0
        tensors.append(pb_utils.Tensor(io.OUTPUT_LOGPROBS, np.array(response.logprobs, dtype=np.float32)))
        tensors.append(pb_utils.Tensor(io.TOP_LOGPROBS_IDS,
                                       np.array(response.top_logprobs_ids or [], dtype=np.int64).reshape(k, m)))
        tensors.append(pb_utils.Tensor(io.TOP_LOGPROBS,
                                       np.array(response.top_logprobs or [], dtype=np.float32).reshape(k, m)))
    if response.prompt_logprobs is not None:
        tensors.extend(_prompt_tensors(response.prompt_logprobs))
    return tensors


TTFT_BUCKETS = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0]


class TritonMetrics:
    """Triton custom metrics for the model (as vllm_backend's REPORT_CUSTOM_METRICS), on port 8002."""

    def __init__(self, model_name: str, instance: str) -> None:
        # Each model instance (a stub with its own engine) reports its own series: the gauges of
        # several instances would otherwise overwrite each other. Sum over `instance` for the model.
        labels = {"model": model_name, "instance": instance}
        counter = pb_utils.MetricFamily.COUNTER
        # Families must outlive their metrics (Triton refuses updates otherwise): keep them all.
        self._families: list[Any] = []
        self._lock = threading.Lock()  # updates (metrics thread) vs release() (finalize)
        self._released = False

        def family(name: str, description: str, kind: Any) -> Any:
            self._families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self._families[-1]

        self._prompt = family("vllm:prompt_tokens_total", "Prompt tokens, after placeholder expansion", counter).Metric(labels)
        self._embeds = family("vllm:prompt_embeds_tokens_total", "Prompt positions given as embeddings", counter).Metric(labels)
        self._generation = family("vllm:generation_tokens_total", "Generated tokens", counter).Metric(labels)
        outcomes = family("vllm:request_outcome_total", "Finished requests by outcome", counter)
        self._outcomes = {o: outcomes.Metric({**labels, "outcome": o})
                          for o in ("success", "cancelled", "invalid", "engine_dead", "stalled", "error")}
        gauge = family("vllm:num_requests", "Requests now: active (in this model), queued (no token yet), "
                       "engine_unfinished (held by the vLLM engine)", pb_utils.MetricFamily.GAUGE)
        self._counts = {k: gauge.Metric({**labels, "state": k}) for k in ("active", "queued", "engine_unfinished")}
        self._counts["engine_healthy"] = family(
            "vllm:engine_healthy", "1 while the engine serves, 0 while it is dead, stalled or restarting",
            pb_utils.MetricFamily.GAUGE).Metric(labels)
        self._counts["engine_restarts"] = family(
            "vllm:engine_restarts", "Engine restarts after a crash or a stall, since the model loaded",
            pb_utils.MetricFamily.GAUGE).Metric(labels)
        histogram = pb_utils.MetricFamily.HISTOGRAM
        self._ttft = family("vllm:time_to_first_token_seconds", "Time to first token", histogram).Metric(
            labels, buckets=TTFT_BUCKETS)
        self._tpot = family("vllm:time_per_output_token_seconds", "Mean time per output token after the first, one observation per request",
                            histogram).Metric(labels, buckets=TPOT_BUCKETS)

    def release(self) -> None:
        """Drop every metric, then every family, now, while the stub's shared memory still exists.

        Called from finalize(). Left to the interpreter's exit, their destructors write to shared
        memory that is gone (the stub segfaulted in Metric::SaveToSharedMemory during shutdown);
        updates that arrive later are ignored.
        """
        with self._lock:
            self._released = True
            for name in ("_prompt", "_embeds", "_generation", "_ttft", "_tpot"):
                setattr(self, name, None)
            self._outcomes.clear()
            self._counts.clear()
            self._families.clear()
            gc.collect()

    def on_finish(self, record: RequestRecord) -> None:
        """One finished request: a handful of updates, whatever its length."""
        with self._lock:
            if not self._released:
                self._record(record)

    def _record(self, record: RequestRecord) -> None:
        self._prompt.increment(record.prompt_tokens)
        self._embeds.increment(record.prompt_embeds_tokens)
        self._generation.increment(record.output_tokens)
        self._outcomes.get(record.outcome, self._outcomes["error"]).increment(1)
        if record.ttft_s is not None:
            self._ttft.observe(record.ttft_s)
        if record.tpot_s is not None:
            self._tpot.observe(record.tpot_s)

    def on_counts(self, counts: dict[str, int]) -> None:
        """Set the load gauges."""
        with self._lock:
            for key, metric in self._counts.items():
                metric.set(counts.get(key, 0))
