"""Frontend settings (one typed object from the command line) and the model facts it needs.

The hidden size, needed to check embedding payloads before they leave the frontend, comes from
(in this order): `--hidden-size`; the `config.json` under `--model-path` (which also gives the
tokenizer for token-id prompts); or, with neither, one probe of the Triton model itself, whose
own validation refuses a 1x1 tensor and names the model's hidden size. Nothing is added to Triton.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from backend.errors import ConfigError
from client.triton_inputs import MODEL_NAME

DEFAULT_MAX_BODY_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Everything the frontend is configured with; checked once at startup."""

    triton_url: str = "localhost:8001"
    # Triton's metrics endpoint, read by /health for the model's vllm:engine_healthy gauge (Triton's own
    # model readiness stays true while the engine restarts). "auto": port 8002 on the gRPC host; "off".
    triton_metrics_url: str = "auto"
    triton_model: str = MODEL_NAME
    model_name: str | None = None  # the name clients use; defaults to triton_model
    host: str = "0.0.0.0"
    port: int = 9000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_pickle: bool = True
    hidden_size: int | None = None
    model_path: Path | None = None
    max_embed_rows: int = 16384  # rows per payload; the model checks the context length itself
    max_embed_parts: int = 64  # payloads per request (the model's default max_embedding_parts)
    decode_workers: int = 2
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
        for name in ("max_body_bytes", "max_embed_rows", "max_embed_parts", "decode_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.triton_metrics_url not in ("auto", "off") and not self.triton_metrics_url.startswith("http"):
            raise ConfigError("--triton-metrics-url: 'auto', 'off' or an http(s) URL")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ConfigError("--hidden-size must be >= 1")
        if self.model_path is not None and not (self.model_path / "config.json").is_file():
            raise ConfigError(f"--model-path {self.model_path}: no config.json there")
        return self


def hidden_size_from_model_path(model_path: Path) -> int:
    """The model's hidden size from its Hugging Face config.json (text_config for multimodal models)."""
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{model_path}/config.json: cannot read ({exc})") from None
    for section in (config, config.get("text_config") or {}):
        value = section.get("hidden_size")
        if isinstance(value, int) and value > 0:
            return value
    raise ConfigError(f"{model_path}/config.json has no hidden_size")


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
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--allow-pickle", action=argparse.BooleanOptionalAction, default=True,
                        help="accept torch.save payloads (vLLM's format); --no-allow-pickle: safetensors only")
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--model-path", type=Path, default=None,
                        help="the served model's directory: hidden size and tokenizer (token-id prompts)")
    parser.add_argument("--max-embed-rows", type=int, default=16384)
    parser.add_argument("--max-embed-parts", type=int, default=64)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FrontendConfig) if hasattr(args, f.name)}
    return FrontendConfig(**values).check()
