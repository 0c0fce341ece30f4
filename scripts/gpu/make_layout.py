"""Writes a model repository (or a whole checkout) for one GPU layout of deploy/layouts/.

A layout is a directory with `model.json` (the engine arguments) and `instance_group.pbtxt` (the one
`instance_group` line of config.pbtxt); everything else comes from model_repository/, so the tensor
interface and serving switches have one source.

    python -m scripts.gpu.make_layout tp-2 --repository /srv/repo          # tritonserver --model-repository /srv/repo
    python -m scripts.gpu.make_layout tp-2 --checkout /tmp/l/tp-2 --engine-args '{"tensor_parallel_size": 2}'
    python -m scripts.gpu.make_layout --list

`--checkout` copies this checkout with the layout in model_repository/, so tests/gpu and
benchmarks/bench_serving.py (which copy model_repository/) run on the layout unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYOUTS = REPO_ROOT / "deploy" / "layouts"
MODEL_DIR = REPO_ROOT / "model_repository" / "vllm_model"
# The one instance_group block of config.pbtxt (it may span lines; it ends at the closing "]").
_INSTANCE_GROUP = re.compile(r"^instance_group\s*\[.*?\][ \t]*$", re.MULTILINE | re.DOTALL)
# Left out of a --checkout copy: big, machine-local or results.
_NOT_COPIED = (".git", ".venv", "build", "results", ".gpu-bundle", "__pycache__", ".pytest_cache")


def layout_names() -> list[str]:
    """Every layout under deploy/layouts/."""
    return sorted(p.name for p in LAYOUTS.iterdir() if (p / "model.json").is_file())


def read_layout(name: str) -> tuple[str, dict[str, Any]]:
    """(instance_group line, engine arguments) of one layout."""
    path = LAYOUTS / name
    if not (path / "model.json").is_file():
        raise SystemExit(f"unknown layout {name!r}; known: {', '.join(layout_names())}")
    group = (path / "instance_group.pbtxt").read_text().strip()
    if not _INSTANCE_GROUP.fullmatch(group):
        raise SystemExit(f"{path / 'instance_group.pbtxt'}: expected one 'instance_group [ ... ]' line")
    return group, json.loads((path / "model.json").read_text())


def render_config(config_text: str, instance_group: str) -> str:
    """config.pbtxt with its instance_group replaced; everything else unchanged."""
    found = _INSTANCE_GROUP.findall(config_text)
    if len(found) != 1:
        raise ValueError(f"config.pbtxt: expected one instance_group block, found {len(found)}")
    return _INSTANCE_GROUP.sub(lambda _: instance_group, config_text)


def apply_layout(model_dir: Path, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the layout's config.pbtxt and model.json into a copy of vllm_model/; returns the engine args."""
    group, engine_args = read_layout(name)
    engine_args.update(overrides or {})
    config = model_dir / "config.pbtxt"
    config.write_text(render_config(config.read_text(), group))
    (model_dir / "1" / "model.json").write_text(json.dumps(engine_args, indent=2) + "\n")
    return engine_args


def write_repository(name: str, target: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A model repository for the layout; model.py is a link, so it imports this checkout's backend."""
    model_dir = target / MODEL_DIR.name
    shutil.copytree(MODEL_DIR, model_dir, ignore=shutil.ignore_patterns("__pycache__", "model.py"))
    (model_dir / "1" / "model.py").symlink_to(MODEL_DIR / "1" / "model.py")
    apply_layout(model_dir, name, overrides)
    return target


def write_checkout(name: str, target: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A copy of this checkout whose model_repository/ is the layout's (build/ is linked, not copied)."""
    shutil.copytree(REPO_ROOT, target, ignore=shutil.ignore_patterns(*_NOT_COPIED), symlinks=True)
    for shared in ("build", ".venv"):
        if (REPO_ROOT / shared).exists():
            (target / shared).symlink_to(REPO_ROOT / shared)
    apply_layout(target / "model_repository" / MODEL_DIR.name, name, overrides)
    return target


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layout", nargs="?", help="a directory name under deploy/layouts/")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--repository", type=Path, help="write a model repository here (must not exist)")
    where.add_argument("--checkout", type=Path, help="write a copy of the checkout here (must not exist)")
    parser.add_argument("--engine-args", default="{}", help="JSON overrides of the layout's model.json")
    parser.add_argument("--list", action="store_true", help="print the layouts and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list or not args.layout:
        for name in layout_names():
            group, engine_args = read_layout(name)
            parallel = {k: v for k, v in engine_args.items() if k.endswith("_parallel_size")
                        or k == "distributed_executor_backend"}
            logger.info("%-16s %s  %s", name, group, json.dumps(parallel))
        return
    overrides = json.loads(args.engine_args)
    if args.checkout:
        logger.info("checkout for %s: %s", args.layout, write_checkout(args.layout, args.checkout, overrides))
    elif args.repository:
        logger.info("repository for %s: %s", args.layout, write_repository(args.layout, args.repository, overrides))
    else:
        parser.error("give --repository or --checkout")


if __name__ == "__main__":
    main()
