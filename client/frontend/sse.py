"""Server-Sent Events, cheaply: orjson, and stream chunks preformatted so a token costs one string join.

A stream chunk of one response differs from the next only in the choice's index, text and finish
reason; everything else (id, object, created, model) is rendered once per request.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One `data:` event holding `data` as JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def json_bytes(data: Any) -> bytes:
    """A whole (non-streamed) response body."""
    return orjson.dumps(data)


class ChunkFormat:
    """Stream chunks of one response (completions or chat), preformatted around the parts that change."""

    def __init__(self, request_id: str, model: str, created: int, *, chat: bool) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": request_id, "object": obj, "created": created, "model": model}
        # '{"id":...,"model":...' without the closing brace, then the choices.
        self._head = b"data: " + orjson.dumps(head)[:-1] + b',"choices":[{"index":'
        self._chat = chat

    def chunk(self, index: int, text: str, finish_reason: str | None, logprobs: Any = None) -> bytes:
        """One chunk with one choice: `text` (chat: the delta's content), its logprobs and the finish reason."""
        reason = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        tail = b',"logprobs":' + orjson.dumps(logprobs) + b',"finish_reason":' + reason
        if self._chat:
            delta = b'{"content":' + orjson.dumps(text) + b"}" if text else b"{}"
            body = b',"delta":' + delta + tail + b"}]}\n\n"
        else:
            body = b',"text":' + orjson.dumps(text) + tail + b',"stop_reason":null}]}\n\n'
        return self._head + str(index).encode() + body
