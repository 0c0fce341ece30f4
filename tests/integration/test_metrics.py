"""Triton's metrics port shows the model's custom metrics, and they count what a request did."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from client.triton_sync import generate
from tests.integration.streams import OpenStream, wait_for
from tests.servers import TritonServer, engine_cores, make_repository

MAX_TOKENS = 12
FAMILIES = (
    "vllm:prompt_tokens_total", "vllm:prompt_embeds_tokens_total", "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds", "vllm:request_outcome_total",
)


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, labels): value} for the vllm: families."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("vllm:"):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    """The sample summed over the labels not given (e.g. over model instances)."""
    wanted = {"model": "vllm_model", **labels}.items()
    return sum(value for (sample, have), value in samples.items()
               if sample == name and wanted <= have and set(dict(have)) - {"instance"} == set(dict(wanted)))


def test_custom_metrics_count_a_mixed_request(triton, tiny):
    before = _samples(triton.metrics())
    rows = tiny.embed(tiny.ids("an embedded part"))
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe:"}, {"type": "prompt_embeds"}]}]
    result = generate(triton.grpc_url, messages=messages, embeds=rows, lengths=[len(rows)], stream=True,
                      sampling={"temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True})
    assert result.finish_reason == "length"
    expected = {
        ("vllm:prompt_tokens_total", ()): result.num_input_tokens,
        ("vllm:prompt_embeds_tokens_total", ()): len(rows),
        ("vllm:generation_tokens_total", ()): MAX_TOKENS,
        ("vllm:request_outcome_total", (("outcome", "success"),)): 1,
        ("vllm:time_to_first_token_seconds_count", ()): 1,
        # One observation per request (its mean gap), not one per token: each is a round trip to Triton.
        ("vllm:time_per_output_token_seconds_count", ()): 1,
    }
    # The model records a request after sending its final response: allow it a moment.
    deadline = time.monotonic() + 15
    while True:
        after = _samples(triton.metrics())
        deltas = {key: _value(after, key[0], **dict(key[1])) - _value(before, key[0], **dict(key[1]))
                  for key in expected}
        if deltas == {k: float(v) for k, v in expected.items()} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert deltas == {k: float(v) for k, v in expected.items()}
    families = {name for name, _ in after}
    for family in FAMILIES:
        assert any(name.startswith(family) for name in families), family
    assert _value(after, "vllm:time_to_first_token_seconds_sum") > _value(before, "vllm:time_to_first_token_seconds_sum")


def test_each_model_instance_reports_its_own_gauges(tmp_path):
    """Two instances (two stubs, two engines): the load gauges carry an `instance` label, so their
    sum is the model's load (without it, one instance's gauge overwrote the other's: 2 of 4 seen)."""
    repo = make_repository(tmp_path / "repo", parameters={"engine_stall_timeout_s": "0"})
    config = repo / "vllm_model" / "config.pbtxt"
    config.write_text(config.read_text().replace("count: 1, kind: KIND_MODEL", "count: 2, kind: KIND_MODEL"))
    server = TritonServer(repo, tmp_path / "tritonserver.log")
    # Both engines paused (SIGSTOP) before the requests come: they stay active without running.
    # Four requests generating flat out on this 2-core box left Triton's metrics port answering
    # seconds to minutes late, and four fast streams made tritonserver 2.51 reset gRPC
    # connections (README, Known issues); paused engines do neither.
    cores = engine_cores(server)
    assert len(cores) == 2, cores
    streams = []
    try:
        for core in cores:
            core.suspend()
        streams = [OpenStream(server.grpc_url, text=f"busy {i}", sampling={"max_tokens": 8}) for i in range(4)]

        def active() -> tuple[float, set[str]]:
            samples = _samples(server.metrics())
            instances = {dict(labels)["instance"] for name, labels in samples
                         if name == "vllm:num_requests" and "instance" in dict(labels)}
            return _value(samples, "vllm:num_requests", state="active"), instances

        wait_for(lambda: active()[0] == 4, 30, "the active gauges of both instances to add up to 4")
        assert len(active()[1]) == 2, active()
        for core in cores:
            core.resume()
        for stream in streams:  # the paused requests complete once their engine runs again
            assert stream.final.wait(60) and stream.error is None, stream.error
        wait_for(lambda: active()[0] == 0, 30, "the active gauges to return to 0")
    finally:
        for core in cores:
            if core.is_running():
                core.resume()
        for stream in streams:
            stream.close()
        server.stop()
