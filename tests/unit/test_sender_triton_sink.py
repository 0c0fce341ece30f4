"""TritonSink against a stand-in pb_utils: lean tensors, one final flag, no is_cancelled after final."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from backend.errors import OverloadedError
from backend.types import Response


class FakeResponseSender:
    def __init__(self) -> None:
        self.sent: list[tuple[object, int]] = []
        self.cancel_calls = 0

    def send(self, response, flags=0) -> None:
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        self.cancel_calls += 1
        return False


@pytest.fixture
def triton_io(monkeypatch):
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    pb.Tensor = lambda name, array: (name, array)
    pb.InferenceResponse = lambda output_tensors=None, error=None: {"tensors": output_tensors, "error": error}
    pb.TritonError = type("TritonError", (), {"__init__": lambda self, msg, code: setattr(self, "msg", msg),
                                              "UNAVAILABLE": 14, "INVALID_ARG": 3, "CANCELLED": 1, "INTERNAL": 13})
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    sys.modules.pop("backend.triton_io", None)
    import backend.triton_io as module

    yield module
    sys.modules.pop("backend.triton_io", None)


def make_sink(triton_io):
    sender = FakeResponseSender()
    request = types.SimpleNamespace(get_response_sender=lambda: sender)
    return triton_io.TritonSink(request), sender


def test_only_the_outputs_a_response_carries_become_tensors(triton_io):
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="hi"), final=False)
    sink.send(Response(text="!", token_ids=[5], num_output_tokens=1, finish_reason="stop", num_input_tokens=3),
              final=True)
    first, last = (r["tensors"] for r, _ in sender.sent)
    assert [name for name, _ in first] == ["text_output"]
    assert [name for name, _ in last] == ["text_output", "finish_reason", "num_input_tokens", "num_output_tokens",
                                          "output_token_ids"]
    assert dict(last)["output_token_ids"].dtype == np.int64
    assert [flags for _, flags in sender.sent] == [0, 1]


def test_nothing_is_sent_or_asked_after_the_final_response(triton_io):
    """Triton frees the response factory at the final flag: is_cancelled() then would segfault."""
    sink, sender = make_sink(triton_io)
    assert sink.is_cancelled() is False and sender.cancel_calls == 1
    sink.send_error(OverloadedError("busy"))
    sink.send(Response(text="late"), final=True)
    assert sink.is_cancelled() is False
    assert sender.cancel_calls == 1 and len(sender.sent) == 1
    response, flags = sender.sent[0]
    assert flags == 1 and response["error"].msg == "[UNAVAILABLE] busy"


def test_choice_index_and_logprobs_become_typed_tensors(triton_io):
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="ab", token_ids=[7, 8], index=2, logprobs=[-0.5, -1.0],
                       top_logprobs_ids=[[7, 9], [3, 8]], top_logprobs=[[-0.5, -2.0], [-0.2, -1.0]]), final=True)
    tensors = dict(sender.sent[0][0]["tensors"])
    assert tensors["index"].dtype == np.uint32 and tensors["index"].tolist() == [2]
    assert tensors["output_logprobs"].dtype == np.float32 and tensors["output_logprobs"].shape == (2,)
    assert tensors["top_logprobs_ids"].dtype == np.int64 and tensors["top_logprobs_ids"].tolist() == [[7, 9], [3, 8]]
    assert tensors["top_logprobs"].shape == (2, 2)


def test_zero_alternatives_give_k_by_0_tensors(triton_io):
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="a", token_ids=[7], logprobs=[-0.5], top_logprobs_ids=[[]], top_logprobs=[[]]),
              final=True)
    tensors = dict(sender.sent[0][0]["tensors"])
    assert tensors["top_logprobs_ids"].shape == (1, 0) and tensors["top_logprobs"].shape == (1, 0)


def test_model_info_is_the_only_tensor_of_its_response(triton_io):
    sink, sender = make_sink(triton_io)
    sink.send(Response(text="", model_info='{"hidden_size": 8}'), final=True)
    assert [name for name, _ in sender.sent[0][0]["tensors"]] == ["model_info"]
