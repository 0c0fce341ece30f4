"""Issue 11 over Triton gRPC with raw tensors, against vLLM offline (LLM.generate) on the same engine arguments.

token-id prompts that do not round-trip through text, logprobs (values within 2e-3, identical top-k id
sets), n=3 with a seed, structured outputs (choice, json), bad regex/schema refused before the engine,
and the model facts. The offline engine runs in this process (once per module): keep cases few and short.
"""

from __future__ import annotations

import os

import pytest

from backend.config import load_engine_args
from client.triton_errors import parse_error
from client.triton_sync import InferenceServerException, generate, model_info
from tests.servers import REPO_ROOT

ENGINE_ARGS = REPO_ROOT / "model_repository" / "vllm_model" / "1" / "model.json"
# Special tokens mid-prompt and lone UTF-8 continuation bytes: decoding and re-tokenizing changes them.
ODD_IDS = [256, 72, 200, 261, 101, 258, 150, 33, 257, 180, 111]
LOGPROB_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def offline():
    """vLLM's own LLM with model.json's engine arguments, in-process (no engine subprocess to spawn)."""
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    llm = LLM(**load_engine_args(ENGINE_ARGS))
    yield llm
    del llm
    if previous is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


def _offline(llm, ids: list[int], **sampling):
    from vllm import SamplingParams

    (output,) = llm.generate([{"prompt_token_ids": ids}], SamplingParams(**sampling), use_tqdm=False)
    return sorted(output.outputs, key=lambda o: o.index)


def test_token_id_prompts_that_do_not_round_trip_give_vllms_tokens(triton, tiny, offline):
    assert tiny.ids(tiny.tokenizer.decode(ODD_IDS)) != ODD_IDS  # the case issue 11 names
    ours = generate(triton.grpc_url, input_ids=ODD_IDS, exclude_input_in_output=True,
                    sampling={"temperature": 0, "max_tokens": 12})
    (theirs,) = _offline(offline, ODD_IDS, temperature=0, max_tokens=12)
    assert ours.token_ids == list(theirs.token_ids) and len(ours.token_ids) > 0
    assert ours.text == theirs.text and ours.num_input_tokens == len(ODD_IDS)


def test_streamed_logprobs_equal_vllms(triton, offline):
    sampling = {"temperature": 0, "max_tokens": 8, "logprobs": 4}
    ours = generate(triton.grpc_url, input_ids=ODD_IDS, stream=True, sampling=sampling)
    (theirs,) = _offline(offline, ODD_IDS, **sampling)
    assert ours.token_ids == list(theirs.token_ids) and ours.responses > 1
    assert len(ours.logprobs) == len(ours.top_logprobs_ids) == len(theirs.logprobs) == 8
    for token, ours_lp, ours_top, ours_top_lp, position in zip(
            ours.token_ids, ours.logprobs, ours.top_logprobs_ids, ours.top_logprobs, theirs.logprobs):
        assert ours_lp == pytest.approx(position[token].logprob, abs=LOGPROB_TOLERANCE)
        top = {tid: p.logprob for tid, p in position.items() if p.rank <= 4}
        assert set(ours_top) == set(top) and len(ours_top) == 4
        for tid, lp in zip(ours_top, ours_top_lp):
            assert lp == pytest.approx(top[tid], abs=LOGPROB_TOLERANCE)


def test_n_3_with_a_seed_gives_vllms_three_choices(triton, offline):
    sampling = {"n": 3, "seed": 7, "temperature": 1.0, "max_tokens": 8}
    ours = generate(triton.grpc_url, input_ids=ODD_IDS, stream=True, sampling=sampling)
    theirs = _offline(offline, ODD_IDS, **sampling)
    assert sorted(ours.choices) == [0, 1, 2]
    assert [ours.choices[i].token_ids for i in range(3)] == [list(o.token_ids) for o in theirs]
    assert len({tuple(o.token_ids) for o in theirs}) > 1  # the seeds differ per choice: a real test
    assert all(ours.choices[i].finish_reason == theirs[i].finish_reason for i in range(3))
    whole = generate(triton.grpc_url, input_ids=ODD_IDS, stream=False, exclude_input_in_output=True,
                     sampling=sampling)  # one response per choice, the final flag after the last
    assert [whole.choices[i].text for i in range(3)] == [o.text for o in theirs] and whole.responses == 3


@pytest.mark.parametrize("structured", [
    {"choice": ["yes", "no", "maybe"]},
    {"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}},
], ids=["choice", "json"])
def test_structured_outputs_equal_vllms(triton, tiny, offline, structured):
    from vllm.sampling_params import StructuredOutputsParams

    ours = generate(triton.grpc_url, input_ids=ODD_IDS, exclude_input_in_output=True,
                    sampling={"temperature": 0, "max_tokens": 24, "structured_outputs": structured})
    (theirs,) = _offline(offline, ODD_IDS, temperature=0, max_tokens=24,
                         structured_outputs=StructuredOutputsParams(**structured))
    assert ours.text == theirs.text and ours.token_ids == list(theirs.token_ids)
    if "choice" in structured:  # (the text also carries vLLM's detokenizer's tail of this odd prompt)
        assert tiny.tokenizer.decode(ours.token_ids, skip_special_tokens=True) in structured["choice"]


@pytest.mark.parametrize("structured", [{"regex": "("}, {"json": {"type": "nope"}}], ids=["regex", "schema"])
def test_a_bad_structured_output_is_invalid_arg_and_the_engine_keeps_serving(triton, structured):
    with pytest.raises(InferenceServerException) as info:
        generate(triton.grpc_url, input_ids=ODD_IDS, sampling={"max_tokens": 4, "structured_outputs": structured})
    error = parse_error(info.value.message())
    assert (error.kind, error.parameter) == ("INVALID_ARG", "sampling_parameters")
    assert error.message.startswith("sampling_parameters: structured_outputs")
    after = generate(triton.grpc_url, input_ids=ODD_IDS, sampling={"temperature": 0, "max_tokens": 4})
    assert len(after.token_ids) == 4


def test_model_facts_are_published(triton, tiny):
    facts = model_info(triton.grpc_url)
    assert facts["hidden_size"] == tiny.hidden_size and facts["vocab_size"] == len(tiny.tokenizer)
    assert facts["max_model_len"] == load_engine_args(ENGINE_ARGS)["max_model_len"]
    assert facts["dtype"] == "float32" and facts["placeholder"] == "<|prompt_embeds|>" and facts["max_n"] == 16


def _assert_prompt_logprobs_equal(ours, theirs_positions, ids: list[int], m: int) -> None:
    """Triton's prompt outputs against vLLM's PromptLogprobs ([None, {id: Logprob}, ...])."""
    import math

    assert ours is not None and ours.token_ids == ids and len(theirs_positions) == len(ids)
    assert math.isnan(ours.logprobs[0]) and ours.ranks[0] == 0 and ours.top_ids[0] == [-1] * m
    assert theirs_positions[0] is None
    for p in range(1, len(ids)):
        position = theirs_positions[p]
        assert ours.logprobs[p] == pytest.approx(position[ids[p]].logprob, abs=LOGPROB_TOLERANCE)
        assert ours.ranks[p] == position[ids[p]].rank
        top = {tid: lp.logprob for tid, lp in position.items() if lp.rank <= m}
        assert set(ours.top_ids[p]) == set(top) and len(ours.top_ids[p]) == m
        for tid, lp in zip(ours.top_ids[p], ours.top_logprobs[p]):
            assert lp == pytest.approx(top[tid], abs=LOGPROB_TOLERANCE)


def test_prompt_logprobs_equal_vllms(triton, offline):
    """sampling prompt_logprobs=3 on the odd token-id prompt: vLLM's prompt logprobs, ranks and top 3."""
    from vllm import SamplingParams

    ours = generate(triton.grpc_url, input_ids=ODD_IDS, exclude_input_in_output=True,
                    sampling={"temperature": 0, "max_tokens": 4, "prompt_logprobs": 3})
    (theirs,) = offline.generate([{"prompt_token_ids": ODD_IDS}],
                                 SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=3), use_tqdm=False)
    assert ours.token_ids == list(theirs.outputs[0].token_ids)
    _assert_prompt_logprobs_equal(ours.prompt, theirs.prompt_logprobs, ODD_IDS, 3)


def test_streamed_prompt_logprobs_reach_every_choice(triton, offline):
    """Streamed with n=2: each choice's first response carries the prompt logprobs (the same ones)."""
    from vllm import SamplingParams

    sampling = {"n": 2, "seed": 3, "temperature": 1.0, "max_tokens": 4, "prompt_logprobs": 1}
    ours = generate(triton.grpc_url, input_ids=ODD_IDS, stream=True, sampling=sampling)
    (theirs,) = offline.generate([{"prompt_token_ids": ODD_IDS}], SamplingParams(**sampling), use_tqdm=False)
    assert sorted(ours.choices) == [0, 1] and ours.responses > 2
    for index in (0, 1):
        _assert_prompt_logprobs_equal(ours.choices[index].prompt, theirs.prompt_logprobs, ODD_IDS, 1)


def test_prompt_logprobs_are_refused_for_embeddings(triton, tiny):
    with pytest.raises(InferenceServerException) as info:
        generate(triton.grpc_url, embeds=tiny.embed(tiny.ids("Hi", special=True)),
                 sampling={"max_tokens": 2, "prompt_logprobs": 1})
    error = parse_error(info.value.message())
    assert (error.kind, error.parameter) == ("INVALID_ARG", "sampling_parameters")
    assert error.message == "sampling_parameters: prompt_logprobs is not compatible with prompt embeds"
