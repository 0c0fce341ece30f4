"""Model configuration: engine arguments from model.json, serving switches from config.pbtxt.

Both are read once, by one typed loader, when the model loads; a bad value fails the load with a
message that names the setting. Requests never re-check configuration.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from backend.errors import ConfigError

DEFAULT_PLACEHOLDER = "<|prompt_embeds|>"


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """Switches from config.pbtxt `parameters` (all strings there; typed here)."""

    placeholder: str = DEFAULT_PLACEHOLDER  # reserved marker for an embedding part in text
    max_embedding_parts: int = 64  # parts per request
    max_request_json_bytes: int = 4 << 20  # `messages` and `sampling_parameters` size cap
    max_queued_requests: int = 256  # admission control: requests waiting for their first token
    max_queued_prompt_tokens: int = 1 << 20  # admission control: prompt tokens of those requests
    cancel_poll_interval_s: float = 0.05  # how often cancelled requests are looked for
    shutdown_grace_s: float = 10.0  # in-flight requests run this long once the server stops
    # With requests in flight and no engine output for this long, the engine is replaced (0: never).
    # Far above any step: a long prefill of a context-sized prompt on a slow CPU takes seconds.
    engine_stall_timeout_s: float = 120.0
    # Threads that send responses to Triton (requests sharded over them): "auto" (4 for a CPU engine,
    # 1 on a GPU: see sender_thread_count) or 1..16.
    response_sender_threads: str = "auto"
    intake_threads: int = 2  # threads that read and check requests (execute() only queues them)
    # The stub's sys.setswitchinterval: how long a thread may hold the GIL while another waits for
    # it. Python's 5 ms default makes every thread that releases the GIL (a send to Triton, a torch
    # op, a socket read) wait up to that long to get it back from the engine loop; 0: leave it.
    gil_switch_interval_s: float = 0.0
    # Triton's readiness URL, polled to notice a shutdown: "auto" (from tritonserver's options), "off", or a URL
    server_ready_url: str = "auto"
    report_custom_metrics: bool = True
    # Niceness (0..19) of every thread of the vLLM engine's processes, or "auto": 19 when the
    # engine runs on CPU, 0 (as started) on a GPU. vLLM's engine core and worker spin-wait on each
    # other (sched_yield) while a request runs, so a CPU engine holds every core; clients on the
    # same machine then got their streams in one burst at the end (backend.lifecycle).
    engine_niceness: str = "auto"


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"parameter {name!r}: expected a boolean, got {value!r}")


def parse_serving_config(parameters: Mapping[str, str]) -> ServingConfig:
    """Build a ServingConfig from config.pbtxt parameters; unknown keys are an error (typos)."""
    fields = {f.name: f for f in dataclasses.fields(ServingConfig)}
    values: dict[str, Any] = {}
    for name, raw in parameters.items():
        if name not in fields:
            raise ConfigError(f"unknown parameter {name!r} in config.pbtxt; known: {sorted(fields)}")
        kind = type(getattr(ServingConfig, name))
        try:
            if kind is bool:
                values[name] = _parse_bool(name, raw)
            else:
                values[name] = kind(raw)
        except ValueError:
            raise ConfigError(f"parameter {name!r}: expected {kind.__name__}, got {raw!r}") from None
    config = ServingConfig(**values)
    if not config.placeholder.strip():
        raise ConfigError("parameter 'placeholder' must not be empty")
    for name in ("max_embedding_parts", "max_request_json_bytes", "max_queued_requests",
                 "max_queued_prompt_tokens"):
        if getattr(config, name) < 1:
            raise ConfigError(f"parameter {name!r} must be >= 1")
    if config.cancel_poll_interval_s <= 0 or config.shutdown_grace_s < 0:
        raise ConfigError("parameters 'cancel_poll_interval_s' > 0 and 'shutdown_grace_s' >= 0 required")
    if not 0 <= config.engine_stall_timeout_s < float("inf"):
        raise ConfigError("parameter 'engine_stall_timeout_s' must be >= 0 seconds (0: off)")
    senders = config.response_sender_threads.strip()
    if senders != "auto" and not (senders.isdigit() and 1 <= int(senders) <= 16):
        raise ConfigError(f"parameter 'response_sender_threads': 'auto' or an integer 1..16, "
                          f"got {config.response_sender_threads!r}")
    if not 1 <= config.intake_threads <= 16:
        raise ConfigError("parameter 'intake_threads' must be 1..16")
    if not (config.gil_switch_interval_s == 0 or 1e-5 <= config.gil_switch_interval_s <= 0.1):
        raise ConfigError("parameter 'gil_switch_interval_s' must be 0 (Python's default) or 1e-5..0.1 seconds")
    niceness = config.engine_niceness.strip()
    if niceness != "auto" and not (niceness.isdigit() and int(niceness) <= 19):
        raise ConfigError(f"parameter 'engine_niceness': 'auto' or an integer 0..19, got {config.engine_niceness!r}")
    url = config.server_ready_url.strip()
    if url not in ("auto", "off") and not url.startswith(("http://", "https://")):
        raise ConfigError(f"parameter 'server_ready_url': 'auto', 'off' or an http(s) URL, got {url!r}")
    return config


CPU_SENDER_THREADS = 4  # "auto" on a CPU engine


def sender_thread_count(setting: str, device_type: str | None) -> int:
    """config.pbtxt's response_sender_threads for an engine on `device_type` ("cpu", "cuda", ...).

    "auto": 4 on CPU, 1 elsewhere. Each send is a blocking round trip to tritonserver. On a few CPU
    cores shared with the engine it mostly waits for a core, so sends to other requests in the
    meantime pay (2-core box: Triton gRPC 0.78-0.90x -> 0.90-1.00x of `vllm serve` at 8 and 16 streams). On
    an H200 one thread keeps up and more only contend for the GIL (2-12% fewer tokens/s at 32 and 64
    streams). Measured in results/sender-threads/.
    """
    if setting.strip() != "auto":
        return int(setting)
    return CPU_SENDER_THREADS if device_type == "cpu" else 1


def triton_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """Flatten Triton's `parameters` block ({"k": {"string_value": "v"}}) into {"k": "v"}."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


def load_engine_args(path: Path) -> dict[str, Any]:
    """Read model.json: any AsyncEngineArgs field. Relative paths ('./', '../') are resolved
    against the file's directory, so the repository runs from any working directory."""
    try:
        args = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"engine arguments file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise ConfigError(f"{path}: expected a JSON object of AsyncEngineArgs fields")
    if "model" not in args:
        raise ConfigError(f"{path}: 'model' is required")
    if args.setdefault("enable_prompt_embeds", True) is not True:
        raise ConfigError(f"{path}: 'enable_prompt_embeds' must be true for this model")
    for key in ("model", "tokenizer"):
        value = args.get(key)
        if isinstance(value, str) and value.startswith("."):
            args[key] = str((path.parent / value).resolve())
    return args


def check_engine_arg_names(args: Mapping[str, Any], known: set[str]) -> None:
    """Reject model.json keys that AsyncEngineArgs does not have (typos fail the load, not silently)."""
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"model.json: unknown engine arguments {unknown}")
