"""Triton Python-backend entry point: a thin adapter around backend.service.GenerationService."""

import locale

# The Python stub runs with an ASCII locale; torch and vLLM read UTF-8 files at import.
locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The stub ignores PYTHONPATH: make the repository's packages importable (the one sys.path edit).
_REPO_ROOT = Path(__file__).resolve().parents[3]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))


from backend.config import parse_serving_config, triton_parameters  # noqa: E402
from backend.intake import Intake  # noqa: E402
from backend.lifecycle import freeze_heap  # noqa: E402
from backend.placement import pin_engine  # noqa: E402
from backend.reaper import start_reaper  # noqa: E402
from backend.service import GenerationService  # noqa: E402
from backend.triton_io import TritonMetrics, TritonSink, read_inputs  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger(__name__)


class TritonPythonModel:
    """Decoupled model: execute() queues requests for the intake threads, which parse and schedule
    them; responses stream from the sender threads."""

    def initialize(self, args):
        start_reaper()  # first: the engine must not outlive this stub or tritonserver, even while loading
        model_config = json.loads(args["model_config"])
        engine_args_path = Path(args["model_repository"]) / args["model_version"] / "model.json"
        name = args["model_name"]
        pin_engine(args, engine_args_path)  # KIND_GPU: this instance's engine sees only its own GPU
        # The typed loader reads the switches (a bad value fails the load there too).
        config = parse_serving_config(triton_parameters(model_config))
        if config.gil_switch_interval_s:
            sys.setswitchinterval(config.gil_switch_interval_s)
        self.metrics = TritonMetrics(name, args["model_instance_name"]) if config.report_custom_metrics else None
        self.service = GenerationService(model_config, engine_args_path, observer=self.metrics)
        self.intake = Intake(self._take, threads=config.intake_threads)
        # Out of the garbage collector's full collections: 0.38 s stalls of every stream (freeze_heap).
        logger.info("froze %d startup objects out of the garbage collector's full collections", freeze_heap())

    def execute(self, requests):
        # Only queued here: Triton sends the next requests once this returns (see backend.intake).
        for request in requests:
            self.intake.put(request)
        return None

    def _take(self, request):
        """On an intake thread: read, check and schedule one request; answer it whatever happens."""
        sink = TritonSink(request)
        try:
            self.service.handle(read_inputs(request), sink)
        except Exception as exc:  # noqa: BLE001 - handle() answers bad input itself; this is a bug
            logger.exception("taking a request failed")
            sink.send_error(exc)

    def finalize(self):
        self.intake.close()
        self.service.shutdown()
        if self.metrics is not None:
            self.metrics.release()  # also stops late updates from the metrics thread
        # Free every Triton object (response senders kept by finished tasks, metric families) while
        # the stub can: left to the interpreter's exit, their destructors touch shared memory that
        # is gone already (the stub segfaulted there on Triton 2.51).
        self.service = self.metrics = self.intake = None
        gc.unfreeze()  # frozen objects are never collected: those of initialize() must be, here
        gc.collect()

