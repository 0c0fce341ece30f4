"""A stand-in for vLLM's AsyncLLM and for a Triton response sink, for unit tests of the driver."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import torch
from vllm import SamplingParams

from backend.prompt import EnginePrompt
from backend.types import GenerationRequest, Response


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    index: int = 0
    logprobs: list[dict[int, Any]] | None = None


@dataclasses.dataclass
class Output:
    outputs: list[Completion]
    finished: bool


class FakeModelConfig:
    max_model_len = 128
    dtype = torch.float32
    model = "fake"
    max_logprobs = 20

    def get_diff_sampling_param(self) -> dict[str, Any]:
        return {}

    def get_hidden_size(self) -> int:
        return 8


class FakeOutputProcessor:
    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine

    def get_num_unfinished_requests(self) -> int:
        return len(self._engine.registered)


class FakeEngine:
    """Generates `steps` tokens per request ("t0", "t1", ...; ids 0, 1, ...) every `step_s` seconds.

    `mode`: "ok"; "stall" (never produces); "raise" (fails after registering, as an engine-side
    encoding error does: vLLM keeps the request unless aborted); "dead" (EngineDeadError).
    `abort_s`: how long abort() takes (a stopped engine's abort hangs until it times out).
    """

    def __init__(self, steps: int = 5, step_s: float = 0.01, mode: str = "ok", abort_s: float = 0.0) -> None:
        self.steps, self.step_s, self.mode, self.abort_s = steps, step_s, mode, abort_s
        self.model_config = FakeModelConfig()
        self.output_processor = FakeOutputProcessor(self)
        self.registered: set[str] = set()
        self.aborted: list[str] = []
        self.errored = False
        self.shut_down = False

    def get_tokenizer(self) -> Any:
        return None

    async def generate(self, prompt: Any, sampling: Any, request_id: str):
        self.registered.add(request_id)
        try:
            if self.mode == "stall":
                await asyncio.sleep(3600)
            if self.mode == "raise":
                raise ValueError("seed out of range")
            if self.mode == "dead":
                from vllm.v1.engine.exceptions import EngineDeadError

                self.errored = True
                raise EngineDeadError()
            for i in range(self.steps):
                await asyncio.sleep(self.step_s)
                last = i == self.steps - 1
                if last:
                    self.registered.discard(request_id)
                yield Output([Completion(f"t{i} ", [i], "length" if last else None)], finished=last)
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)  # as vLLM's generate() does on its way out
            raise

    async def abort(self, request_id: str) -> None:
        if self.abort_s:
            await asyncio.sleep(self.abort_s)
        self.aborted.append(request_id)
        self.registered.discard(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


class FakeSink:
    """Collects responses; `send_s` makes each send slow (a round trip to Triton); `cancel_after`
    makes is_cancelled() true once that many responses went out."""

    def __init__(self, send_s: float = 0.0, cancel_after: int | None = None) -> None:
        self.responses: list[tuple[Response | None, bool]] = []
        self.errors: list[BaseException] = []
        self.arrivals: list[float] = []
        self.send_s = send_s
        self.cancel_after = cancel_after
        self.asked_after_final = 0
        self.done = threading.Event()
        self.threads: set[str] = set()

    def send(self, response: Response | None, *, final: bool) -> None:
        if self.done.is_set():
            raise AssertionError("response after the final one")
        self.threads.add(threading.current_thread().name)
        time.sleep(self.send_s)
        self.responses.append((response, final))
        self.arrivals.append(time.monotonic())
        if final:
            self.done.set()

    def send_error(self, exc: BaseException) -> None:
        if self.done.is_set():
            raise AssertionError("error after the final response")
        self.errors.append(exc)
        self.done.set()

    def is_cancelled(self) -> bool:
        if self.done.is_set():
            self.asked_after_final += 1
            return False
        return self.cancel_after is not None and len(self.responses) >= self.cancel_after

    @property
    def text(self) -> str:
        return "".join(r.text for r, _ in self.responses if r is not None)

    @property
    def token_ids(self) -> list[int]:
        return [i for r, _ in self.responses if r is not None and r.token_ids for i in r.token_ids]


def make_request(stream: bool = True, max_tokens: int = 5, **flags: bool) -> GenerationRequest:
    """A 3-token prompt with `echo_text` "PROMPT "."""
    prompt = EnginePrompt(token_ids=[1, 2, 3], echo_text="PROMPT ")
    return GenerationRequest(prompt=prompt, sampling=SamplingParams(max_tokens=max_tokens), stream=stream,
                             exclude_input_in_output=flags.pop("exclude_input_in_output", stream), **flags)
