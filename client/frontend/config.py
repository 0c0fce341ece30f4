"""Frontend settings: one typed object from the command line, checked once at startup.

The model's facts the frontend needs (hidden size and context, to check embedding payloads before
they leave the frontend) come from the Triton model itself, asked once (its `model_info` answer);
`--hidden-size` and `--max-model-len` override them. `--model-path` gives the tokenizer that turns
token ids into strings for logprobs (else the model's own path, when this machine has it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from backend.errors import ConfigError
from client.triton_inputs import MODEL_NAME

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_EMBED_BYTES_IN_FLIGHT = 1 << 30
API_KEY_ENV = "VLLM_API_KEY"  # vLLM's convention, so clients and deployments carry over


def default_workers() -> int:
    """Worker processes for this machine: a quarter of the usable cores, 1 to 8 (the engine needs the rest)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // 4))


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Everything the frontend is configured with; checked once at startup."""

    triton_url: str = "localhost:8001"
    # Triton's metrics endpoint, read by /health for the model's vllm:engine_healthy gauge (Triton's own
    # model readiness stays true while the engine restarts). "auto": port 8002 on the gRPC host; "off".
    triton_metrics_url: str = "auto"
    triton_model: str = MODEL_NAME
    model_name: str | None = None  # the name clients use; defaults to triton_model
    host: str = "127.0.0.1"  # closed by default: --host 0.0.0.0 to serve other machines (containers)
    port: int = 9000
    api_key: str | None = None  # when set, every endpoint but /health and /metrics needs "Bearer <key>"
    workers: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_pickle: bool = True
    hidden_size: int | None = None
    model_path: Path | None = None
    max_embed_rows: int = 16384  # rows per payload; the model checks the context length itself
    max_embed_parts: int = 64  # payloads per request (the model's default max_embedding_parts)
    decode_workers: int = 2
    # The served model's context; embedding rows of one request (all payloads together) must fit in it.
    max_model_len: int | None = None
    max_prompts: int = 128  # choices (Triton requests) per completions request
    max_embed_bytes_in_flight: int = DEFAULT_EMBED_BYTES_IN_FLIGHT  # per process
    max_triton_streams: int = 1024  # concurrent gRPC streams per process
    limit_wait_s: float = 2.0  # how long a request waits for the two budgets above before a 429
    request_timeout_s: float = 600.0
    log_level: str = "info"

    @property
    def served_name(self) -> str:
        return self.model_name or self.triton_model

    @property
    def metrics_url(self) -> str | None:
        if self.triton_metrics_url == "off":
            return None
        if self.triton_metrics_url == "auto":
            return f"http://{self.triton_url.rsplit(':', 1)[0]}:8002/metrics"
        return self.triton_metrics_url

    def check(self) -> "FrontendConfig":
        """Fail fast on settings that cannot work."""
        for name in ("max_body_bytes", "max_embed_rows", "max_embed_parts", "decode_workers", "workers",
                     "max_prompts", "max_embed_bytes_in_flight", "max_triton_streams"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError("--max-model-len must be >= 1")
        if not self.limit_wait_s >= 0:
            raise ConfigError("--limit-wait-s must be >= 0")
        if self.api_key is not None and not self.api_key:
            raise ConfigError(f"--api-key / {API_KEY_ENV} must not be empty")
        if self.triton_metrics_url not in ("auto", "off") and not self.triton_metrics_url.startswith("http"):
            raise ConfigError("--triton-metrics-url: 'auto', 'off' or an http(s) URL")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ConfigError("--hidden-size must be >= 1")
        if self.model_path is not None and not (self.model_path / "config.json").is_file():
            raise ConfigError(f"--model-path {self.model_path}: no config.json there")
        return self


def to_json(config: FrontendConfig) -> str:
    """The config as JSON, for worker processes (which rebuild it with from_json)."""
    values = dataclasses.asdict(config)
    values["model_path"] = None if config.model_path is None else str(config.model_path)
    return json.dumps(values)


def from_json(text: str) -> FrontendConfig:
    """Inverse of to_json."""
    values = json.loads(text)
    if values.get("model_path") is not None:
        values["model_path"] = Path(values["model_path"])
    return FrontendConfig(**values).check()


def parse_args(argv: list[str] | None = None) -> FrontendConfig:
    """Command line -> FrontendConfig."""
    parser = argparse.ArgumentParser(prog="python -m client.frontend",
                                     description="OpenAI-compatible HTTP frontend for the Triton vllm_model")
    parser.add_argument("--triton-url", default="localhost:8001", help="Triton gRPC host:port")
    parser.add_argument("--triton-metrics-url", default="auto",
                        help="Triton's metrics URL, for the engine-health gauge in /health "
                             "('auto': port 8002 on the --triton-url host; 'off')")
    parser.add_argument("--triton-model", default=MODEL_NAME, help="model name in Triton")
    parser.add_argument("--model-name", default=None, help="name clients use (default: the Triton model name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (default: this machine only; 0.0.0.0 to serve others, e.g. in a container)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                        help=f"require 'Authorization: Bearer <key>' (default: ${API_KEY_ENV}; "
                             "/health and /metrics stay open)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="HTTP worker processes, each with its own Triton connection (default: cores/4, 1-8)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--allow-pickle", action=argparse.BooleanOptionalAction, default=True,
                        help="accept torch.save payloads (vLLM's format); --no-allow-pickle: safetensors only")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help="the model's hidden size (default: asked of the model once)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="the served model's directory: the tokenizer for logprobs token strings and echo "
                             "(default: the model's own path, when this machine has it)")
    parser.add_argument("--max-embed-rows", type=int, default=16384)
    parser.add_argument("--max-embed-parts", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=2,
                        help="threads per process that decode payloads and token-id prompts")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="the model's context: cap on a request's embedding rows, all payloads together "
                             "(default: the model's own max_model_len, asked of it once)")
    parser.add_argument("--max-prompts", type=int, default=128, help="prompts (choices) per completions request")
    parser.add_argument("--max-embed-bytes-in-flight", type=int, default=DEFAULT_EMBED_BYTES_IN_FLIGHT,
                        help="per process: embedding payload bytes being decoded or served at once (429 beyond)")
    parser.add_argument("--max-triton-streams", type=int, default=1024,
                        help="per process: concurrent gRPC streams to Triton (429 beyond)")
    parser.add_argument("--limit-wait-s", type=float, default=2.0,
                        help="how long a request waits for those two budgets before a 429")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FrontendConfig) if hasattr(args, f.name)}
    return FrontendConfig(**values).check()
