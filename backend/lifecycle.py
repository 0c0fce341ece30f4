"""Engine lifecycle on the driver's event loop: start, replace after a death or a stall, shut down.

Each engine that starts gets its processes' CPU priority set (config.pbtxt's `engine_niceness`).
Why a CPU engine runs nicer than everything else: vLLM's engine core and its worker spin-wait on
each other (sched_yield in their shared-memory queue) for as long as a request runs, so a CPU
engine holds every core it can get. On the 2-core box, a client in another session (Linux's
scheduler autogroups) then got none: its woken threads waited 100-300 ms for a CPU (perf sched)
and the stream reached it in one burst at the end. With the engine's threads at niceness 19, no
sequential request of 130 was late (17-58% per run before); at 10, 10-20 of 60; with only the core
or only the worker at 19, 15-25 of 60. At 8 streams from another session 0-10 of 96 still were;
a client in the server's own session had none late at either niceness (scripts/devservers.py).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from backend.types import ModelInfo

logger = logging.getLogger(__name__)


def freeze_heap() -> int:
    """Collect, then freeze every object left, out of the garbage collector's full collections.

    The model calls this once loaded: what startup left in the stub (vLLM, torch, the engine's
    client side: ~620,000 objects on the tiny model) is never garbage, yet a full collection walks
    it all with the GIL held: 0.38 s with every stream stalled, measured once in a 50 s load on the
    CPU box. vLLM's engine core and API server freeze theirs the same way. Frozen objects are never
    collected, so after an engine restart this runs again (EngineLifecycle): the replaced engine's
    reference cycles are collected, the new engine's objects frozen. Returns how many are frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def vllm_engine_factory(engine_args: dict[str, Any]) -> Callable[[], Any]:
    """A function that starts a vLLM AsyncLLM from model.json's engine arguments (blocks until ready)."""

    def start() -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args))

    return start


def engine_processes(engine: Any) -> list[int]:
    """Pids of the engine's core processes and their children (empty for an in-process engine)."""
    manager = getattr(getattr(getattr(engine, "engine_core", None), "resources", None), "engine_manager", None)
    pids = [p.pid for p in getattr(manager, "processes", []) if p.pid is not None]
    try:
        pids += [c.pid for pid in list(pids) if psutil.pid_exists(pid)
                 for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - a process that exited meanwhile has no children to kill
        logger.debug("could not list the engine's child processes", exc_info=True)
    return pids


CPU_ENGINE_NICENESS = 19  # "auto" on a CPU engine (see the module docstring)


def engine_niceness(setting: str, engine: Any) -> int:
    """config.pbtxt's engine_niceness for a started engine: "auto" is 19 on CPU, else 0 (as started)."""
    if setting.strip() != "auto":
        return int(setting)
    device_config = getattr(getattr(engine, "vllm_config", None), "device_config", None)
    return CPU_ENGINE_NICENESS if getattr(device_config, "device_type", None) == "cpu" else 0


def renice(pids: Iterable[int], niceness: int) -> int:
    """Run every thread of the processes `pids` at `niceness` or nicer; returns how many changed.

    Linux keeps a niceness per thread, and a new thread or process starts with its creator's: so
    every thread is set, twice over, for one started meanwhile by a thread not set yet. A thread's
    niceness is only ever raised (lowering it takes a privilege).
    """
    changed = 0
    for _ in range(2):
        for pid in pids:
            try:
                threads = psutil.Process(pid).threads()
            except psutil.Error:
                continue  # exited meanwhile
            for thread in threads:
                try:
                    if os.getpriority(os.PRIO_PROCESS, thread.id) < niceness:
                        os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
                        changed += 1
                except OSError:
                    pass  # the thread ended meanwhile
    return changed


def model_info(engine: Any) -> ModelInfo:
    """The facts request parsing needs, read from a started engine (the same for its replacements)."""
    config = engine.model_config
    tokenizer = engine.get_tokenizer()
    vllm_config = getattr(engine, "vllm_config", None)

    def verify(params: Any) -> None:
        # vLLM's own checks, as its input processor runs them (structured-output grammars are
        # compiled here): on a copy, because verify() records the chosen backend in the params.
        copy.deepcopy(params).verify(config, vllm_config.speculative_config,
                                     vllm_config.structured_outputs_config, tokenizer)

    max_logprobs = config.max_logprobs if config.max_logprobs >= 0 else config.get_vocab_size()
    return ModelInfo(hidden_size=config.get_hidden_size(), max_model_len=config.max_model_len,
                     dtype=config.dtype, tokenizer=tokenizer, model=str(config.model),
                     max_logprobs=max_logprobs, sampling_defaults=dict(config.get_diff_sampling_param()),
                     verify_sampling=verify if vllm_config is not None else None)


class EngineLifecycle:
    """Holds the current engine; replaces it in place (off the loop) when it died or stalled."""

    def __init__(self, factory: Callable[[], Any], niceness: str = "auto") -> None:
        self._factory = factory
        self._niceness = niceness  # config.pbtxt's engine_niceness
        self.engine: Any = None  # None while (re)starting: admission answers UNAVAILABLE
        self.restarts = 0
        self._restart: asyncio.Task | None = None
        self._stopping = False

    def start(self) -> ModelInfo:
        """Start the first engine (on the loop thread; blocks it while the engine starts)."""
        self.engine = self._start()
        return model_info(self.engine)

    def _start(self) -> Any:
        """A fresh engine (blocks until it is ready), its processes at the configured niceness."""
        engine = self._factory()
        niceness = engine_niceness(self._niceness, engine)
        pids = engine_processes(engine)
        if niceness > 0 and pids:
            changed = renice(pids, niceness)
            logger.info("engine processes %s run at niceness %d (%d threads set)", pids, niceness, changed)
        return engine

    @property
    def ready(self) -> bool:
        """An engine is running and not known dead."""
        return self.engine is not None and not self.engine.errored

    @property
    def replacing(self) -> bool:
        """A replacement is under way."""
        return self._restart is not None

    def replace(self, why: str, *, kill: bool = False) -> None:
        """Replace the engine with a fresh one, once at a time; `kill` first SIGKILLs its processes
        (a stalled engine may not answer a polite shutdown: a SIGSTOPped one can't)."""
        if self.engine is None or self._restart is not None or self._stopping:
            return
        old, self.engine = self.engine, None
        if kill:
            for pid in engine_processes(old):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._restart = asyncio.get_running_loop().create_task(self._replace(old, why))

    async def _replace(self, old: Any, why: str) -> None:
        logger.error("replacing the vLLM engine: %s", why)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, old.shutdown)
        except Exception:  # noqa: BLE001 - the old engine's cleanup must not block recovery
            logger.exception("shutting down the old engine failed")
        old = None  # collectable from here on
        try:
            # Off the loop: engine start blocks for seconds to minutes, and requests must
            # meanwhile get their UNAVAILABLE answers at once.
            engine = await loop.run_in_executor(None, self._start)
        except Exception:  # noqa: BLE001 - stay unavailable; the operator must reload the model
            logger.exception("engine restart failed; the model stays unavailable until reloaded")
            self._restart = None
            return
        if self._stopping:  # shut down while restarting
            engine.shutdown()
            return
        self.engine, self._restart = engine, None
        self.restarts += 1
        logger.info("the vLLM engine was restarted (%d restarts so far)", self.restarts)
        if gc.get_freeze_count():  # a frozen heap would keep the old engine's reference cycles for good
            freeze_heap()

    async def shutdown(self) -> None:
        """Wait for a replacement under way, then stop the engine."""
        self._stopping = True
        if self._restart is not None:
            await asyncio.wait([self._restart], timeout=120)
        if self.engine is not None:
            self.engine.shutdown()
