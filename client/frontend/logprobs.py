"""Logprobs in vLLM's response shapes, from the ids and logprobs the Triton model sends.

The model sends, per generated token, its id and logprob and the top-m alternatives (ids and
logprobs, by rank). Token strings are made here the way vLLM's engine and server make them
(vLLM 0.32 `tokenizers/detokenizer_utils.convert_ids_list_to_tokens`, `v1/engine/logprobs.py`,
`entrypoints/openai/completion|chat_completion/serving.py`): each id decoded alone, a SentencePiece
leading space restored, and a string ending in U+FFFD (a byte-fallback piece of a multi-byte
character) re-decoded with up to 4 preceding sampled tokens as context. Logprobs below -9999 are
clamped to -9999 (-inf is not JSON), as vLLM does.

Prompt logprobs (echo with logprobs, and vLLM's `prompt_logprobs` field) come per prompt position as
the model sends them (backend.types.PromptLogprobs). vLLM decodes the prompt's tokens with the
preceding prompt tokens as context, leaving out position 0 (which has no logprobs entry), and the
first position itself with a plain decode: so here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from backend.types import PromptLogprobs

logger = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"
MIN_LOGPROB = -9999.0
CONTEXT_TOKENS = 4  # enough for any UTF-8 sequence (vLLM's max_context)


def _leading_space_marker(tokenizer: Any) -> str | None:
    """The Metaspace replacement character ("▁") if the tokenizer strips it on decode, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    except (ValueError, AttributeError):
        return None
    subs = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    for sub in subs:
        if isinstance(sub, dict) and sub.get("type") == "Metaspace":
            return sub.get("replacement", "\u2581")
    return None


class TokenText:
    """Token id -> the string vLLM's server shows for it (decoded alone; cached per id)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._marker = _leading_space_marker(tokenizer)
        self._alone: dict[int, str] = {}

    def alone(self, token_id: int) -> str:
        """The id decoded by itself, with a stripped leading space put back (SentencePiece)."""
        text = self._alone.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id]) or ""
            if self._marker is not None:
                raw = self._tokenizer.convert_ids_to_tokens([token_id])[0] or ""
                markers = len(raw) - len(raw.lstrip(self._marker))
                missing = markers - (len(text) - len(text.lstrip(" ")))
                if missing > 0:
                    text = " " * missing + text
            self._alone[token_id] = text
        return text

    def plain(self, token_id: int) -> str:
        """The id decoded alone, nothing restored: vLLM's string for a prompt's first token."""
        return self._tokenizer.decode([token_id]) or ""

    def token(self, token_id: int, context: Sequence[int]) -> str:
        """The id's string at a position after the sampled tokens `context` (oldest first)."""
        text = self.alone(token_id)
        return self._corrected(token_id, list(context)) if text.endswith(REPLACEMENT) else text

    def _corrected(self, token_id: int, context: list[int]) -> str:
        """A byte-fallback piece completed by its preceding tokens (vLLM's _correct_decoded_token)."""
        decode = self._tokenizer.decode
        for num in range(1, min(len(context), CONTEXT_TOKENS) + 1):
            window = context[-num:]
            full = decode(window + [token_id])
            if full.endswith(REPLACEMENT):
                continue
            clean_end = len(window)
            for j in range(len(window) - 1, -1, -1):
                if decode([window[j]]).endswith(REPLACEMENT):
                    clean_end = j
                else:
                    break
            prefix = decode(window[:clean_end]) if clean_end > 0 else ""
            if full.startswith(prefix):
                return full[len(prefix):]
            common = 0
            for a, b in zip(prefix, full):
                if a != b:
                    break
                common += 1
            return full[common:]
        return ""


def _clamp(value: float) -> float:
    return max(value, MIN_LOGPROB)


def _prompt_context(token_ids: Sequence[int], position: int) -> list[int]:
    """The prompt tokens vLLM decodes a prompt position with: up to 4 before it, never position 0."""
    return list(token_ids[max(1, position - CONTEXT_TOKENS):position])


def prompt_logprobs_field(text: TokenText, prompt: PromptLogprobs) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs` response field: None, then per position {token id: {logprob, rank, decoded_token}}.

    The prompt token first (its own rank), then the top m by rank; an id in both appears once, in
    the first place. -inf is -9999, as vLLM's clamp_prompt_logprobs.
    """
    out: list[dict[str, dict[str, Any]] | None] = [None]
    ids = prompt.token_ids
    for position in range(1, len(ids)):
        context = _prompt_context(ids, position)
        entries = [(ids[position], prompt.logprobs[position], prompt.ranks[position])]
        entries += [(int(alt), float(lp), rank) for rank, (alt, lp) in
                    enumerate(zip(prompt.top_ids[position], prompt.top_logprobs[position]), start=1)]
        row: dict[str, dict[str, Any]] = {}
        for token_id, logprob, rank in entries:
            row[str(token_id)] = {"logprob": MIN_LOGPROB if logprob == float("-inf") else logprob, "rank": rank,
                                  "decoded_token": text.token(token_id, context)}
        out.append(row)
    return out


class ChoiceLogprobs:
    """One choice's logprobs across its responses: the sampled context and the completions text offset."""

    def __init__(self, text: TokenText, text_offset: int = 0) -> None:
        self._text = text
        self._context: list[int] = []
        self._offset = text_offset

    def _positions(self, token_ids: Sequence[int], logprobs: Sequence[float], top_ids: Sequence[Sequence[int]],
                   top_logprobs: Sequence[Sequence[float]]) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """Per token: its string, its logprob, and vLLM's alternatives (the sampled token first, then by rank)."""
        out = []
        for i, (token_id, logprob) in enumerate(zip(token_ids, logprobs)):
            context = self._context[-CONTEXT_TOKENS:]
            ranked: dict[int, float] = {token_id: logprob}
            for alt_id, alt_logprob in zip(top_ids[i] if i < len(top_ids) else (),
                                           top_logprobs[i] if i < len(top_logprobs) else ()):
                ranked.setdefault(int(alt_id), float(alt_logprob))
            alternatives = [(self._text.token(alt, context), _clamp(lp)) for alt, lp in ranked.items()]
            out.append((alternatives[0][0], _clamp(logprob), alternatives))
            self._context.append(token_id)
        return out

    def _prompt_positions(self, prompt: PromptLogprobs) -> list[tuple[str, float | None, list[tuple[str, float]] | None]]:
        """Per prompt position, as _positions; position 0 has no logprob and no alternatives (None)."""
        ids = prompt.token_ids
        out: list[tuple[str, float | None, list[tuple[str, float]] | None]] = []
        for position, token_id in enumerate(ids):
            if position == 0:
                out.append((self._text.plain(token_id), None, None))
                continue
            context = _prompt_context(ids, position)
            ranked: dict[int, float] = {token_id: prompt.logprobs[position]}
            for alt_id, alt_logprob in zip(prompt.top_ids[position], prompt.top_logprobs[position]):
                ranked.setdefault(int(alt_id), float(alt_logprob))
            alternatives = [(self._text.token(alt, context), _clamp(lp)) for alt, lp in ranked.items()]
            out.append((alternatives[0][0], _clamp(prompt.logprobs[position]), alternatives))
        return out

    def completion(self, token_ids: Sequence[int], logprobs: Sequence[float], top_ids: Sequence[Sequence[int]],
                   top_logprobs: Sequence[Sequence[float]], num: int,
                   prompt: PromptLogprobs | None = None) -> dict[str, Any]:
        """The legacy completions object: tokens, token_logprobs, top_logprobs [{token: logprob}], text_offset.

        vLLM keeps up to num + 1 alternatives (the sampled token and the top num); equal strings collapse.
        With `prompt` (echo), the prompt's positions come first, the first of them with null logprobs.
        """
        positions = self._prompt_positions(prompt) if prompt is not None else []
        positions += self._positions(token_ids, logprobs, top_ids, top_logprobs)
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for token, logprob, alternatives in positions:
            tokens.append(token)
            token_logprobs.append(logprob)
            tops.append(None if alternatives is None else {alt: lp for alt, lp in alternatives[: num + 1]})
            offsets.append(self._offset)
            self._offset += len(token)
        return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": tops}

    def chat(self, token_ids: Sequence[int], logprobs: Sequence[float], top_ids: Sequence[Sequence[int]],
             top_logprobs: Sequence[Sequence[float]], num: int) -> list[dict[str, Any]]:
        """Chat `logprobs.content` entries; top_logprobs holds the first `num` of vLLM's alternatives."""
        content = []
        for token, logprob, alternatives in self._positions(token_ids, logprobs, top_ids, top_logprobs):
            content.append({
                "token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", errors="replace")),
                "top_logprobs": [{"token": alt, "logprob": lp, "bytes": list(alt.encode("utf-8", errors="replace"))}
                                 for alt, lp in alternatives[:num]],
            })
        return content
