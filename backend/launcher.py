"""Start `tritonserver` from the nvidia-pytriton wheel with the environment its Python stub needs.

The wheel ships a real tritonserver binary, the Python backend and a stub per CPython version.
We assemble a backend directory for the running interpreter and set LD_LIBRARY_PATH so the stub
loads this interpreter's libpython (not the system's) and the wheel's bundled libraries.
Usage: python -m backend.launcher [--model-repository DIR] [--http-port N] ... [-- extra tritonserver args]
With TRITONSERVER_HOME set (an unpacked server: bin/, lib/, backends/), that server is used instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _wheel_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _unpacked_home() -> Path | None:
    """TRITONSERVER_HOME: an unpacked server (bin/, lib/, backends/python/), as on the GPU machine."""
    home = os.environ.get("TRITONSERVER_HOME")
    return Path(home) if home else None


def prepare_backend_dir(target: Path) -> Path:
    """Build `target/python/` = libtriton_python.so + utils + the stub for this Python; return target."""
    source = _wheel_root()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = {
        source / "backends/python/libtriton_python.so": "libtriton_python.so",
        source / "backends/python/triton_python_backend_utils.py": "triton_python_backend_utils.py",
        source / f"python_backend_stubs/{version}/triton_python_backend_stub": "triton_python_backend_stub",
    }
    for src, name in files.items():
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing (nvidia-pytriton has no stub for Python {version}?)")
        dst = python_dir / name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return target


def server_command(model_repository: Path, *, http_port: int = 8000, grpc_port: int = 8001,
                   metrics_port: int = 8002, backend_dir: Path | None = None,
                   extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The tritonserver argv and environment for this interpreter's virtualenv."""
    home = _unpacked_home()
    if home is not None:
        backend_dir, binary, libs = home / "backends", home / "bin" / "tritonserver", home / "lib"
    else:
        backend_dir = prepare_backend_dir(backend_dir or REPO_ROOT / "build" / "triton-backends")
        binary = _wheel_root() / "bin" / "tritonserver"
        libs = _wheel_root().parent.parent / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")) if p
    )
    # The stub finds packages through the first python3 on PATH: this virtualenv's.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("LANG", "C.UTF-8")
    argv = [
        str(binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backend_dir.resolve()}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-cpu-metrics=false",
        "--allow-gpu-metrics=false",
        *(extra or []),
    ]
    return argv, env


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The tritonserver options shared by this launcher and scripts/serve.py (Triton's default ports)."""
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser)
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv, env = server_command(args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
                               metrics_port=args.metrics_port, extra=args.extra)
    logger.info("starting %s", " ".join(argv))
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
