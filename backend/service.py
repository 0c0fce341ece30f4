"""The model as a whole: configuration, engine driver and request parsing, wired once at load.

model.py hands it Triton's config and plain input arrays; tests can drive it the same way with
no Triton at all.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from backend.config import (
    ServingConfig,
    check_engine_arg_names,
    load_engine_args,
    parse_serving_config,
    triton_parameters,
)
from backend.engine import EngineDriver
from backend.errors import ConfigError, ValidationError
from backend.prompt import PromptBuilder
from backend.request import parse_request
from backend.server_watch import ServerWatch, find_ready_url
from backend.types import ModelInfo, Observer, ResponseSink

logger = logging.getLogger(__name__)


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
        self.driver = EngineDriver(
            engine_args,
            max_queued_requests=self.config.max_queued_requests,
            max_queued_prompt_tokens=self.config.max_queued_prompt_tokens,
            cancel_poll_interval_s=self.config.cancel_poll_interval_s,
            shutdown_grace_s=self.config.shutdown_grace_s,
            stall_timeout_s=self.config.engine_stall_timeout_s,
            sender_threads=self.config.response_sender_threads,
            observer=observer,
        )
        self.info: ModelInfo = self.driver.start()
        if self.info.tokenizer.chat_template is None:
            logger.warning("the tokenizer has no chat template: the `messages` input will be refused")
        self.builder = PromptBuilder(self.info.tokenizer, self.config.placeholder,
                                     self.info.hidden_size, self.info.dtype)
        self.watch = self._watch_server()
        logger.info("model ready: hidden size %d, context %d, dtype %s", self.info.hidden_size,
                    self.info.max_model_len, self.info.dtype)

    def handle(self, inputs: Mapping[str, Any], sink: ResponseSink) -> None:
        """Parse one request; bad input is answered at once, good input goes to the engine."""
        try:
            request = parse_request(inputs, self.builder, self.config, self.info.max_model_len)
        except ValidationError as exc:
            sink.send_error(exc)
            return
        self.driver.submit(request, sink)

    @property
    def healthy(self) -> bool:
        return self.driver.healthy

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
        if self.watch is not None:
            self.watch.close()
        self.driver.shutdown()
