"""Locust users for the three serving paths: our OpenAI frontend, Triton gRPC streaming, vLLM's own server.

Every user streams and records three Locust entries per request kind: `REQ` (whole request),
`TTFT` (time to first token) and `ITL` (each gap between streamed chunks, divided by the tokens in
the chunk when the server says how many). A request fails on a non-2xx status, a stream error, a
finish_reason other than "length", or a token count other than max_tokens (ignore_eos fixes it).

    locust -f loadtest/locustfile.py --headless -u 8 -r 2 -t 60s TritonGrpcUser \
        --triton-url localhost:8001 --prompt-tokens 512 --embeds-share 0.5 --max-tokens 32

Knobs (also as LOADTEST_* environment variables): --prompt-tokens, --embeds-share, --chat-parts,
--max-tokens, --model (for the embedding table and served model name), --hidden-size.
Only localhost is accepted as a target.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import time
from typing import Any, Iterator

import requests
from locust import User, between, events, task
from locust.exception import StopUser

from loadtest.workload import (
    DEFAULT_MODEL,
    EmbeddingSource,
    encode_embeds,
    random_text,
    require_local,
    sampling,
    split_rows,
)

logger = logging.getLogger(__name__)

EXPECTED_FINISH = "length"
REQUEST_TIMEOUT_S = 300.0


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("workload (loadtest/locustfile.py)")
    group.add_argument("--prompt-tokens", type=int, env_var="LOADTEST_PROMPT_TOKENS", default=128,
                       help="prompt length in tokens (text bytes for the byte-level tiny model)")
    group.add_argument("--embeds-share", type=float, env_var="LOADTEST_EMBEDS_SHARE", default=0.5,
                       help="share of requests that carry prompt embeddings (0..1)")
    group.add_argument("--chat-parts", type=int, env_var="LOADTEST_CHAT_PARTS", default=3,
                       help="content parts per chat message (text and embeddings alternate)")
    group.add_argument("--max-tokens", type=int, env_var="LOADTEST_MAX_TOKENS", default=32,
                       help="output tokens per request (ignore_eos makes it exact)")
    group.add_argument("--model", env_var="LOADTEST_MODEL", default=str(DEFAULT_MODEL),
                       help="model directory: embedding table, hidden size")
    group.add_argument("--served-model", env_var="LOADTEST_SERVED_MODEL", default="",
                       help="model name in OpenAI requests (default: the first of /v1/models)")
    group.add_argument("--hidden-size", type=int, env_var="LOADTEST_HIDDEN_SIZE", default=0,
                       help="embedding width when the model directory has no weights")
    group.add_argument("--bad-share", type=float, env_var="LOADTEST_BAD_SHARE", default=0.1,
                       help="soak users: share of bad inputs (each must be answered 4xx / INVALID_ARG)")
    group.add_argument("--cancel-share", type=float, env_var="LOADTEST_CANCEL_SHARE", default=0.1,
                       help="soak users: share of requests the client cancels after the first token")
    group.add_argument("--frontend-url", env_var="LOADTEST_FRONTEND_URL", default="http://localhost:9000")
    group.add_argument("--triton-url", env_var="LOADTEST_TRITON_URL", default="localhost:8001")
    group.add_argument("--vllm-url", env_var="LOADTEST_VLLM_URL", default="http://localhost:8000")


_SOURCE: EmbeddingSource | None = None


def _source(options: Any) -> EmbeddingSource:
    global _SOURCE
    if _SOURCE is None:
        _SOURCE = EmbeddingSource(options.model, options.hidden_size or None, seed=random.randrange(1 << 30))
    return _SOURCE


class StreamError(Exception):
    """A stream that ended wrongly (error event, bad status, wrong finish or token count)."""


class StreamingUser(User):
    """Times one streamed request: REQ, TTFT and ITL entries; subclasses yield (tokens, finish) events."""

    abstract = True
    wait_time = between(0.0, 0.05)
    path = "base"

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.embeds_source = _source(self.options)

    def pick_kind(self) -> str:
        """'embeds' with the configured share, else 'text'."""
        return "embeds" if random.random() < self.options.embeds_share else "text"

    def stream(self, kind: str) -> Iterator[tuple[int, str | None]]:
        """Send one request of `kind`; yield (new tokens, finish_reason or None) per streamed chunk."""
        raise NotImplementedError

    @task
    def one_request(self) -> None:
        kind = self.pick_kind()
        name = f"{self.path} {kind}"
        start = last = time.perf_counter()
        first: float | None = None
        tokens, finish = 0, None
        self.usage_tokens: int | None = None
        error: Exception | None = None
        try:
            for new_tokens, reason in self.stream(kind):
                now = time.perf_counter()
                if new_tokens:
                    if first is None:
                        first = now
                        self._fire("TTFT", name, (now - start) * 1000)
                    else:
                        gap = (now - last) * 1000 / new_tokens
                        for _ in range(new_tokens):
                            self._fire("ITL", name, gap)
                    last = now
                    tokens += new_tokens
                finish = reason or finish
            if finish != EXPECTED_FINISH:
                raise StreamError(f"finish_reason {finish!r}, expected {EXPECTED_FINISH!r}")
            if self.usage_tokens is not None:  # the server's own count wins over counted chunks
                tokens = self.usage_tokens
            if tokens != self.options.max_tokens:
                raise StreamError(f"{tokens} output tokens, expected {self.options.max_tokens}")
        except StopUser:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Locust failure entry
            error = exc
        self._fire("REQ", name, (time.perf_counter() - start) * 1000, tokens, error)

    def _fire(self, kind: str, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=kind, name=name, response_time=ms,
                                             response_length=length, exception=exc, context={})

    # -- prompt pieces --------------------------------------------------------------------------

    def embeds(self, rows: int | None = None) -> Any:
        return self.embeds_source.embeds(rows or self.options.prompt_tokens)

    def text(self, tokens: int | None = None) -> str:
        return random_text(tokens or self.options.prompt_tokens)


class OpenAIUser(StreamingUser):
    """Streams /v1/completions or /v1/chat/completions over SSE (frontend or vLLM's server)."""

    abstract = True
    base_url = ""

    def on_start(self) -> None:
        super().on_start()
        self.session = requests.Session()
        self.model_name = self.options.served_model or self._first_model()

    def _first_model(self) -> str:
        response = self.session.get(f"{self.base_url}/v1/models", timeout=30)
        response.raise_for_status()
        return response.json()["data"][0]["id"]

    def post_stream(self, route: str, body: dict[str, Any]) -> Iterator[tuple[int, str | None]]:
        """POST with stream=true; yield (1 per chunk with text, finish_reason); check usage if sent."""
        body = {**body, "model": self.model_name, "stream": True, "stream_options": {"include_usage": True},
                **sampling(self.options.max_tokens)}
        with self.session.post(f"{self.base_url}{route}", json=body, stream=True,
                               timeout=REQUEST_TIMEOUT_S) as response:
            if response.status_code != 200:
                raise StreamError(f"HTTP {response.status_code}: {response.text[:200]}")
            for line in response.iter_lines():
                if not line or not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise StreamError(f"stream error: {str(event['error'])[:200]}")
                if event.get("usage"):
                    self.usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    # One chunk per engine step, also when its bytes do not decode to text yet
                    # (the byte-level tiny model emits partial UTF-8): count chunks, not text.
                    yield 1, choice.get("finish_reason")
        raise StreamError("stream ended without [DONE]")


class VllmServerUser(OpenAIUser):
    """vLLM's own OpenAI server: /v1/completions with a text prompt or base64 prompt_embeds."""

    path = "vllm"

    def on_start(self) -> None:
        self.base_url = require_local(self.environment.parsed_options.vllm_url).rstrip("/")
        super().on_start()

    def stream(self, kind: str) -> Iterator[tuple[int, str | None]]:
        if kind == "embeds":
            body = {"prompt_embeds": encode_embeds(self.embeds())}
        else:
            body = {"prompt": self.text()}
        return self.post_stream("/v1/completions", body)


class FrontendCompletionsUser(VllmServerUser):
    """Our frontend's /v1/completions: same wire format as vLLM's server."""

    path = "frontend-completions"

    def on_start(self) -> None:
        self.base_url = require_local(self.environment.parsed_options.frontend_url).rstrip("/")
        OpenAIUser.on_start(self)


class FrontendChatUser(OpenAIUser):
    """Our frontend's /v1/chat/completions: text, embeddings alone, or text and embedding parts mixed."""

    path = "frontend-chat"

    def on_start(self) -> None:
        self.base_url = require_local(self.environment.parsed_options.frontend_url).rstrip("/")
        super().on_start()

    def pick_kind(self) -> str:
        kind = super().pick_kind()
        return "mixed" if kind == "embeds" and self.options.chat_parts > 1 else kind

    def stream(self, kind: str) -> Iterator[tuple[int, str | None]]:
        if kind == "text":
            content: Any = self.text()
        else:
            content = [
                {"type": "prompt_embeds", "data": encode_embeds(self.embeds(rows))} if rows else
                {"type": "text", "text": self.text(16)}
                for rows in _part_rows(self.options.prompt_tokens, self.options.chat_parts, kind)
            ]
        return self.post_stream("/v1/chat/completions", {"messages": [{"role": "user", "content": content}]})


def _part_rows(prompt_tokens: int, parts: int, kind: str) -> list[int]:
    """Rows per content part (0 = a short text part): embeddings alone, or text/embeddings alternating."""
    if kind == "embeds" or parts <= 1:
        return [prompt_tokens]
    slots = [i % 2 == 1 for i in range(parts)]  # text, embeds, text, ...
    sizes = iter(split_rows(prompt_tokens, sum(slots)))
    return [next(sizes) if is_embed else 0 for is_embed in slots]


class TritonGrpcUser(StreamingUser):
    """Triton gRPC bidirectional streaming (tritonclient): text_input, prompt_embeds, or messages with parts."""

    path = "triton"

    def on_start(self) -> None:
        super().on_start()
        import grpc.experimental.gevent as grpc_gevent
        import tritonclient.grpc as grpcclient

        grpc_gevent.init_gevent()  # grpcio must cooperate with Locust's gevent loop
        self.grpcclient = grpcclient
        self.url = require_local(self.options.triton_url)

    def pick_kind(self) -> str:
        kind = super().pick_kind()
        return "mixed" if kind == "embeds" and self.options.chat_parts > 1 else kind

    def _inputs(self, kind: str) -> list[Any]:
        from client.triton_inputs import build_inputs

        params = sampling(self.options.max_tokens)
        if kind == "text":
            return build_inputs(self.grpcclient, text=self.text(), stream=True, sampling=params)
        import numpy as np

        rows = _part_rows(self.options.prompt_tokens, self.options.chat_parts, kind)
        if kind == "embeds":
            return build_inputs(self.grpcclient, embeds=self.embeds(rows[0]), stream=True, sampling=params)
        parts = [{"type": "prompt_embeds"} if n else {"type": "text", "text": self.text(16)} for n in rows]
        lengths = [n for n in rows if n]
        embeds = np.concatenate([self.embeds(n) for n in lengths])
        return build_inputs(self.grpcclient, messages=[{"role": "user", "content": parts}], embeds=embeds,
                            lengths=lengths, stream=True, sampling=params)

    def events(self, inputs: list[Any]) -> Iterator[tuple[Any, Any]]:
        """One request on its own gRPC stream: (result, error) pairs up to the final response or an
        error. Leaving early (closing the generator) cancels the request."""
        from client.triton_inputs import MODEL_NAME

        results: queue.Queue = queue.Queue()
        client = self.grpcclient.InferenceServerClient(self.url)
        try:
            client.start_stream(callback=lambda result, error: results.put((result, error)))
            client.async_stream_infer(MODEL_NAME, inputs, enable_empty_final_response=True)
            while True:
                result, error = results.get(timeout=REQUEST_TIMEOUT_S)
                yield result, error
                if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                    return
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()

    def stream(self, kind: str) -> Iterator[tuple[int, str | None]]:
        for result, error in self.events(self._inputs(kind)):
            if error is not None:
                raise StreamError(f"Triton error: {str(error)[:200]}")
            reason = None
            tokens = 0
            if result.get_response().outputs:
                n_out = result.as_numpy("num_output_tokens")
                tokens = int(n_out.reshape(-1)[0]) if n_out is not None else 0
                finish = result.as_numpy("finish_reason")
                if finish is not None and finish.reshape(-1)[0]:
                    reason = finish.reshape(-1)[0].decode()
            yield tokens, reason


# -- soak users: good traffic mixed with bad inputs and client cancellations -----------------------

SOAK_KINDS = ("text", "embeds", "mixed")


class BadInputNotRejected(Exception):
    """A bad input that was not answered with 4xx / INVALID_ARG naming the input."""


class SoakMixin:
    """One task: a bad input (--bad-share), a cancelled stream (--cancel-share) or a good request.

    Entries: `<path> <kind>` (good, the checks of StreamingUser), `<path> bad:<case>` (fails unless
    rejected as invalid), `<path> cancel` (fails unless a first token came before the cancel).
    """

    BAD_CASES: tuple[str, ...] = ()

    def pick_kind(self) -> str:
        return random.choice(SOAK_KINDS)

    def soak_request(self) -> None:
        draw = random.random()
        if draw < self.options.bad_share:
            self._timed(f"{self.path} bad:" + (case := random.choice(self.BAD_CASES)), self.bad_request, case)
        elif draw < self.options.bad_share + self.options.cancel_share:
            self._timed(f"{self.path} cancel", self.cancel_after_first_token)
        else:
            self.one_request()

    def _timed(self, name: str, call: Any, *args: Any) -> None:
        start = time.perf_counter()
        error: Exception | None = None
        try:
            call(*args)
        except StopUser:
            raise
        except Exception as exc:  # noqa: BLE001 - becomes a Locust failure entry
            error = exc
        self._fire("REQ", name, (time.perf_counter() - start) * 1000, 0, error)

    def bad_embeds(self, case: str) -> Any:
        import numpy as np

        if case == "hidden":
            return np.zeros((8, self.embeds_source.hidden_size + 1), np.float32)
        rows = self.embeds(8)
        rows[3, 5] = np.nan
        return rows


class SoakTritonUser(SoakMixin, TritonGrpcUser):
    """Triton gRPC: text, prompt_embeds, chat with embedding parts; bad inputs; cancelled streams."""

    path = "triton"
    # case -> the input the INVALID_ARG message must start with (gRPC streams carry only the text).
    BAD_PARAMETER = {"hidden": "prompt_embeds", "nan": "prompt_embeds", "malformed-json": "messages",
                     "unknown-sampling": "sampling_parameters"}
    BAD_CASES = tuple(BAD_PARAMETER)

    def bad_request(self, case: str) -> None:
        import numpy as np

        from client.triton_inputs import build_inputs

        params = sampling(self.options.max_tokens)
        if case in ("hidden", "nan"):
            inputs = build_inputs(self.grpcclient, embeds=self.bad_embeds(case), stream=True, sampling=params)
        elif case == "unknown-sampling":
            inputs = build_inputs(self.grpcclient, text=self.text(), stream=True,
                                  sampling={**params, "temprature": 0.5})
        else:
            inputs = build_inputs(self.grpcclient, stream=True, sampling=params)
            tensor = self.grpcclient.InferInput("messages", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([b'[{"role": "user", "content": '], dtype=np.object_))
            inputs.append(tensor)
        error = self._first_event(inputs)[1]
        parameter = self.BAD_PARAMETER[case]
        if error is None:
            raise BadInputNotRejected(f"{case}: answered without an error")
        message = error.message() if hasattr(error, "message") else str(error)
        from client.triton_errors import parse_error

        info = parse_error(message)
        if info.kind != "INVALID_ARG" or info.parameter != parameter:
            raise BadInputNotRejected(f"{case}: error does not name {parameter}: {message[:200]}")

    def cancel_after_first_token(self) -> None:
        from client.triton_inputs import build_inputs

        inputs = build_inputs(self.grpcclient, text=self.text(), stream=True,
                              sampling={**sampling(self.options.max_tokens), "max_tokens": 1000})
        result, error = self._first_event(inputs, need_tokens=True)
        if error is not None:
            raise StreamError(f"Triton error before the cancel: {str(error)[:200]}")

    def _first_event(self, inputs: list[Any], need_tokens: bool = False) -> tuple[Any, Any]:
        """Open a stream, wait for its first error or (with need_tokens) first token, then cancel it."""
        events = self.events(inputs)
        try:
            for result, error in events:
                if error is not None:
                    return None, error
                if need_tokens and result.get_response().outputs:
                    return result, None
            return result, None  # the final response
        finally:
            events.close()


class SoakFrontendUser(SoakMixin, FrontendChatUser):
    """Frontend: chat text, completions with prompt_embeds, chat with embedding parts; bad inputs; SSE cut early."""

    path = "frontend"
    BAD_CASES = ("hidden", "nan", "malformed-json", "unknown-sampling", "sparse")

    def stream(self, kind: str) -> Iterator[tuple[int, str | None]]:
        if kind == "embeds":
            return self.post_stream("/v1/completions", {"prompt_embeds": encode_embeds(self.embeds())})
        return super().stream(kind)

    def bad_request(self, case: str) -> None:
        body: Any = {"model": self.model_name, **sampling(self.options.max_tokens)}
        if case in ("hidden", "nan"):
            body["prompt_embeds"] = encode_embeds(self.bad_embeds(case))
        elif case == "unknown-sampling":
            body.update(prompt=self.text(), temprature=0.5)
        elif case == "sparse":
            body["prompt_embeds"] = _sparse_payload()
        if case == "malformed-json":
            response = self.session.post(f"{self.base_url}/v1/completions", data=b'{"model": "x", "prompt": ',
                                         headers={"content-type": "application/json"}, timeout=60)
        else:
            response = self.session.post(f"{self.base_url}/v1/completions", json=body, timeout=60)
        if not 400 <= response.status_code < 500:
            raise BadInputNotRejected(f"{case}: HTTP {response.status_code}: {response.text[:200]}")

    def cancel_after_first_token(self) -> None:
        body = {"model": self.model_name, "stream": True, "messages": [{"role": "user", "content": self.text()}],
                **sampling(self.options.max_tokens), "max_tokens": 1000}
        with self.session.post(f"{self.base_url}/v1/chat/completions", json=body, stream=True,
                               timeout=REQUEST_TIMEOUT_S) as response:
            if response.status_code != 200:
                raise StreamError(f"HTTP {response.status_code}: {response.text[:200]}")
            for line in response.iter_lines():
                if line.startswith(b"data:") and b'"choices"' in line:
                    if b'"error"' in line:
                        raise StreamError(f"stream error: {line[:200]!r}")
                    return  # leaving the with-block closes the connection mid-stream
        raise StreamError("stream ended before its first chunk")


# Locust's metaclass adds the bases' tasks (one_request): assigned after the class, only the soak task runs.
SoakTritonUser.tasks = [SoakMixin.soak_request]
SoakFrontendUser.tasks = [SoakMixin.soak_request]


def _sparse_payload() -> str:
    """A 2 KB torch.save of a sparse COO tensor declaring 2^20 x 2^20 (must be refused, never densified)."""
    import base64
    import io

    import torch

    indices = torch.tensor([[0, 1], [0, 1]])
    tensor = torch.sparse_coo_tensor(indices, torch.ones(2), (1 << 20, 1 << 20))
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
