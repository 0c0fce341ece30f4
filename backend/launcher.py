"""Start `tritonserver` from the nvidia-pytriton wheel with the environment its Python stub needs.

The wheel ships a real tritonserver binary, the Python backend and a stub per CPython version.
We assemble a backend directory for the running interpreter and set LD_LIBRARY_PATH so the stub
loads this interpreter's libpython (not the system's) and the wheel's bundled libraries.
Usage: python -m backend.launcher [--model-repository DIR] [--http-port N] [--host ADDR] [--admin-key KEY]
       [-- extra tritonserver args]
With TRITONSERVER_HOME set (an unpacked server: bin/, lib/, backends/), that server is used instead.

Closed by default: the three endpoints bind 127.0.0.1 unless --host says otherwise, and the
APIs that change the server's state (shared memory, model repository, trace, logging) answer only
requests that carry the key (the key from --admin-key or $TRITON_ADMIN_KEY, else a random one per
start): HTTP header `triton-admin-key`, gRPC metadata `triton-grpc-protocol-triton-admin-key`.
See docs/security.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
ADMIN_KEY_HEADER = "triton-admin-key"  # HTTP header (lower case: gRPC metadata keys must be)
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"  # gRPC metadata: Triton adds this prefix
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
# Everything that changes the server's state. Inference, health, metadata, model configuration
# and statistics stay open: clients (our frontend, perf_analyzer) read them without a key.
RESTRICTED_APIS = ("shared-memory", "model-repository", "trace", "logging")


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


def new_admin_key() -> str:
    """A random key for the restricted APIs, for a start where the operator gave none."""
    return secrets.token_urlsafe(24)


def server_options(model_repository: Path, *, http_port: int = 8000, grpc_port: int = 8001,
                   metrics_port: int = 8002, host: str = LOOPBACK, admin_key: str) -> list[str]:
    """tritonserver options: repository, ports, bind address and the restricted-API key."""
    if not admin_key or any(c in admin_key for c in ",:= \t\n"):
        raise ValueError("admin key: must be non-empty, without ',', ':', '=' or whitespace")
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--model-repository={Path(model_repository).resolve()}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--model-control-mode=none",  # no loading or unloading over the network
        "--allow-cpu-metrics=false",
        "--allow-gpu-metrics=false",
        f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={admin_key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={admin_key}",
    ]


def server_command(model_repository: Path, *, http_port: int = 8000, grpc_port: int = 8001,
                   metrics_port: int = 8002, host: str = LOOPBACK, admin_key: str | None = None,
                   backend_dir: Path | None = None,
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
        f"--backend-directory={backend_dir.resolve()}",
        *server_options(model_repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                        host=host, admin_key=admin_key or new_admin_key()),
        *(extra or []),
    ]
    return argv, env


def add_server_arguments(parser: argparse.ArgumentParser, host_option: str = "--host") -> None:
    """The tritonserver options shared by this launcher and scripts/serve.py (Triton's default ports)."""
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(host_option, dest="triton_host", default=LOOPBACK,
                        help="address Triton's HTTP, gRPC and metrics endpoints bind to (0.0.0.0: every "
                             "interface, e.g. in a container; default %(default)s)")
    parser.add_argument("--admin-key", default=os.environ.get(ADMIN_KEY_ENV),
                        help=f"the key for Triton's restricted APIs, sent as the HTTP header `{ADMIN_KEY_HEADER}` "
                             f"or the gRPC metadata `{GRPC_ADMIN_KEY_HEADER}` (default ${ADMIN_KEY_ENV}, else a "
                             "random one per start)")


def admin_key_from(args: argparse.Namespace) -> tuple[str, bool]:
    """The restricted-API key from parsed options, and whether it was generated here."""
    return (args.admin_key, False) if args.admin_key else (new_admin_key(), True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser)
    parser.add_argument("extra", nargs="*", help="further tritonserver arguments (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    admin_key, generated = admin_key_from(args)
    argv, env = server_command(args.model_repository, http_port=args.http_port, grpc_port=args.grpc_port,
                               metrics_port=args.metrics_port, host=args.triton_host, admin_key=admin_key,
                               extra=args.extra)
    if generated:  # the operator's terminal only: the key is not logged anywhere else
        logger.info("restricted APIs: key %s (HTTP header %s, gRPC metadata %s)", admin_key, ADMIN_KEY_HEADER,
                    GRPC_ADMIN_KEY_HEADER)
    logger.info("starting tritonserver on %s (HTTP %d, gRPC %d, metrics %d)", args.triton_host, args.http_port,
                args.grpc_port, args.metrics_port)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
