"""validate_embeddings / split_parts: every bad tensor is a ValidationError naming the input."""

from __future__ import annotations

import pytest
import torch

from backend.embeddings import all_finite, split_parts, validate_embeddings
from backend.errors import ValidationError

H = 128


def check(tensor, max_rows=100):
    return validate_embeddings(tensor, hidden_size=H, max_rows=max_rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_accepts_float_dtypes(dtype):
    out = check(torch.zeros(4, H, dtype=dtype))
    assert out.shape == (4, H) and out.dtype == dtype


def test_squeezes_a_batch_of_one():
    assert check(torch.zeros(1, 3, H)).shape == (3, H)


@pytest.mark.parametrize("tensor, fragment", [
    (torch.zeros(H), "expected shape"),
    (torch.zeros(2, 3, H), "expected shape"),
    (torch.zeros(3, H + 1), "hidden size 129"),
    (torch.zeros(0, H), "zero rows"),
    (torch.zeros(101, H), "exceed the limit"),
    (torch.zeros(3, H, dtype=torch.float64), "dtype"),
    (torch.zeros(3, H, dtype=torch.int32), "dtype"),
    (torch.zeros(3, H, dtype=torch.bool), "dtype"),
    (torch.zeros(3, H, dtype=torch.complex64), "dtype"),
    (torch.full((3, H), float("nan")), "NaN"),
    (torch.full((3, H), float("inf")), "NaN or infinite"),
    (torch.full((3, H), float("-inf")), "NaN or infinite"),
    (torch.zeros(3, H).to_sparse(), "dense"),
    (torch.zeros(3, H).to_sparse_csr(), "dense"),
], ids=["1d", "3d-batch", "hidden", "empty", "too-long", "fp64", "int", "bool", "complex", "nan", "inf",
        "-inf", "coo", "csr"])
def test_rejects(tensor, fragment):
    with pytest.raises(ValidationError) as info:
        check(tensor)
    assert info.value.parameter == "prompt_embeds" and fragment in info.value.message


def test_rejects_non_tensor():
    with pytest.raises(ValidationError, match="expected a tensor"):
        check([[0.0] * H])


@pytest.mark.parametrize("given, model", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                          (torch.float16, torch.bfloat16), (torch.float16, torch.float32),
                                          (torch.bfloat16, torch.bfloat16)], ids=str)
def test_rows_come_back_in_the_model_dtype_as_the_engine_casts_them(given, model):
    rows = (torch.randn(5, H) * 3).to(given)
    out = validate_embeddings(rows, hidden_size=H, max_rows=100, dtype=model)
    assert out.dtype == model and out.is_contiguous()
    assert torch.equal(out, rows.to(model))  # bit for bit what the engine's own cast gives


@pytest.mark.parametrize("value, model", [(1e5, torch.float16), (3.4e38, torch.bfloat16)], ids=str)
def test_finite_float32_beyond_the_model_dtype_is_refused(value, model):
    rows = torch.zeros(3, H)
    rows[1, 2] = value
    with pytest.raises(ValidationError) as info:
        validate_embeddings(rows, hidden_size=H, max_rows=100, parameter="prompt_embeds_x", dtype=model)
    name = str(model).removeprefix("torch.")
    assert info.value.parameter == "prompt_embeds_x" and f"{name} range" in info.value.message
    rows[1, 2] = float("nan")  # a value that is not finite in the payload keeps its own message
    with pytest.raises(ValidationError, match="NaN or infinite"):
        validate_embeddings(rows, hidden_size=H, max_rows=100, dtype=model)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_all_finite_agrees_with_isfinite_wherever_the_bad_value_sits(dtype, threads):
    """The extremes check must see one NaN or infinity anywhere, also in a multi-threaded reduction."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = torch.randn(300, 1000).to(dtype)
        assert all_finite(rows)
        flat = rows.view(-1)
        for position in (0, 1, 77_777, flat.numel() // 2, flat.numel() - 1):
            for bad in (float("nan"), float("inf"), float("-inf")):
                poisoned = flat.clone()
                poisoned[position] = bad
                assert not all_finite(poisoned.view(300, 1000)), (position, bad)
                half = poisoned.view(300, 1000)[:, 500:]  # a strided view: the bad value may be outside it
                assert all_finite(half) == bool(torch.isfinite(half).all()), (position, bad)
    finally:
        torch.set_num_threads(before)


def test_split_parts():
    parts = split_parts(torch.arange(5.0).repeat(H, 1).T.contiguous(), [2, 3], max_parts=4)
    assert [p[:, 0].tolist() for p in parts] == [[0.0, 1.0], [2.0, 3.0, 4.0]]


@pytest.mark.parametrize("lengths, fragment", [
    ([], "empty"), ([2, 2], "sum to 4"), ([5, 0], ">= 1"), ([1, -1, 5], ">= 1"), ([1] * 5, "limit"),
], ids=["empty", "short", "zero", "negative", "too-many"])
def test_split_rejects(lengths, fragment):
    with pytest.raises(ValidationError) as info:
        split_parts(torch.zeros(5, H), lengths, max_parts=4)
    assert info.value.parameter == "prompt_embeds_lengths" and fragment in info.value.message
