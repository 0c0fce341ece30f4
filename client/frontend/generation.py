"""What both routers share: decoding payloads off the loop, running choices, and streaming them as SSE.

A request with several choices (completions with several prompts) runs them concurrently, one
Triton request each. Before a stream answers 200, every choice has produced its first response or
failed, so Triton's validation errors still come back as a proper 4xx. Whatever way a request ends
(done, failed, client gone), every Triton request it started is finished or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import torch
from fastapi import Request

from backend.errors import ServingError, ValidationError
from backend.types import PromptLogprobs
from client.frontend import sse
from client.frontend.config import FrontendConfig
from client.frontend.errors import APIError, from_serving_error, to_api_error
from client.frontend.limits import Budget
from client.frontend.logprobs import TokenText
from client.frontend.middleware import Metrics
from client.frontend.payloads import PayloadLimits, decode_request_embeds, payload_bytes
from client.frontend.triton_client import Delta, GenerationClient, TritonRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")
DISCONNECT_POLL_S = 0.25
# Payloads up to this size (base64 text, all of a request's parts) are decoded on the event loop
# (~0.15 ms for 32 x 128 fp32 rows); larger ones in the worker pool, so the loop never stalls on one.
INLINE_DECODE_BYTES = 128 << 10
MODEL_FACTS_LOGGED = ("hidden_size", "max_model_len", "dtype", "vocab_size", "model")
MODEL_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _positive_fact(facts: dict[str, Any], key: str) -> int:
    """One integer fact of the model; 503 when the model did not publish it."""
    value = facts.get(key)
    if type(value) is not int or value < 1:
        raise APIError(503, f"the model did not publish its {key}; start the frontend with "
                            f"--{key.replace('_', '-')}")
    return value


def _model_dtype(facts: dict[str, Any] | None) -> torch.dtype | None:
    """The model's dtype from its facts ("bfloat16", ...), if it is one embeddings come in."""
    return MODEL_DTYPES.get((facts or {}).get("dtype"))


class FrontendState:
    """The app's shared objects: settings, the inference client, the decode pool, metrics, model facts."""

    def __init__(self, config: FrontendConfig, client: GenerationClient, metrics: Metrics) -> None:
        self.config = config
        self.client = client
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="embeds-decode")
        self._facts: dict[str, Any] | None = None
        self._facts_lock = asyncio.Lock()
        self.embed_bytes = Budget("embedding bytes", config.max_embed_bytes_in_flight, config.limit_wait_s,
                                  "prompt_embeds")
        self.streams = Budget("Triton streams", config.max_triton_streams, config.limit_wait_s)
        self._tokenizer: Any = None
        self._tokenizer_path: Path | None = config.model_path
        self._token_text: TokenText | None = None
        # A fast tokenizer must not be used from two threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()

    async def facts(self) -> dict[str, Any]:
        """The served model's facts (hidden size, context, vocabulary, path), asked of the model once."""
        if self._facts is None:
            async with self._facts_lock:
                if self._facts is None:
                    self._facts = await self.client.model_facts()
                    logger.info("model facts: %s", {k: self._facts.get(k) for k in MODEL_FACTS_LOGGED})
        return self._facts

    async def limits(self) -> PayloadLimits:
        """Payload limits: --hidden-size, else the model's own hidden size (asked once); the model's dtype if known."""
        hidden_size, facts = self.config.hidden_size, self._facts
        if hidden_size is None:
            facts = await self.facts()
            hidden_size = _positive_fact(facts, "hidden_size")
        return PayloadLimits(hidden_size=hidden_size, max_rows=self.config.max_embed_rows,
                             allow_pickle=self.config.allow_pickle, model_dtype=_model_dtype(facts))

    async def max_request_rows(self) -> int:
        """Embedding rows per request, all payloads together: --max-model-len, else the model's context."""
        if self.config.max_model_len is not None:
            return self.config.max_model_len
        return _positive_fact(await self.facts(), "max_model_len")

    async def offload(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a CPU-bound call in the worker pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args, **kwargs))

    async def decode(self, payloads: Sequence[str], payload_format: str, parameters: Sequence[str], *,
                     scope: dict | None = None, request_parameter: str = "prompt_embeds") -> list[torch.Tensor]:
        """Decode and validate a request's payloads in order, within the byte budget (large ones in the worker pool).

        The payloads' size is taken from the per-process budget before anything is decoded, and held
        until the HTTP exchange ends (with `scope`).
        """
        if not payloads:
            return []
        if len(payloads) > self.config.max_embed_parts:
            raise APIError(400, f"{len(payloads)} prompt_embeds payloads exceed the limit of "
                                f"{self.config.max_embed_parts}", request_parameter)
        limits = await self.limits()
        max_rows = await self.max_request_rows()
        size = payload_bytes(payloads)
        lease = await self.embed_bytes.take(size, scope)
        decode = functools.partial(decode_request_embeds, payloads, limits, max_total_rows=max_rows,
                                   payload_format=payload_format, parameters=parameters,
                                   request_parameter=request_parameter)
        try:
            # Small payloads on the loop: a hand-off to the pool and back costs more than their decode.
            return decode() if size <= INLINE_DECODE_BYTES else await self.offload(decode)
        except ValidationError as exc:
            lease.release()
            raise APIError(400, str(exc), exc.parameter) from None
        except BaseException:
            lease.release()
            raise

    async def open_streams(self, count: int, scope: dict) -> None:
        """Take `count` Triton streams from the per-process budget until the HTTP exchange ends."""
        await self.streams.take(count, scope)

    def _load_tokenizer(self) -> Any:
        """The served model's tokenizer, loaded once; call with the lock, in the worker pool."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
            self._token_text = TokenText(self._tokenizer)
        return self._tokenizer

    async def token_text(self, parameter: str) -> TokenText:
        """Token strings for logprobs (the served model's tokenizer); 400 naming `parameter` without one."""
        if self._token_text is None:
            if self._tokenizer_path is None:
                # The model's own directory, when this machine has it (the frontend beside Triton).
                served = (await self.facts()).get("model")
                if isinstance(served, str) and (Path(served) / "tokenizer_config.json").is_file():
                    self._tokenizer_path = Path(served)
            if self._tokenizer_path is None:
                raise APIError(400, f"{parameter} needs the model's tokenizer: start the frontend with "
                                    "--model-path", parameter)
            await self.offload(self._locked, self._load_tokenizer)
        return self._token_text

    def _locked(self, function: Callable[..., T], *args: Any) -> T:
        with self._tokenizer_lock:
            return function(*args)

    async def prompt_texts(self, prompts: Sequence[list[int]], parameter: str = "echo") -> list[str]:
        """Token-id prompts as text (for echo), decoded in the worker pool."""
        if not prompts:
            return []
        await self.token_text(parameter)
        return await self.offload(self._locked, lambda: [self._tokenizer.decode(ids) for ids in prompts])

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


@dataclasses.dataclass
class ChoiceResult:
    """One choice, joined."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_ids: list[list[int]] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    prompt: PromptLogprobs | None = None  # when asked: the prompt's logprobs (from the choice's first response)

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        if delta.prompt is not None:
            self.prompt = delta.prompt
        self.completion_tokens += delta.num_output_tokens
        self.token_ids += delta.token_ids
        self.logprobs += delta.logprobs
        self.top_ids += delta.top_ids
        self.top_logprobs += delta.top_logprobs
        if delta.num_input_tokens is not None:
            self.prompt_tokens = delta.num_input_tokens
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason


async def _cancel_all(tasks: Sequence[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def prompt_tokens(results: Sequence[ChoiceResult], n: int) -> int:
    """Prompt tokens of a request's prompts: each prompt counted once, not once per choice (as vLLM)."""
    return sum(max(r.prompt_tokens for r in results[i:i + n]) for i in range(0, len(results), n))


async def collect(client: GenerationClient, requests: Sequence[TritonRequest]) -> list[ChoiceResult]:
    """Run every request to the end: its n choices in index order, requests in order; a failure cancels all."""

    async def one(request: TritonRequest) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in range(request.choices)]
        async with contextlib.aclosing(client.generate(request)) as stream:
            async for delta in stream:
                if not 0 <= delta.index < len(results):
                    raise APIError(500, f"the inference server sent choice {delta.index} of {len(results)}")
                results[delta.index].add(delta)
        if len(results) > 1:  # the prompt's count may come on one choice only
            count = max(r.prompt_tokens for r in results)
            for result in results:
                result.prompt_tokens = count
        return results

    tasks = [asyncio.create_task(one(r)) for r in requests]
    try:
        return [result for results in await asyncio.gather(*tasks) for result in results]
    finally:
        await _cancel_all([t for t in tasks if not t.done()])


async def until_disconnected(http_request: Request, work: Awaitable[T], on_disconnect: Callable[[], None]) -> T:
    """Await `work`, cancelling it (and so its Triton requests) if the HTTP client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await http_request.is_disconnected():
                on_disconnect()
                raise APIError(499, "client disconnected")
    finally:
        if not task.done():
            await _cancel_all([task])


_END = object()


def merge_deltas(first: Delta, then: Delta) -> Delta:
    """Two consecutive responses of one choice as one: text joined, counts added, the latest flags."""
    return Delta(text=first.text + then.text, num_output_tokens=first.num_output_tokens + then.num_output_tokens,
                 num_input_tokens=then.num_input_tokens if then.num_input_tokens is not None
                 else first.num_input_tokens,
                 finish_reason=then.finish_reason or first.finish_reason, final=first.final or then.final,
                 index=first.index, token_ids=first.token_ids + then.token_ids,
                 logprobs=first.logprobs + then.logprobs, top_ids=first.top_ids + then.top_ids,
                 top_logprobs=first.top_logprobs + then.top_logprobs,
                 prompt=first.prompt if first.prompt is not None else then.prompt)


class ChoiceStreams:
    """Several requests' delta streams merged into one (choice index, Delta) stream; start() surfaces early errors.

    Request j's choice i (of n) is choice j * n + i of the response, as vLLM numbers them.
    """

    def __init__(self, client: GenerationClient, requests: Sequence[TritonRequest]) -> None:
        self._streams = [client.generate(r) for r in requests]
        self._choices = [r.choices for r in requests]
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Wait for every choice's first response; raise the first error (after cancelling everything)."""
        first = [asyncio.create_task(anext(s)) for s in self._streams]
        try:
            deltas = await asyncio.gather(*first)
        except BaseException:
            await _cancel_all(first)
            await self.close()
            raise
        offsets = [sum(self._choices[:j]) for j in range(len(self._choices))]
        for offset, n, stream, delta in zip(offsets, self._choices, self._streams, deltas):
            self._tasks.append(asyncio.create_task(self._pump(offset, n, stream, delta)))

    async def _pump(self, offset: int, n: int, stream: AsyncIterator[Delta], first: Delta) -> None:
        try:
            delta = first
            while True:
                if not 0 <= delta.index < n:
                    raise APIError(500, f"the inference server sent choice {delta.index} of {n}")
                await self._queue.put((offset + delta.index, delta))
                if delta.final:
                    break
                delta = await anext(stream)
            await self._queue.put((offset, _END))
        except StopAsyncIteration:
            await self._queue.put((offset, _END))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which reports it
            await self._queue.put((offset, exc))

    async def batches(self) -> AsyncIterator[list[tuple[int, Delta]]]:
        """Everything that has arrived since the last batch, one merged Delta per choice, in arrival order.

        While the HTTP client keeps up a batch is one response; when it falls behind, the responses
        queued meanwhile go out as one event per choice instead of one per engine step.
        """
        running = len(self._tasks)
        while running:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            merged: dict[int, Delta] = {}
            failure: BaseException | None = None
            for index, item in items:
                if item is _END:
                    running -= 1
                elif isinstance(item, BaseException):
                    failure = failure or item
                else:
                    merged[index] = merge_deltas(merged[index], item) if index in merged else item
            if merged:
                yield list(merged.items())
            if failure is not None:
                raise failure

    async def close(self) -> None:
        """Cancel what still runs; closing each generator cancels its gRPC call."""
        await _cancel_all([t for t in self._tasks if not t.done()])
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await stream.aclose()


async def sse_stream(
    streams: ChoiceStreams,
    render: Callable[[int, Delta], bytes],
    finish: Callable[[], list[bytes]],
    state: FrontendState,
    endpoint: str,
    started: float,
) -> AsyncIterator[bytes]:
    """Render merged deltas as SSE events (one write per batch), then `finish()` and [DONE]; errors in-band."""
    first = True
    try:
        async for batch in streams.batches():
            if first and any(delta.text for _, delta in batch):
                state.metrics.first_token.labels(endpoint).observe(time.perf_counter() - started)
                first = False
            data = b"".join([render(index, delta) for index, delta in batch])
            if data:  # steps with nothing to show yet (no text, no end) cost no write
                yield data
        tail = b"".join(finish())
        if tail:
            yield tail
    except (asyncio.CancelledError, GeneratorExit):
        state.metrics.disconnects.labels(endpoint).inc()
        raise
    except Exception as exc:  # noqa: BLE001 - the status is already sent: report in-band, as vLLM does
        error = to_api_error(exc) if not isinstance(exc, ServingError) else from_serving_error(exc)
        yield sse.event(error.body())
    finally:
        await streams.close()
    yield sse.DONE
