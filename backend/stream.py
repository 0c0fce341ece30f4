"""The per-request stream on the engine loop: vLLM outputs in, chunks to the request's ResponseStream.

Nothing here blocks or talks to Triton: each engine step's new text and token ids are appended to
the request's pending buffer and a sender thread does the rest. Whatever happens, the request ends
with exactly one final chunk or error, and on any exit but success vLLM is told to forget it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import Any
from collections.abc import Callable

from backend.errors import EngineUnavailableError, RequestCancelledError, ServingError, ValidationError
from backend.types import Chunk, GenerationRequest, PromptLogprobs, RequestRecord

logger = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 5.0


@dataclasses.dataclass
class Active:
    """A request admitted to the engine."""

    request_id: str
    request: GenerationRequest
    push: Callable[[Chunk], None]  # to its ResponseStream, via the sender
    fail: Callable[[BaseException], None]
    task: asyncio.Task | None = None
    started: bool = False  # has produced its first output (no longer counts as queued)
    # Why its task was cancelled (client, shutdown, stall): the error its client gets.
    end_error: ServingError | None = None
    end_outcome: str = "cancelled"

    def end(self, error: ServingError, outcome: str) -> None:
        """Cancel the request's task (on the loop); its client gets `error`."""
        if self.task is None or self.task.done():
            return
        if self.end_error is None:
            self.end_error, self.end_outcome = error, outcome
        self.task.cancel()


async def run_request(engine: Any, active: Active, on_output: Callable[[], None]) -> RequestRecord:
    """Drive one request through vLLM; returns its record. `on_output` is called per engine output."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.exceptions import EngineDeadError

    request = active.request
    # Deltas from vLLM itself: no re-slicing of cumulative text per step, and vLLM joins the
    # steps a slow consumer missed. Also for non-streamed requests, so TTFT is measured.
    request.sampling.output_kind = RequestOutputKind.DELTA
    start = time.perf_counter()
    first = last = None
    n_out = 0
    finished = False
    outcome = "success"
    prompt = PromptChoices(request)
    try:
        async for output in engine.generate(request.prompt.to_vllm(), request.sampling, active.request_id):
            last = time.perf_counter()
            on_output()
            if first is None:
                first, active.started = last, True
            finished = output.finished
            prompt.read(output)
            # With n > 1, one output may hold several choices (vLLM joins the deltas a slow
            # consumer missed, per index); the request's final flag rides on the last of them.
            completions = output.outputs
            for j, completion in enumerate(completions):
                n_out += len(completion.token_ids)
                chunk = to_chunk(completion, request.logprobs, final=finished and j == len(completions) - 1)
                chunk.prompt_logprobs = prompt.take(completion.index)
                active.push(chunk)
            if finished and not completions:
                active.push(Chunk(text="", token_ids=[], final=True))
        if not finished:
            raise EngineUnavailableError("the engine ended the request without a result")
    except asyncio.CancelledError:
        # Raised by the client's cancel, the shutdown or the stall watchdog (end_error says which);
        # vLLM's generator has aborted the request in the engine on its way out.
        outcome = active.end_outcome
        active.fail(active.end_error or RequestCancelledError("request cancelled by the client"))
    except EngineDeadError:
        outcome = "engine_dead"
        active.fail(EngineUnavailableError("the engine died; it is being restarted, retry shortly"))
    except (VLLMValidationError, ValueError) as exc:
        # The engine's own input checks; ours run first, so this is a gap in them.
        outcome = "invalid"
        parameter = getattr(exc, "parameter", None) or "request"
        active.fail(ValidationError(parameter, str(exc)[:200]))
    except ServingError as exc:
        outcome = "error"
        active.fail(exc)
    except Exception as exc:  # noqa: BLE001 - the request must still get its final response
        outcome = "error"
        logger.exception("request %s failed", active.request_id)
        active.fail(exc)
    if outcome not in ("success", "engine_dead"):
        await _abort(engine, active.request_id)
    return RequestRecord(
        outcome=outcome, prompt_tokens=request.prompt.num_tokens,
        prompt_embeds_tokens=request.prompt.num_embedding_tokens, output_tokens=n_out,
        ttft_s=None if first is None else first - start,
        tpot_s=(last - first) / (n_out - 1) if first is not None and n_out > 1 else None,
    )


def to_chunk(completion: Any, num_logprobs: int | None, *, final: bool) -> Chunk:
    """One vLLM CompletionOutput (a delta) -> Chunk; logprobs of its tokens when asked."""
    token_ids = list(completion.token_ids)
    chunk = Chunk(text=completion.text, token_ids=token_ids, final=final, finish_reason=completion.finish_reason,
                  index=completion.index)
    if num_logprobs is not None:
        chunk.logprobs, chunk.top_logprobs_ids, chunk.top_logprobs = split_logprobs(
            token_ids, completion.logprobs or [], num_logprobs)
    return chunk


class PromptChoices:
    """The prompt logprobs of a request that asked for them, handed to each choice's first chunk once.

    vLLM computes them per choice but, joining a slow consumer's deltas, keeps only the first
    output's: so the first set that arrives is kept and given to every choice (they are the same
    prompt's, and identical).
    """

    def __init__(self, request: GenerationRequest) -> None:
        self._m = request.prompt_logprobs
        self._due = set(range(request.n)) if self._m is not None else set()
        self._token_ids = request.prompt.token_ids or []
        self._logprobs: PromptLogprobs | None = None

    def read(self, output: Any) -> None:
        """Keep the prompt logprobs if this engine output is the first to carry them."""
        if self._due and self._logprobs is None and output.prompt_logprobs:
            self._logprobs = prompt_logprobs(self._token_ids, output.prompt_logprobs, self._m)

    def take(self, index: int) -> PromptLogprobs | None:
        """The prompt logprobs for choice `index`'s chunk if it has not had them yet, else None."""
        if self._logprobs is None or index not in self._due:
            return None
        self._due.discard(index)
        return self._logprobs


def prompt_logprobs(token_ids: list[int], positions: Any, m: int) -> PromptLogprobs:
    """vLLM's prompt logprobs (None, then per position {token id: Logprob}) -> PromptLogprobs, top m by rank."""
    if len(positions) != len(token_ids):
        raise RuntimeError(f"the engine sent {len(positions)} prompt logprobs for {len(token_ids)} tokens")
    logprobs, top_ids, top_values = split_logprobs(token_ids[1:], positions[1:], m)
    ranks = [0] + [int(position[token].rank) for token, position in zip(token_ids[1:], positions[1:])]
    return PromptLogprobs(token_ids=list(token_ids), logprobs=[math.nan, *logprobs], ranks=ranks,
                          top_ids=[[-1] * m, *top_ids], top_logprobs=[[math.nan] * m, *top_values])


def split_logprobs(token_ids: list[int], positions: Any, m: int
                   ) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """vLLM's per-token {token id: Logprob} -> the sampled tokens' logprobs, and the top-m (by rank)."""
    logprobs, top_ids, top_values = [], [], []
    for token_id, position in zip(token_ids, positions):
        logprobs.append(float(position[token_id].logprob))
        # The dict holds the sampled token (any rank) and ranks 1..m; a sampled token within the top m
        # appears once. Keep ranks 1..m in rank order.
        ranked = sorted((p.rank, tid, p.logprob) for tid, p in position.items() if p.rank is not None and p.rank <= m)
        top_ids.append([tid for _, tid, _ in ranked[:m]])
        top_values.append([float(lp) for _, _, lp in ranked[:m]])
    return logprobs, top_ids, top_values


async def _abort(engine: Any, request_id: str) -> None:
    """Make vLLM drop the request (its output state holds the whole prompt, embeddings included).

    vLLM aborts on cancellation itself, but not when generate() raised after registering the
    request (e.g. an encoding error in the engine's input thread): without this the request
    stays in its output processor for good. Aborting an unknown id is a no-op.
    """
    try:
        await asyncio.wait_for(engine.abort(request_id), ABORT_TIMEOUT_S)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the engine may be dead or stopped; the restart clears it then
        logger.warning("could not abort request %s in the engine", request_id, exc_info=True)
