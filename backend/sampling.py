"""Client sampling parameters: one table of every field a request may set, and the strict parse.

vLLM's `SamplingParams` takes almost any Python value; the engine core process then decodes the
request with msgspec, which wants exact types. A value of the wrong type (`max_tokens: 5.0`,
`ignore_eos: "1"`) used to pass here and kill the engine core's input thread (the model wedged); an
integer that does not fit MessagePack's 64 bits (`seed: 2**70`) failed after vLLM had registered
the request (it leaked). So every value is read here with its exact type and range, and only the
result goes to vLLM. vllm_backend clients write numbers as strings (`{"temperature": "0.1"}`):
those are parsed strictly too.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from backend.errors import ValidationError
from backend.interface import MAX_N, STRUCTURED_OUTPUT_KINDS
from backend.prompt import check_text

if TYPE_CHECKING:
    from vllm import SamplingParams

PARAMETER = "sampling_parameters"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Bounds of the values themselves. vLLM 0.32 refuses a temperature above 2 (as OpenAI does);
# it sets no upper bound on repetition_penalty, whose useful values lie near 1.
MAX_TEMPERATURE = 2.0
MAX_REPETITION_PENALTY = 10.0
# vLLM's OpenAI server clamps logit_bias values to this range; so do we.
LOGIT_BIAS_LIMIT = 100.0
# Caps on lists: far above what a client needs, low enough that the per-token cost is bounded
# (vLLM checks every stop string against the new text of every step, for every request in the
# batch). OpenAI allows 4 stop sequences; vLLM allows 128 bad-word token sequences after
# tokenization (VLLM_MAX_NUM_BAD_WORDS), and a bad word can give two (with and without a space).
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_BAD_WORDS = 64
MAX_BAD_WORD_CHARS = 256
MAX_LOGIT_BIAS_ENTRIES = 1024
# A number written as a string: longer than any int64 or float literal a client would write.
MAX_NUMBER_CHARS = 32
# vLLM's default max_logprobs; the engine's configured value bounds `logprobs` where it is known.
DEFAULT_MAX_LOGPROBS = 20
# Structured outputs: a regex, grammar or JSON schema text, and the choices. vLLM compiles them on
# the request path (and bounds JSON nesting itself); these caps bound the text it gets.
MAX_STRUCTURED_CHARS = 64 * 1024
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024

_INT_TEXT = re.compile(r"[+-]?[0-9]{1,20}")  # ASCII digits only: int() would also take "٣" and "1_0"
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


@dataclasses.dataclass(frozen=True)
class Field:
    """How one field is read: its kind, its range (inclusive unless low_open) and list caps."""

    kind: Literal["bool", "int", "float", "strings", "token_ids", "logit_bias", "structured"]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    also: tuple[int, ...] = ()  # values allowed outside the range (top_k's "disabled")
    high_is_vocab: bool = False  # the range ends at the vocabulary size (exclusive for ids)
    high_is_max_logprobs: bool = False  # the range ends at the engine's max_logprobs
    max_items: int = 0
    max_chars: int = 0
    single_string: bool = False  # `stop` may be one string instead of a list


FIELDS: dict[str, Field] = {
    "temperature": Field("float", 0.0, MAX_TEMPERATURE),
    "top_p": Field("float", 0.0, 1.0, low_open=True),
    "top_k": Field("int", 1, None, also=(-1, 0), high_is_vocab=True),
    "min_p": Field("float", 0.0, 1.0),
    "seed": Field("int", INT64_MIN, INT64_MAX),
    "max_tokens": Field("int", 1, INT64_MAX),  # and within the context (checked with the prompt)
    "min_tokens": Field("int", 0, INT64_MAX),  # and at most max_tokens
    "stop": Field("strings", max_items=MAX_STOP_STRINGS, max_chars=MAX_STOP_STRING_CHARS, single_string=True),
    "stop_token_ids": Field("token_ids", max_items=MAX_STOP_TOKEN_IDS),
    "ignore_eos": Field("bool"),
    "include_stop_str_in_output": Field("bool"),
    "skip_special_tokens": Field("bool"),
    "spaces_between_special_tokens": Field("bool"),
    "presence_penalty": Field("float", -2.0, 2.0),
    "frequency_penalty": Field("float", -2.0, 2.0),
    "repetition_penalty": Field("float", 0.0, MAX_REPETITION_PENALTY, low_open=True),
    "bad_words": Field("strings", max_items=MAX_BAD_WORDS, max_chars=MAX_BAD_WORD_CHARS),
    "logit_bias": Field("logit_bias", -LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT, max_items=MAX_LOGIT_BIAS_ENTRIES),
    "n": Field("int", 1, MAX_N),
    "logprobs": Field("int", 0, DEFAULT_MAX_LOGPROBS, high_is_max_logprobs=True),
    # Logprobs of the prompt's own tokens and the top m per position (vLLM's prompt_logprobs);
    # refused for prompts with embeddings (backend.request), as vLLM's server refuses them.
    "prompt_logprobs": Field("int", 0, DEFAULT_MAX_LOGPROBS, high_is_max_logprobs=True),
    "structured_outputs": Field("structured", max_items=MAX_CHOICES, max_chars=MAX_STRUCTURED_CHARS),
}
# Fields whose defaults a model's generation_config.json may set (vLLM's get_diff_sampling_param()).
DEFAULTABLE = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
               "min_p", "max_tokens")
# vLLM's default when max_tokens is absent (a unit test holds it to SamplingParams()). vLLM is imported
# only to build the result, so the frontend can read this table without loading the engine's package.
DEFAULT_MAX_TOKENS = 16


def _fail(key: str, message: str) -> ValidationError:
    return ValidationError(PARAMETER, f"{key} {message}")


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a float", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def read_bool(key: str, value: Any) -> bool:
    """true/false, or the strings "true"/"false" (vllm_backend clients); never a number or "1"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _fail(key, f"must be true or false, not {_type_name(value)}")


def read_int(key: str, value: Any) -> int:
    """A JSON integer or an integer literal in a string; a float (even 5.0) or a bool is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail(key, f"must be an integer, not {_type_name(value)}")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS or not _INT_TEXT.fullmatch(value):
            raise _fail(key, "must be an integer (a string must hold only digits)")
        value = int(value)
    return value


def read_float(key: str, value: Any) -> float:
    """A finite JSON number or a finite decimal in a string; a bool, NaN or infinity is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(key, f"must be a number, not {_type_name(value)}")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS or not _FLOAT_TEXT.fullmatch(value):
            raise _fail(key, "must be a number (a string must hold a decimal number)")
        value = float(value)
    elif isinstance(value, int):
        if not -1e308 < value < 1e308:  # float() of a larger int raises OverflowError
            raise _fail(key, "must be a finite number")
        value = float(value)
    if not math.isfinite(value):
        raise _fail(key, "must be a finite number")
    return value


def _check_range(key: str, field: Field, value: float, vocab_size: int,
                 max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> None:
    if value in field.also:
        return
    high = vocab_size if field.high_is_vocab else max_logprobs if field.high_is_max_logprobs else field.high
    low_ok = field.low is None or (value > field.low if field.low_open else value >= field.low)
    if low_ok and (high is None or value <= high):
        return
    if field.high_is_max_logprobs and value == -1:
        # vLLM reads -1 as "the whole vocabulary": a vocabulary-sized row per token, refused here.
        raise _fail(key, f"must be in [0, {max_logprobs}] (-1, the whole vocabulary, is not supported)")
    also = "".join(f"{v} or " for v in field.also)
    low = "-" if field.low is None else f"{'(' if field.low_open else '['}{_bound(field.low)}"
    raise _fail(key, f"must be {also}in {low}, {_bound(high)}]")


def _bound(value: float | None) -> str:
    if value is None:
        return "inf"
    if value == INT64_MAX:
        return "2^63-1"
    if value == INT64_MIN:
        return "-2^63"
    return f"{value:g}"


def _read_strings(key: str, field: Field, value: Any) -> list[str]:
    if field.single_string and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _fail(key, f"must be a list of strings, not {_type_name(value)}")
    if len(value) > field.max_items:
        raise _fail(key, f"has {len(value)} entries, over the limit of {field.max_items}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(key, f"must be a list of strings; entry {i} is {_type_name(item)}")
        # vLLM refuses empty strings; a blank bad word is stripped to nothing and refused late.
        if not item or (key == "bad_words" and not item.strip()):
            raise _fail(key, f"entry {i} is empty or blank")
        if len(item) > field.max_chars:
            raise _fail(key, f"entry {i} has {len(item)} characters, over the limit of {field.max_chars}")
        check_text(PARAMETER, item, f"{key}[{i}]")
    return value


def _read_token_id(key: str, value: Any, vocab_size: int) -> int:
    token_id = read_int(key, value)
    if not 0 <= token_id < vocab_size:
        raise _fail(key, f"holds a token id outside the vocabulary [0, {vocab_size})")
    return token_id


def _read_token_ids(key: str, field: Field, value: Any, vocab_size: int) -> list[int]:
    if not isinstance(value, list):
        raise _fail(key, f"must be a list of token ids, not {_type_name(value)}")
    if len(value) > field.max_items:
        raise _fail(key, f"has {len(value)} entries, over the limit of {field.max_items}")
    return [_read_token_id(key, item, vocab_size) for item in value]


def _read_logit_bias(key: str, field: Field, value: Any, vocab_size: int) -> dict[int, float]:
    """{token id (a JSON key, so a string): bias}; biases clamped to ±100 as vLLM's OpenAI server."""
    if not isinstance(value, dict):
        raise _fail(key, f"must be an object of token id -> bias, not {_type_name(value)}")
    if len(value) > field.max_items:
        raise _fail(key, f"has {len(value)} entries, over the limit of {field.max_items}")
    biases = {}
    for token, bias in value.items():
        number = read_float(key, bias)
        biases[_read_token_id(key, token, vocab_size)] = min(field.high, max(field.low, number))
    return biases


def _read_structured(key: str, field: Field, value: Any) -> dict[str, Any]:
    """{"json" | "json_object" | "regex" | "choice" | "grammar": value}, exactly one, typed and capped.

    Whether the regex, grammar or schema compiles is vLLM's own check (see parse_sampling_params).
    """
    if not isinstance(value, dict):
        raise _fail(key, f"must be an object, not {_type_name(value)}")
    kinds = [k for k in value if k in STRUCTURED_OUTPUT_KINDS]
    unknown = sorted(str(k)[:40] for k in value if k not in STRUCTURED_OUTPUT_KINDS)
    if unknown:
        raise _fail(key, f"has unknown fields {unknown[:5]}; give one of {list(STRUCTURED_OUTPUT_KINDS)}")
    if len(kinds) != 1:
        raise _fail(key, f"must have exactly one of {list(STRUCTURED_OUTPUT_KINDS)}")
    kind, spec = kinds[0], value[kinds[0]]
    where = f"{key}.{kind}"
    if kind == "json_object":
        if spec is not True:
            raise _fail(where, "must be true")
    elif kind == "choice":
        if not isinstance(spec, list) or not spec:
            raise _fail(where, "must be a non-empty list of strings")
        if len(spec) > field.max_items:
            raise _fail(where, f"has {len(spec)} entries, over the limit of {field.max_items}")
        for i, item in enumerate(spec):
            if not isinstance(item, str):
                raise _fail(where, f"must be a list of strings; entry {i} is {_type_name(item)}")
            if len(item) > MAX_CHOICE_CHARS:
                raise _fail(where, f"entry {i} has {len(item)} characters, over the limit of {MAX_CHOICE_CHARS}")
            check_text(PARAMETER, item, f"{where}[{i}]")
    elif kind == "json" and isinstance(spec, dict):
        import json

        try:  # its size as text, and it must encode (no lone surrogates)
            size = len(json.dumps(spec, ensure_ascii=False).encode("utf-8"))
        except (UnicodeEncodeError, RecursionError, ValueError):
            raise _fail(where, "is not a JSON schema this server can encode") from None
        if size > field.max_chars:
            raise _fail(where, f"is {size} bytes, over the limit of {field.max_chars}")
    else:  # json as text, regex, grammar
        if not isinstance(spec, str):
            raise _fail(where, f"must be a string{' or an object' if kind == 'json' else ''}, not {_type_name(spec)}")
        if len(spec) > field.max_chars:
            raise _fail(where, f"has {len(spec)} characters, over the limit of {field.max_chars}")
        if kind != "regex" and not spec.strip():
            raise _fail(where, "is empty")
        if "\x00" in spec:
            raise _fail(where, "must not contain a NUL character")
        check_text(PARAMETER, spec, where)
    return {kind: spec}


_SCALAR_READERS: dict[str, Callable[[str, Any], Any]] = {"bool": read_bool, "int": read_int, "float": read_float}


def read_field(key: str, value: Any, vocab_size: int, max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> Any:
    """One field's value, typed and in range; raises ValidationError naming the field."""
    field = FIELDS[key]
    if field.kind in _SCALAR_READERS:
        number = _SCALAR_READERS[field.kind](key, value)
        if field.kind != "bool":
            _check_range(key, field, number, vocab_size, max_logprobs)
        return number
    if field.kind == "structured":
        return _read_structured(key, field, value)
    if field.kind == "strings":
        return _read_strings(key, field, value)
    if field.kind == "token_ids":
        return _read_token_ids(key, field, value, vocab_size)
    return _read_logit_bias(key, field, value, vocab_size)


def check_sampling_defaults(defaults: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The model's generation_config defaults, typed and in range as a client's values (at load)."""
    unknown = sorted(set(defaults) - set(DEFAULTABLE))
    if unknown:
        raise ValidationError("generation_config", f"unsupported default sampling fields {unknown}")
    return {key: read_field(key, value, vocab_size) for key, value in defaults.items() if value is not None}


def parse_sampling_params(raw: Any, *, vocab_size: int, prompt_tokens: int, max_model_len: int,
                          prompt_input: str, max_logprobs: int = DEFAULT_MAX_LOGPROBS,
                          defaults: Mapping[str, Any] | None = None,
                          verify: Callable[[SamplingParams], None] | None = None) -> SamplingParams:
    """The `sampling_parameters` JSON object -> SamplingParams whose every value the engine accepts.

    `null` means "not given" (the model's default, else vLLM's), except for max_tokens, where it means
    "up to the context" (as vLLM's chat endpoint; capped by the model's default max_tokens if it has
    one). The prompt plus max_tokens must fit the context. `defaults` (checked by
    check_sampling_defaults) fill unset fields as vLLM's OpenAI server fills them. `verify` is vLLM's
    own SamplingParams check with the engine's configs; it runs when structured outputs are asked,
    so a bad regex, grammar or schema is refused here, never in the engine.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValidationError(PARAMETER, "must be a JSON object")
    unknown = sorted(str(key)[:40] for key in set(raw) - set(FIELDS))
    if unknown:
        raise ValidationError(PARAMETER, f"unknown or unsupported fields {unknown[:5]}")
    defaults = defaults or {}
    params = {key: read_field(key, value, vocab_size, max_logprobs) for key, value in raw.items() if value is not None}
    for key, value in defaults.items():
        if key != "max_tokens":
            params.setdefault(key, value)

    room = max_model_len - prompt_tokens
    if room < 1:
        raise ValidationError(
            prompt_input, f"prompt of {prompt_tokens} tokens leaves no room in the context of {max_model_len}")
    if "max_tokens" in raw and raw["max_tokens"] is None:
        # As vLLM's get_max_tokens: the room left, or the model's default if smaller.
        params["max_tokens"] = min(room, defaults["max_tokens"]) if "max_tokens" in defaults else None
    max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if "max_tokens" in raw and max_tokens is not None and max_tokens > room:
        raise ValidationError(
            prompt_input,
            f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of {max_model_len}",
        )
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    limit = room if max_tokens is None else max_tokens
    if params.get("min_tokens", 0) > limit:
        raise _fail("min_tokens", f"must be at most max_tokens ({limit})")
    n = params.get("n", 1)
    if n > 1 and params.get("seed") is not None and params["seed"] > INT64_MAX - (n - 1):
        # vLLM gives choice i the seed seed + i, which must still fit 64 bits on its way to the engine.
        raise _fail("seed", f"must be at most 2^63-{n} with n={n}")
    structured = params.pop("structured_outputs", None)
    try:
        if structured is not None:
            from vllm.sampling_params import StructuredOutputsParams

            params["structured_outputs"] = StructuredOutputsParams(**structured)
        sampling = SamplingParams(**params)
    except (TypeError, ValueError, VLLMValidationError) as exc:  # a rule of vLLM's not mirrored above
        raise ValidationError(PARAMETER, str(exc)[:200]) from None
    if structured is not None and verify is not None:
        try:
            verify(sampling)
        except (TypeError, ValueError, RuntimeError, RecursionError, VLLMValidationError) as exc:
            # xgrammar, guidance and outlines raise these for a pattern they cannot compile.
            raise _fail("structured_outputs", f"is not valid: {str(exc)[:200]}") from None
    return sampling
