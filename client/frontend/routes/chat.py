"""POST /v1/chat/completions: text and prompt_embeds parts, in any order and role, as one Triton request.

Each `{"type": "prompt_embeds", "data": ...}` part becomes `{"type": "prompt_embeds"}` in the
`messages` input; the decoded tensors go, concatenated in order, as `prompt_embeds` with their row
counts in `prompt_embeds_lengths`. No base64 travels past the frontend.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from client.frontend import sse
from client.frontend.errors import APIError
from client.frontend.generation import ChoiceStreams, collect, prompt_tokens, sse_stream, until_disconnected
from client.frontend.jsonbody import JSONRoute
from client.frontend.logprobs import ChoiceLogprobs, prompt_logprobs_field
from client.frontend.routes.common import check_model, check_unicode, count_tokens, frontend_state, structure_errors
from client.frontend.schemas import ChatCompletionRequest, chat_body, new_id, usage
from client.frontend.triton_client import Delta, TritonRequest

router = APIRouter(route_class=JSONRoute)
ENDPOINT = "/v1/chat/completions"


def split_messages(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Messages for Triton (embedding parts without data), the payloads in order, and where each came from."""
    messages, payloads, where = [], [], []
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            content: Any = message.content
        else:
            content = []
            for j, part in enumerate(message.content):
                if part.type == "text":
                    content.append({"type": "text", "text": part.text})
                else:
                    content.append({"type": "prompt_embeds"})
                    payloads.append(part.data)
                    where.append(f"messages[{i}].content[{j}]")
        out = {"role": message.role, "content": content}
        if message.name is not None:
            out["name"] = message.name
        messages.append(out)
    return messages, payloads, where


def concatenate(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """All parts' rows in one tensor; one shared dtype is kept, mixed dtypes go as float32."""
    if not tensors:
        return None
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    return torch.cat([t.to(dtype) for t in tensors])


@router.post(ENDPOINT)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Any:
    """OpenAI Chat Completions with vLLM's prompt_embeds content parts, n, logprobs and structured outputs."""
    started = time.perf_counter()
    state = frontend_state(request)
    check_unicode(body)  # first: later errors may quote a field (the model name)
    check_model(body.model, state)
    top = body.num_top_logprobs
    messages, payloads, where = split_messages(body)
    if body.prompt_logprobs is not None and payloads:  # vLLM's refusals, same wording
        raise APIError(400, "prompt_logprobs is not compatible with prompt embeds.", "prompt_logprobs")
    if body.stream and body.prompt_logprobs:
        raise APIError(400, "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    needs_text = "logprobs" if top is not None else "prompt_logprobs" if body.prompt_logprobs is not None else None
    token_text = await state.token_text(needs_text) if needs_text else None
    await state.open_streams(1, request.scope)
    tensors = await state.decode(payloads, body.prompt_embeds_format, where, scope=request.scope,
                                 request_parameter="messages")
    embeds = await state.offload(concatenate, tensors) if len(tensors) > 1 else concatenate(tensors)
    job = TritonRequest(body.to_sampling_params(), stream=bool(body.stream), messages=messages,
                        embeds=embeds, lengths=[int(t.shape[0]) for t in tensors] or None)
    request_id, model, created = new_id("chatcmpl"), state.config.served_name, int(time.time())
    n = body.n
    builders = [ChoiceLogprobs(token_text) if top is not None else None for _ in range(n)]

    def logprobs_of(index: int, item: Any) -> dict[str, Any] | None:
        builder = builders[index]
        if builder is None:
            return None
        return {"content": builder.chat(item.token_ids, item.logprobs, item.top_ids, item.top_logprobs, top)}

    if not body.stream:
        with structure_errors(body):
            results = await until_disconnected(request, collect(state.client, [job]),
                                               state.metrics.disconnects.labels(ENDPOINT).inc)
        prompt_count = prompt_tokens(results, n)
        completion_tokens = sum(r.completion_tokens for r in results)
        count_tokens(state, ENDPOINT, prompt_count, completion_tokens)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": logprobs_of(i, r),
                    "finish_reason": r.finish_reason, "stop_reason": None} for i, r in enumerate(results)]
        response = chat_body(request_id, model, choices, chunk=False, created=created,
                             usage_info=usage(prompt_count, completion_tokens))
        if body.prompt_logprobs is not None:  # one prompt: vLLM gives them once, beside the choices
            prompt = results[0].prompt
            if prompt is None:
                raise APIError(500, "the inference server sent no prompt logprobs")
            response["prompt_logprobs"] = prompt_logprobs_field(token_text, prompt)
        return Response(sse.json_bytes(response), media_type="application/json")

    streams = ChoiceStreams(state.client, [job])
    with structure_errors(body):
        await streams.start()
    totals = {"prompt": 0, "completion": 0}
    role_sent = []
    chunks = sse.ChunkFormat(request_id, model, created, chat=True)

    def render(index: int, delta: Delta) -> bytes:
        out = b""
        if not role_sent:
            # The first chunks name the role, one per choice, as OpenAI's and vLLM's streams do.
            out = b"".join(sse.event(chat_body(request_id, model, [{"index": i, "delta": {"role": "assistant",
                                                                                        "content": ""},
                                                                    "logprobs": None, "finish_reason": None}],
                                               chunk=True, created=created)) for i in range(n))
            role_sent.append(True)
        totals["prompt"] = delta.num_input_tokens or totals["prompt"]
        totals["completion"] += delta.num_output_tokens
        if delta.text or delta.finish_reason or delta.token_ids:
            out += chunks.chunk(index, delta.text, delta.finish_reason, logprobs_of(index, delta))
        return out

    def finish() -> list[bytes]:
        count_tokens(state, ENDPOINT, totals["prompt"], totals["completion"])
        if not body.include_usage:
            return []
        return [sse.event(chat_body(request_id, model, [], chunk=True, created=created,
                                    usage_info=usage(totals["prompt"], totals["completion"])))]

    return StreamingResponse(sse_stream(streams, render, finish, state, ENDPOINT, started),
                             media_type="text/event-stream")
