"""client.frontend.payloads: every hostile payload is a typed ValidationError, cheaply; good ones decode exactly."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.errors import ValidationError
from client.frontend import payloads
from client.frontend.payloads import (
    PayloadLimits,
    decode_prompt_embeds,
    decode_request_embeds,
    encode_prompt_embeds,
    payload_bytes,
)

HIDDEN = 8
LIMITS = PayloadLimits(hidden_size=HIDDEN, max_rows=64)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def saved(obj: object, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def rezip(raw: bytes, *, compression: int = zipfile.ZIP_STORED, edit=None) -> bytes:
    """Rewrite a torch.save archive entry by entry (optionally compressed or with one entry edited)."""
    source = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            target.writestr(info.filename, edit(info.filename, data) if edit else data)
    return out.getvalue()


def safetensors_raw(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# -- good payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("payload_format", ["torch", "safetensors"])
def test_round_trip(dtype: torch.dtype, payload_format: str) -> None:
    tensor = torch.randn(5, HIDDEN).to(dtype)
    decoded = decode_prompt_embeds(encode_prompt_embeds(tensor, payload_format), LIMITS,
                                   payload_format=payload_format)
    assert decoded.dtype == dtype
    assert torch.equal(decoded, tensor)


def test_batch_of_one_is_squeezed() -> None:
    tensor = torch.randn(1, 3, HIDDEN)
    assert decode_prompt_embeds(encode_prompt_embeds(tensor), LIMITS).shape == (3, HIDDEN)


def test_non_contiguous_view_decodes_dense() -> None:
    tensor = torch.randn(HIDDEN, 4).t()  # a transposed view: strided, not contiguous
    decoded = decode_prompt_embeds(b64(saved(tensor)), LIMITS)
    assert decoded.is_contiguous() and torch.equal(decoded, tensor)


def test_slice_of_a_larger_storage_decodes_to_the_slice() -> None:
    base = torch.randn(10, HIDDEN)
    decoded = decode_prompt_embeds(b64(saved(base[2:5])), LIMITS)  # torch.save keeps the whole storage
    assert torch.equal(decoded, base[2:5])


# -- bad payloads: (name, payload text, expected words in the message) -------------------------


def _bad_torch_payloads() -> list[tuple[str, str, str]]:
    good = saved(torch.randn(4, HIDDEN))
    return [
        ("sparse_coo", b64(saved(torch.eye(HIDDEN).to_sparse())), "dense"),
        ("sparse_csr", b64(saved(torch.eye(HIDDEN).to_sparse_csr())), "dense"),
        # 2 KB that declare 10^12 elements (stride 0); densifying would need 4 TB.
        ("shape_bomb", b64(saved(torch.ones(1, HIDDEN).expand(10**11, HIDDEN))), "elements"),
        # Within the element cap but amplifying: made dense, each would be larger than the bytes sent.
        ("stride_0_rows", b64(saved(torch.zeros(1, HIDDEN).expand(60, HIDDEN))), "zero stride"),
        ("stride_0_batch", b64(saved(torch.zeros(1, 1, HIDDEN).expand(1, 60, HIDDEN))), "zero stride"),
        ("overlapping_strides", b64(saved(torch.randn(HIDDEN + 9).as_strided((10, HIDDEN), (1, 1)))), "overlapping"),
        ("not_a_tensor_dict", b64(saved({"a": torch.ones(2, HIDDEN)})), "expected a tensor"),
        ("not_a_tensor_list", b64(saved([1, 2, 3])), "expected a tensor"),
        ("truncated", b64(good[: len(good) // 2]), "archive"),
        ("wrong_hidden_size", b64(saved(torch.randn(3, HIDDEN + 1))), "hidden size"),
        ("rank_1", b64(saved(torch.randn(HIDDEN))), "shape"),
        ("rank_3_batch_2", b64(saved(torch.randn(2, 3, HIDDEN))), "shape"),
        ("int_dtype", b64(saved(torch.ones(3, HIDDEN, dtype=torch.int32))), "dtype"),
        ("float64", b64(saved(torch.ones(3, HIDDEN, dtype=torch.float64))), "dtype"),
        ("complex", b64(saved(torch.ones(3, HIDDEN, dtype=torch.complex64))), "dtype"),
        ("nan", b64(saved(torch.full((3, HIDDEN), float("nan")))), "NaN"),
        ("inf", b64(saved(torch.full((3, HIDDEN), float("inf")))), "infinite"),
        ("zero_rows", b64(saved(torch.empty(0, HIDDEN))), "zero rows"),
        ("too_many_rows", b64(saved(torch.zeros(65, HIDDEN))), "elements"),
        ("empty_string", "", "empty"),
        ("not_base64", "!!not base64!!", "base64"),
        ("non_ascii", "é" * 8, "base64"),
        ("base64_of_garbage", b64(b"hello world, not a zip"), "zip"),
        ("legacy_format", b64(saved(torch.randn(2, HIDDEN), _use_new_zipfile_serialization=False)), "legacy"),
        ("deflated_zip", b64(rezip(good, compression=zipfile.ZIP_DEFLATED)), "uncompressed"),
        ("storage_size_lie", b64(rezip(good, edit=lambda name, data: data[:16] if "/data/" in name else data)),
         "could not be loaded"),
        ("pickle_global", b64(rezip(good, edit=lambda name, data: b"cos\nsystem\n(S'true'\ntR." if name.endswith(
            "data.pkl") else data)), "could not be loaded"),
    ]


@pytest.mark.parametrize("name,payload,words", _bad_torch_payloads(), ids=[p[0] for p in _bad_torch_payloads()])
def test_bad_torch_payloads_are_validation_errors(name: str, payload: str, words: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValidationError) as info:
        decode_prompt_embeds(payload, LIMITS)
    assert info.value.parameter == "prompt_embeds"
    assert words.lower() in info.value.message.lower(), info.value.message
    assert len(str(info.value)) < 200 and payload[:40] not in str(info.value) or not payload
    assert time.perf_counter() - start < 2.0  # bounded cost: nothing proportional to a declared shape


def test_request_rows_are_capped_before_anything_dense(monkeypatch) -> None:
    """Many parts, each within the per-payload cap, over the request's cap together: refused before densifying."""
    densified = []
    monkeypatch.setattr(payloads, "validate_embeddings", lambda t, **kw: densified.append(t) or t)
    parts = [encode_prompt_embeds(torch.randn(30, HIDDEN)) for _ in range(3)]
    with pytest.raises(ValidationError) as info:
        decode_request_embeds(parts, LIMITS, max_total_rows=64, request_parameter="messages")
    assert info.value.parameter == "messages" and "context of 64" in info.value.message
    assert densified == []
    assert len(decode_request_embeds(parts[:2], LIMITS, max_total_rows=64)) == 2


def test_request_decode_names_the_bad_part() -> None:
    parts = [encode_prompt_embeds(torch.randn(2, HIDDEN)), encode_prompt_embeds(torch.randn(2, HIDDEN + 1))]
    with pytest.raises(ValidationError) as info:
        decode_request_embeds(parts, LIMITS, max_total_rows=64, parameters=["p[0]", "p[1]"])
    assert info.value.parameter == "p[1]"


def test_payload_bytes_bound_the_dense_size() -> None:
    """What the byte budget reserves before decoding is at least what the decoded tensors hold."""
    tensors = [torch.randn(n, HIDDEN).to(dtype) for n, dtype in ((40, torch.float32), (3, torch.bfloat16))]
    encoded = [encode_prompt_embeds(t) for t in tensors]
    dense = sum(t.numel() * t.element_size() for t in decode_request_embeds(encoded, LIMITS, max_total_rows=64))
    assert dense <= payload_bytes(encoded)


def test_zip_declaring_more_than_it_holds() -> None:
    raw = bytearray(saved(torch.randn(2, HIDDEN)))
    # Patch the central directory's uncompressed size of every entry to 1 GB.
    offset = 0
    while (offset := raw.find(b"PK\x01\x02", offset)) != -1:
        raw[offset + 24 : offset + 28] = struct.pack("<I", 1 << 30)
        offset += 4
    with pytest.raises(ValidationError, match="uncompressed|more data"):
        decode_prompt_embeds(b64(bytes(raw)), LIMITS)


@pytest.mark.parametrize(
    "name,header,data,words",
    [
        ("two_tensors", {"a": {"dtype": "F32", "shape": [1, HIDDEN], "data_offsets": [0, 32]},
                         "b": {"dtype": "F32", "shape": [1, HIDDEN], "data_offsets": [32, 64]}},
         bytes(64), "exactly one"),
        ("int_dtype", {"a": {"dtype": "I32", "shape": [1, HIDDEN], "data_offsets": [0, 32]}}, bytes(32), "dtype"),
        ("shape_bomb", {"a": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 32]}},
         bytes(32), "elements"),
        ("offsets_lie", {"a": {"dtype": "F32", "shape": [4, HIDDEN], "data_offsets": [0, 128]}}, bytes(32), "offsets"),
        ("shape_not_list", {"a": {"dtype": "F32", "shape": "big", "data_offsets": [0, 32]}}, bytes(32), "shape"),
        ("nan", {"a": {"dtype": "F32", "shape": [1, HIDDEN], "data_offsets": [0, 32]}},
         struct.pack("<f", float("nan")) * HIDDEN, "NaN"),
        ("wrong_hidden", {"a": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}, bytes(32), "hidden size"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_bad_safetensors_payloads(name: str, header: dict, data: bytes, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode_prompt_embeds(b64(safetensors_raw(header, data)), LIMITS, payload_format="safetensors")
    assert words.lower() in info.value.message.lower(), info.value.message


@pytest.mark.parametrize("raw", [b"\x01", struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 4) + b"[1]x"],
                         ids=["too_short", "header_length_lie", "header_not_object"])
def test_malformed_safetensors_headers(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_prompt_embeds(b64(raw), LIMITS, payload_format="safetensors")


def test_pickle_can_be_refused() -> None:
    no_pickle = PayloadLimits(hidden_size=HIDDEN, max_rows=64, allow_pickle=False)
    tensor = torch.randn(2, HIDDEN)
    with pytest.raises(ValidationError, match="disabled"):
        decode_prompt_embeds(encode_prompt_embeds(tensor), no_pickle)
    assert torch.equal(decode_prompt_embeds(encode_prompt_embeds(tensor, "safetensors"), no_pickle,
                                            payload_format="safetensors"), tensor)


def test_unknown_format() -> None:
    with pytest.raises(ValidationError) as info:
        decode_prompt_embeds("AAAA", LIMITS, payload_format="numpy")
    assert info.value.parameter == "prompt_embeds_format"


# -- base64: pybase64 decodes exactly what the standard library does, never more ----------------


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=1, max_size=300))
def test_base64_decodes_as_the_standard_library(raw: bytes) -> None:
    encoded = base64.b64encode(raw)
    assert payloads.decode_base64(encoded) == base64.b64decode(encoded, validate=True) == raw
    assert payloads.decode_base64(encoded.decode()) == raw


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=64))
def test_base64_refuses_what_the_standard_library_refuses(text: str) -> None:
    try:
        base64.b64decode(text.encode(), validate=True)
    except ValueError:  # binascii.Error
        with pytest.raises(ValidationError, match="base64"):
            payloads.decode_base64(text)


# -- property: anything either decodes or is a ValidationError ---------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=512), st.text(max_size=256)),
       as_base64=st.booleans(), payload_format=st.sampled_from(["torch", "safetensors"]))
def test_any_input_decodes_or_raises_validation_error(data: bytes | str, as_base64: bool, payload_format: str) -> None:
    payload = b64(data if isinstance(data, bytes) else data.encode()) if as_base64 else data
    try:
        tensor = decode_prompt_embeds(payload, LIMITS, payload_format=payload_format)
    except ValidationError as exc:
        assert exc.parameter in ("prompt_embeds", "prompt_embeds_format")
        return
    assert tensor.dim() == 2 and tensor.shape[1] == HIDDEN


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000), flip=st.integers(min_value=0, max_value=2000),
       byte=st.integers(min_value=0, max_value=255))
@example(cut=0, flip=1148, byte=64)  # found in CI: a central-directory "zip version 6.4" (NotImplementedError)
def test_mutated_torch_archives_decode_or_raise(cut: int, flip: int, byte: int) -> None:
    raw = bytearray(saved(torch.randn(3, HIDDEN)))
    if flip < len(raw):
        raw[flip] = byte
    raw = raw[: max(1, len(raw) - cut)] if cut % 3 == 0 else raw
    try:
        decode_prompt_embeds(b64(bytes(raw)), LIMITS)
    except ValidationError:
        pass
