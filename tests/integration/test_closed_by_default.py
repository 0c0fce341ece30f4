"""Closed by default: Triton listens on loopback only, and its state-changing APIs need the admin key.

Runs against the session's tritonserver (started by scripts/devservers.py with the defaults that
`make serve` uses: 127.0.0.1 and a random key per start).
"""

from __future__ import annotations

import ipaddress
import socket

import httpx
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

REGION = "closed_by_default_test"


def _ports(triton) -> dict[str, int]:
    return {"http": triton.http_port, "grpc": triton.grpc_port, "metrics": triton.metrics_port}


def _non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC listens on an IPv6 socket: ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def test_every_triton_endpoint_listens_on_loopback_only(triton):
    listening = {c.laddr.port: c.laddr.ip for c in psutil.Process(triton.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    for name, port in _ports(triton).items():
        assert port in listening and _is_loopback(listening[port]), f"{name} port {port}: {listening}"


def test_triton_ports_refuse_connections_on_this_machines_other_address(triton):
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the listening-socket test covers it)")
    # Control: a socket bound to every interface is reachable there, so a refusal below means something.
    with socket.create_server(("0.0.0.0", 0)) as control:
        socket.create_connection((address, control.getsockname()[1]), timeout=5).close()
    for name, port in _ports(triton).items():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
            pytest.fail(f"{name} port {port} accepted a connection on {address}")


def test_health_inference_metadata_and_metrics_stay_open(triton):
    assert httpx.get(f"{triton.http_url}/v2/health/ready", timeout=10).status_code == 200
    assert httpx.get(f"{triton.http_url}/v2/models/vllm_model", timeout=10).status_code == 200
    assert httpx.get(f"{triton.http_url}/v2/models/vllm_model/config", timeout=10).status_code == 200
    assert "nv_inference_request_success" in triton.metrics()


@pytest.fixture
def region():
    handle = shm.create_shared_memory_region(REGION, f"/{REGION}", 64)
    yield f"/{REGION}"
    shm.destroy_shared_memory_region(handle)


def test_http_shared_memory_needs_the_key(triton, region):
    url = f"{triton.http_url}/v2/systemsharedmemory/region/{REGION}"
    body = {"key": region, "offset": 0, "byte_size": 64}
    refused = httpx.post(f"{url}/register", json=body, timeout=10)
    assert refused.status_code != 200 and "restricted" in refused.text.lower(), refused.text
    wrong = httpx.post(f"{url}/register", json=body, headers={"triton-admin-key": "wrong"}, timeout=10)
    assert wrong.status_code != 200, wrong.text
    assert httpx.post(f"{url}/register", json=body, headers=triton.admin_headers, timeout=10).status_code == 200
    try:
        status = httpx.get(f"{url}/status", headers=triton.admin_headers, timeout=10)
        assert REGION in status.text
    finally:
        assert httpx.post(f"{url}/unregister", headers=triton.admin_headers, timeout=10).status_code == 200


def test_grpc_shared_memory_needs_the_key(triton, region):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="(?i)restricted"):
            client.register_system_shared_memory(REGION, region, 64)
        with pytest.raises(InferenceServerException, match="(?i)restricted"):  # the HTTP header name
            client.register_system_shared_memory(REGION, region, 64, headers=triton.admin_headers)
        client.register_system_shared_memory(REGION, region, 64, headers=triton.admin_grpc_headers)
        status = client.get_system_shared_memory_status(headers=triton.admin_grpc_headers, as_json=True)
        assert REGION in str(status)
        client.unregister_system_shared_memory(REGION, headers=triton.admin_grpc_headers)
    finally:
        client.close()


def test_model_repository_needs_the_key_and_loading_stays_off(triton):
    index = f"{triton.http_url}/v2/repository/index"
    refused = httpx.post(index, json={}, timeout=10)
    assert refused.status_code != 200 and "restricted" in refused.text.lower(), refused.text
    allowed = httpx.post(index, json={}, headers=triton.admin_headers, timeout=10)
    assert allowed.status_code == 200 and "vllm_model" in allowed.text
    # Even with the key, model control mode "none" loads and unloads nothing.
    unload = httpx.post(f"{triton.http_url}/v2/repository/models/vllm_model/unload", json={},
                        headers=triton.admin_headers, timeout=10)
    assert unload.status_code != 200, unload.text
    assert triton.model_ready()
