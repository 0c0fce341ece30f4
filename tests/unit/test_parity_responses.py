"""Choices and logprobs on the response side: per-choice responses, joined under backlog, final flag once."""

from __future__ import annotations

import dataclasses

import pytest
from vllm import SamplingParams
from vllm.logprobs import Logprob

from backend.prompt import EnginePrompt
from backend.responses import ResponseStream
from backend.stream import split_logprobs, to_chunk
from backend.types import Chunk, GenerationRequest
from tests.unit.fake_engine import FakeSink


def request(n: int = 1, logprobs: int | None = None, stream: bool = True, **flags) -> GenerationRequest:
    return GenerationRequest(prompt=EnginePrompt(token_ids=[1, 2, 3], echo_text="P "), sampling=SamplingParams(),
                             stream=stream, exclude_input_in_output=flags.pop("exclude_input_in_output", True),
                             n=n, logprobs=logprobs, **flags)


def chunk(index: int, token: int, *, finish: str | None = None, final: bool = False, lp: bool = False) -> Chunk:
    extra = ({"logprobs": [-0.1 * token], "top_logprobs_ids": [[token, 0]], "top_logprobs": [[-0.1 * token, -5.0]]}
             if lp else {})
    return Chunk(f"<{index}:{token}>", [token], final=final, finish_reason=finish, index=index, **extra)


def test_a_backlog_of_two_choices_goes_out_as_one_response_per_choice_with_its_logprobs():
    stream = ResponseStream(request(n=2, logprobs=2, return_finish_reason=True), FakeSink(), 0, 0)
    for c in [chunk(0, 1, lp=True), chunk(1, 2, lp=True), chunk(0, 3, lp=True, finish="length"),
              chunk(1, 4, lp=True, finish="stop", final=True)]:
        stream.push(c)
    responses, error, final = stream.take()
    assert error is None and final
    assert [(r.index, r.text, r.token_ids, r.finish_reason) for r in responses] == [
        (0, "<0:1><0:3>", [1, 3], "length"), (1, "<1:2><1:4>", [2, 4], "stop")]
    assert responses[0].logprobs == pytest.approx([-0.1, -0.3])
    assert responses[0].top_logprobs_ids == [[1, 0], [3, 0]] and len(responses[0].top_logprobs) == 2


def test_one_choice_has_no_index_and_logprobs_bring_the_token_ids():
    stream = ResponseStream(request(logprobs=0), FakeSink(), 0, 0)
    stream.push(chunk(0, 7, lp=True, finish="stop", final=True))
    (response,), _, _ = stream.take()
    assert response.index is None and response.token_ids == [7] and response.logprobs == pytest.approx([-0.7])


def test_the_request_end_without_output_is_only_a_final_flag():
    stream = ResponseStream(request(n=2), FakeSink(), 0, 0)
    stream.push(chunk(0, 1, finish="stop"))
    stream.push(chunk(1, 2, finish="stop"))
    assert len(stream.take()[0]) == 2
    stream.push(Chunk("", [], final=True))
    responses, error, final = stream.take()
    assert responses == [] and error is None and final


def test_sender_puts_the_final_flag_on_the_last_response_only():
    from backend.responses import ResponseSender

    sender = ResponseSender(threads=1, cancel_poll_interval_s=0.01).start()
    try:
        sink = FakeSink()
        stream = sender.open(request(n=3, stream=False, exclude_input_in_output=False), sink)
        for i in range(3):
            sender.push(stream, chunk(i, i, finish="stop", final=i == 2))
        assert sink.done.wait(5)
    finally:
        sender.close()
    assert [final for _, final in sink.responses] == [False, False, True]
    assert sorted(r.index for r, _ in sink.responses) == [0, 1, 2]
    assert all(r.text.startswith("P ") for r, _ in sink.responses)  # each choice echoes the prompt once


def test_split_logprobs_keeps_ranks_1_to_m_in_order_and_the_sampled_logprob():
    # The sampled token 9 is rank 3 (outside the top 2): it is in the dict but not in the top-m rows.
    positions = [{9: Logprob(-2.0, 3), 4: Logprob(-0.5, 1), 5: Logprob(-1.0, 2)},
                 {4: Logprob(-0.2, 1), 6: Logprob(-1.5, 2)}]  # sampled token 4 is rank 1
    assert split_logprobs([9, 4], positions, 2) == ([-2.0, -0.2], [[4, 5], [4, 6]], [[-0.5, -1.0], [-0.2, -1.5]])
    assert split_logprobs([9], positions[:1], 0) == ([-2.0], [[]], [[]])


@dataclasses.dataclass
class Completion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list | None


def test_to_chunk_carries_the_choice_index_and_its_logprobs():
    c = to_chunk(Completion(2, "x", [4], "stop", [{4: Logprob(-0.2, 1)}]), 1, final=True)
    assert (c.index, c.finish_reason, c.final, c.logprobs, c.top_logprobs_ids) == (2, "stop", True, [-0.2], [[4]])
    assert to_chunk(Completion(0, "x", [4], None, None), None, final=False).logprobs is None
