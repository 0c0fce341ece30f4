"""Admission control: refuse a request at once when the engine can't take it or too much is queued."""

from __future__ import annotations

from collections.abc import Iterable

from backend.errors import EngineUnavailableError, OverloadedError
from backend.interface import OVERLOADED_PREFIX


def check_admission(*, accepting: bool, engine_ready: bool, queued_prompt_tokens: Iterable[int],
                    prompt_tokens: int, max_queued_requests: int, max_queued_prompt_tokens: int) -> None:
    """Raise EngineUnavailableError/OverloadedError unless a request of `prompt_tokens` may be admitted.

    `queued_prompt_tokens` are the prompt lengths of requests that have no output yet.
    """
    if not accepting:
        raise EngineUnavailableError("the model is shutting down")
    if not engine_ready:
        raise EngineUnavailableError("the engine is restarting; retry shortly")
    queued = list(queued_prompt_tokens)
    if len(queued) >= max_queued_requests:
        raise OverloadedError(f"{OVERLOADED_PREFIX}{len(queued)} requests already queued")
    tokens = sum(queued) + prompt_tokens
    if queued and tokens > max_queued_prompt_tokens:
        raise OverloadedError(f"{OVERLOADED_PREFIX}{tokens} prompt tokens would be queued")
