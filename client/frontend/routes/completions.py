"""POST /v1/completions: each prompt_embeds payload, then each text prompt, is one choice (as vLLM)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from client.frontend import sse
from client.frontend.errors import APIError
from client.frontend.generation import ChoiceStreams, collect, sse_stream, until_disconnected
from client.frontend.routes.common import check_model, check_unicode, count_tokens, frontend_state
from client.frontend.schemas import CompletionRequest, completion_body, new_id, usage
from client.frontend.triton_client import Delta, TritonRequest

router = APIRouter()
ENDPOINT = "/v1/completions"


def _check_unsupported(body: CompletionRequest) -> None:
    embeds = bool(body.embeds_payloads())
    if embeds and body.echo:  # vLLM's own refusals, same wording
        raise APIError(400, "Echo is unsupported with prompt embeds.", "echo")
    if embeds and body.prompt_logprobs is not None:
        raise APIError(400, "prompt_logprobs is not compatible with prompt embeds.", "prompt_logprobs")
    for name in ("logprobs", "prompt_logprobs", "suffix"):
        if getattr(body, name) is not None:
            raise APIError(400, f"{name} is not supported by this server", name)


@router.post(ENDPOINT)
async def create_completion(body: CompletionRequest, request: Request) -> Any:
    """OpenAI Completions with vLLM's prompt_embeds."""
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
    await state.open_streams(len(payloads) + len(prompts), request.scope)
    tensors = await state.decode(payloads, body.prompt_embeds_format, names, scope=request.scope)
    sampling = body.to_sampling_params()
    jobs = [TritonRequest(sampling, stream=bool(body.stream), embeds=t) for t in tensors]
    echoes = [""] * len(jobs)
    decoded = iter(await state.texts_for_token_ids([p for p in prompts if not isinstance(p, str)]))
    for prompt in prompts:
        text = prompt if isinstance(prompt, str) else next(decoded)
        jobs.append(TritonRequest(sampling, stream=bool(body.stream), text=text))
        echoes.append(text if body.echo else "")
    request_id, model, created = new_id("cmpl"), state.config.served_name, int(time.time())

    if not body.stream:
        results = await until_disconnected(request, collect(state.client, jobs),
                                           state.metrics.disconnects.labels(ENDPOINT).inc)
        choices = [{"index": i, "text": echoes[i] + r.text, "logprobs": None, "finish_reason": r.finish_reason,
                    "stop_reason": None} for i, r in enumerate(results)]
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(r.completion_tokens for r in results)
        count_tokens(state, ENDPOINT, prompt_tokens, completion_tokens)
        return Response(sse.json_bytes(completion_body(request_id, model, choices, chunk=False, created=created,
                                                       usage_info=usage(prompt_tokens, completion_tokens))),
                        media_type="application/json")

    streams = ChoiceStreams(state.client, jobs)
    await streams.start()
    prompt_tokens = [0] * len(jobs)
    completion_tokens = [0] * len(jobs)
    echoed = [False] * len(jobs)
    chunks = sse.ChunkFormat(request_id, model, created, chat=False)

    def render(index: int, delta: Delta) -> bytes:
        completion_tokens[index] += delta.num_output_tokens
        prompt_tokens[index] = delta.num_input_tokens or prompt_tokens[index]
        text = delta.text if echoed[index] else echoes[index] + delta.text
        echoed[index] = True
        if not text and not delta.finish_reason:
            return b""
        return chunks.chunk(index, text, delta.finish_reason)

    def finish() -> list[bytes]:
        count_tokens(state, ENDPOINT, sum(prompt_tokens), sum(completion_tokens))
        if not body.include_usage:
            return []
        return [sse.event(completion_body(request_id, model, [], chunk=True, created=created,
                                          usage_info=usage(sum(prompt_tokens), sum(completion_tokens))))]

    return StreamingResponse(sse_stream(streams, render, finish, state, ENDPOINT, started),
                             media_type="text/event-stream")
