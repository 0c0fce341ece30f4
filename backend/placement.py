"""Where a model instance's engine runs: a KIND_GPU instance gets exactly its own GPU.

Triton gives each instance of a `KIND_GPU` instance group a device id, but a Python-backend model
does not run on it by itself: the vLLM engine would take the first visible GPU in every instance.
As vllm_backend does (`_validate_device_config`), the instance narrows `CUDA_VISIBLE_DEVICES` to
its device before the engine starts; the engine's worker processes inherit it. Unlike vllm_backend,
an already set `CUDA_VISIBLE_DEVICES` is respected: Triton's device ids count the visible devices,
so id 1 under `CUDA_VISIBLE_DEVICES=2,3` is physical GPU 3, not 1.

`KIND_MODEL` (the default; also tensor, pipeline or vLLM data parallelism over several GPUs) and
`KIND_CPU` leave the environment alone: the engine places itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, MutableMapping

from backend.config import load_engine_args
from backend.errors import ConfigError

logger = logging.getLogger(__name__)

_PARALLEL_SIZES = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


def _size(engine_args: Mapping[str, Any], name: str) -> int:
    value = engine_args.get(name, 1)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.json: {name!r} must be an integer >= 1, got {value!r}")
    return value


def engine_devices(kind: str, device_id: int, engine_args: Mapping[str, Any],
                   visible: str | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES for this instance's engine, or None to leave the environment as it is."""
    sizes = {name: _size(engine_args, name) for name in _PARALLEL_SIZES}
    if kind != "GPU":
        return None
    spread = {name: size for name, size in sizes.items() if size > 1}
    if spread:
        # One engine per GPU is what KIND_GPU means; an engine over several GPUs must see them all.
        raise ConfigError(f"KIND_GPU runs one single-GPU engine per instance, but model.json sets {spread}; "
                          "use instance_group KIND_MODEL for an engine over several GPUs")
    if device_id < 0:
        return None
    if visible is None or not visible.strip():
        return str(device_id)
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    if device_id >= len(devices):
        raise ConfigError(f"KIND_GPU instance on device {device_id}, but CUDA_VISIBLE_DEVICES={visible!r} "
                          f"lists {len(devices)} device(s)")
    return devices[device_id]


def pin_engine(args: Mapping[str, str], engine_args_path: Path,
               environ: MutableMapping[str, str] | None = None) -> str | None:
    """Narrow CUDA_VISIBLE_DEVICES to this Triton instance's GPU (KIND_GPU) before the engine starts."""
    environ = os.environ if environ is None else environ
    kind = args.get("model_instance_kind", "MODEL")
    device_id = int(args.get("model_instance_device_id", "-1") or -1)
    devices = engine_devices(kind, device_id, load_engine_args(engine_args_path),
                             environ.get("CUDA_VISIBLE_DEVICES"))
    if devices is not None:
        logger.info("instance %s (KIND_GPU, device %d): engine pinned to CUDA_VISIBLE_DEVICES=%s",
                    args.get("model_instance_name", "?"), device_id, devices)
        environ["CUDA_VISIBLE_DEVICES"] = devices
    return devices
