"""POST /v1/completions: each prompt_embeds payload, then each prompt, is one Triton request of n choices (as vLLM).

With echo and logprobs, or prompt_logprobs, the model is asked for the prompt's logprobs too (the
first response of each choice carries them).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from backend.types import PromptLogprobs
from client.frontend import sse
from client.frontend.errors import APIError
from client.frontend.generation import (
    ChoiceResult,
    ChoiceStreams,
    collect,
    prompt_tokens,
    sse_stream,
    until_disconnected,
)
from client.frontend.jsonbody import JSONRoute
from client.frontend.logprobs import ChoiceLogprobs, prompt_logprobs_field
from client.frontend.routes.common import check_model, check_unicode, count_tokens, frontend_state, structure_errors
from client.frontend.schemas import CompletionRequest, completion_body, new_id, usage
from client.frontend.triton_client import Delta, TritonRequest

router = APIRouter(route_class=JSONRoute)
ENDPOINT = "/v1/completions"


def _check_unsupported(body: CompletionRequest) -> None:
    embeds = bool(body.embeds_payloads())
    if embeds and body.echo:  # vLLM's own refusals, same wording
        raise APIError(400, "Echo is unsupported with prompt embeds.", "echo")
    if embeds and body.prompt_logprobs is not None:
        raise APIError(400, "prompt_logprobs is not compatible with prompt embeds.", "prompt_logprobs")
    if body.stream and body.prompt_logprobs:
        raise APIError(400, "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    if body.suffix is not None:
        raise APIError(400, "suffix is not supported by this server", "suffix")


def _prompt_of(item: ChoiceResult | Delta) -> PromptLogprobs:
    """The prompt logprobs a choice's result or first response must carry (they were asked for)."""
    if item.prompt is None:
        raise APIError(500, "the inference server sent no prompt logprobs")
    return item.prompt


@router.post(ENDPOINT)
async def create_completion(body: CompletionRequest, request: Request) -> Any:
    """OpenAI Completions with vLLM's prompt_embeds, token-id prompts, n, logprobs and structured outputs."""
    started = time.perf_counter()
    state = frontend_state(request)
    check_unicode(body)  # first: later errors may quote a field (the model name)
    check_model(body.model, state)
    _check_unsupported(body)
    payloads = body.embeds_payloads()
    prompts = body.text_prompts()
    if len(payloads) + len(prompts) > state.config.max_prompts:
        raise APIError(400, f"{len(payloads) + len(prompts)} prompts exceed the limit of {state.config.max_prompts} "
                            "per request", "prompt" if prompts else "prompt_embeds")
    names = ["prompt_embeds"] if isinstance(body.prompt_embeds, str) else [
        f"prompt_embeds[{i}]" for i in range(len(payloads))]
    needs_text = next((name for name in ("logprobs", "prompt_logprobs") if getattr(body, name) is not None), None)
    token_text = await state.token_text(needs_text) if needs_text else None
    await state.open_streams(len(payloads) + len(prompts), request.scope)
    tensors = await state.decode(payloads, body.prompt_embeds_format, names, scope=request.scope)
    sampling = body.to_sampling_params()
    stream = bool(body.stream)
    jobs = [TritonRequest(sampling, stream=stream, embeds=t) for t in tensors]
    echoes = [""] * len(jobs)
    id_prompts = [p for p in prompts if not isinstance(p, str)]
    decoded = iter(await state.prompt_texts(id_prompts) if body.echo else [""] * len(id_prompts))
    for prompt in prompts:
        if isinstance(prompt, str):
            jobs.append(TritonRequest(sampling, stream=stream, text=prompt))
            echoes.append(prompt if body.echo else "")
        else:  # token ids go to the engine as they are (no round trip through text)
            jobs.append(TritonRequest(sampling, stream=stream, input_ids=list(prompt)))
            echoes.append(next(decoded))
    n = body.n
    echoes = [echo for echo in echoes for _ in range(n)]  # one per choice
    logprobs = [ChoiceLogprobs(token_text) if body.logprobs is not None else None for _ in echoes]
    request_id, model, created = new_id("cmpl"), state.config.served_name, int(time.time())
    # vLLM shows the prompt's logprobs whenever its engine computed them (prompt_logprobs, or echo
    # with logprobs): in the choice's `prompt_logprobs`, and with echo in front of the output's logprobs.
    with_prompt = sampling.get("prompt_logprobs") is not None

    def logprobs_of(index: int, item: Any, echo: bool) -> dict[str, Any] | None:
        builder = logprobs[index]
        if builder is None:
            return None
        return builder.completion(item.token_ids, item.logprobs, item.top_ids, item.top_logprobs, body.logprobs,
                                  prompt=_prompt_of(item) if echo else None)

    if not body.stream:
        with structure_errors(body):
            results = await until_disconnected(request, collect(state.client, jobs),
                                               state.metrics.disconnects.labels(ENDPOINT).inc)
        choices = [{"index": i, "text": echoes[i] + r.text, "logprobs": logprobs_of(i, r, bool(body.echo)),
                    "finish_reason": r.finish_reason, "stop_reason": None} for i, r in enumerate(results)]
        if with_prompt:
            for choice, result in zip(choices, results):
                choice["prompt_logprobs"] = prompt_logprobs_field(token_text, _prompt_of(result))
        prompt_count = prompt_tokens(results, n)
        completion_tokens = sum(r.completion_tokens for r in results)
        count_tokens(state, ENDPOINT, prompt_count, completion_tokens)
        return Response(sse.json_bytes(completion_body(request_id, model, choices, chunk=False, created=created,
                                                       usage_info=usage(prompt_count, completion_tokens))),
                        media_type="application/json")

    streams = ChoiceStreams(state.client, jobs)
    with structure_errors(body):
        await streams.start()
    prompt_counts = [0] * len(echoes)
    completion_counts = [0] * len(echoes)
    echoed = [False] * len(echoes)
    chunks = sse.ChunkFormat(request_id, model, created, chat=False)

    def render(index: int, delta: Delta) -> bytes:
        completion_counts[index] += delta.num_output_tokens
        prompt_counts[index] = delta.num_input_tokens or prompt_counts[index]
        first, echoed[index] = not echoed[index], True
        text = echoes[index] + delta.text if first else delta.text
        # A step with no text yet (a partial UTF-8 character) waits for the next chunk, except a
        # choice's first: it goes out at once, as vLLM streams every step, so the stream's first
        # chunk marks the first token (the time TTFT tools read) whatever its text.
        if not first and not text and not delta.finish_reason and not delta.token_ids:
            return b""
        # The choice's first chunk echoes the prompt, and its logprobs come first (as vLLM streams them).
        return chunks.chunk(index, text, delta.finish_reason, logprobs_of(index, delta, first and bool(body.echo)))

    def finish() -> list[bytes]:
        prompt_count = sum(max(prompt_counts[i:i + n]) for i in range(0, len(prompt_counts), n))
        count_tokens(state, ENDPOINT, prompt_count, sum(completion_counts))
        if not body.include_usage:
            return []
        return [sse.event(completion_body(request_id, model, [], chunk=True, created=created,
                                          usage_info=usage(prompt_count, sum(completion_counts))))]

    return StreamingResponse(sse_stream(streams, render, finish, state, ENDPOINT, started),
                             media_type="text/event-stream")
