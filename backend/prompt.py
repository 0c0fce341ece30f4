"""Turn text, chat messages and embedding parts into one engine prompt.

The chat template is rendered with a reserved placeholder string where each embedding part goes;
the rendered text is split at the placeholders, each text segment is tokenized, and each
placeholder becomes as many positions as its part has rows. The engine gets vLLM's native mixed
prompt: token ids everywhere, embedding rows at the spliced positions, and a mask saying which is
which. No second copy of the embedding table is kept: text positions stay token ids.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

import torch

from backend.errors import ValidationError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# vLLM joins the parts of one message with a newline; so do we, keeping each part in place.
PART_SEPARATOR = "\n"


def check_text(parameter: str, text: str, where: str = "") -> None:
    """Refuse text that is not encodable as UTF-8: JSON's "\\ud800" gives a lone surrogate, which
    the tokenizer and the engine's encoder refuse deep inside (an internal error otherwise)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        prefix = f"{where} " if where else ""
        raise ValidationError(parameter, f"{prefix}is not valid Unicode (a lone UTF-16 surrogate)") from None


@dataclasses.dataclass
class EnginePrompt:
    """A prompt ready for vLLM, plus the counts the server reports."""

    token_ids: list[int] | None = None
    embeds: torch.Tensor | None = None  # full length when mixed with token ids
    is_token_ids: list[bool] | None = None
    echo_text: str = ""  # what `exclude_input_in_output=false` prepends
    num_embedding_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        """Prompt length after placeholder expansion."""
        if self.token_ids is not None:
            return len(self.token_ids)
        return int(self.embeds.shape[0]) if self.embeds is not None else 0

    def to_vllm(self) -> dict[str, Any]:
        """vLLM's prompt dict: TokensPrompt, EmbedsPrompt, or the mixed EmbedsPrompt."""
        if self.embeds is None:
            return {"prompt_token_ids": self.token_ids}
        prompt: dict[str, Any] = {"prompt_embeds": self.embeds}
        if self.token_ids is not None:
            prompt["prompt_token_ids"] = self.token_ids
            prompt["prompt_is_token_ids"] = self.is_token_ids
        return prompt


class PromptBuilder:
    """Renders chat templates and splices embedding parts, for one tokenizer."""

    def __init__(self, tokenizer: Any, placeholder: str, hidden_size: int, dtype: torch.dtype) -> None:
        self.tokenizer = tokenizer
        self.placeholder = placeholder
        self.hidden_size = hidden_size
        self.dtype = dtype
        # The id kept at embedding positions (never looked up: the mask says "use the row").
        # A real token id keeps penalties and detokenization on familiar ground.
        pad = tokenizer.pad_token_id
        self.placeholder_token_id = pad if pad is not None else tokenizer.eos_token_id or 0
        # Special tokens the tokenizer adds around a plain text (e.g. BOS), for raw text_input
        # that carries placeholders and is therefore tokenized here rather than by vLLM.
        self._prefix_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
        # Requests are parsed on several intake threads; a Hugging Face fast tokenizer may refuse
        # concurrent use ("Already borrowed") when a call changes its truncation state.
        self._lock = threading.Lock()

    def _encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self._lock:
            return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (the echo of a token-id prompt)."""
        with self._lock:
            return self.tokenizer.decode(ids)

    # -- entry points -------------------------------------------------------------------------

    def from_embeddings(self, embeds: torch.Tensor) -> EnginePrompt:
        """`prompt_embeds` alone: the whole prompt, no template.

        Sent as the mixed prompt with every position an embedding row, not as a bare
        EmbedsPrompt: without prompt token ids, vLLM's penalties read another request's prompt
        tokens when embedding prompts of different lengths share a batch (vLLM issue 57719:
        wrong tokens on the CPU, a device-side assert that kills the engine on GPUs).
        """
        rows = int(embeds.shape[0])
        return EnginePrompt(token_ids=[self.placeholder_token_id] * rows, embeds=embeds.to(self.dtype),
                            is_token_ids=[False] * rows, num_embedding_tokens=rows)

    def from_text(self, text: str, parts: Sequence[torch.Tensor]) -> EnginePrompt:
        """Raw `text_input`, already templated by the caller; one placeholder per embedding part."""
        check_text("text_input", text)
        if not parts:
            if self.placeholder in text:
                raise ValidationError("text_input", "contains the reserved placeholder but no prompt_embeds")
            # Tokenized as vLLM tokenizes a text prompt (special tokens added), so the prompt length
            # is known before admission and the context check.
            ids = list(self._encode(text, add_special_tokens=True))
            return EnginePrompt(token_ids=ids, echo_text=text)
        prompt = self._splice(text, parts, "text_input", add_special_tokens=True)
        prompt.echo_text = text
        return prompt

    def from_messages(self, messages: Any, parts: Sequence[torch.Tensor]) -> EnginePrompt:
        """Chat messages (OpenAI shape); `{"type": "prompt_embeds"}` parts take embedding parts in order."""
        conversation, num_slots = self._flatten_messages(messages)
        if num_slots != len(parts):
            raise ValidationError(
                "messages", f"{num_slots} prompt_embeds content parts but {len(parts)} embedding parts given"
            )
        try:
            rendered = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises TemplateError and others for unexpected messages
            raise ValidationError("messages", f"chat template failed: {type(exc).__name__}: {exc}") from None
        if not parts:
            ids = list(self._encode(rendered, add_special_tokens=False))
            return EnginePrompt(token_ids=ids, echo_text=rendered)
        prompt = self._splice(rendered, parts, "messages", add_special_tokens=False)
        prompt.echo_text = rendered
        return prompt

    # -- internals ----------------------------------------------------------------------------

    def _flatten_messages(self, messages: Any) -> tuple[list[dict[str, str]], int]:
        """Check the OpenAI message shape and turn list contents into strings with placeholders."""
        if not isinstance(messages, list) or not messages:
            raise ValidationError("messages", "must be a non-empty JSON list of messages")
        conversation = []
        slots = 0
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise ValidationError("messages", f"{where} must be an object")
            unknown = set(message) - {"role", "content", "name"}
            if unknown:
                raise ValidationError("messages", f"{where} has unknown fields {sorted(unknown)[:5]}")
            if message.get("name") is not None and not isinstance(message["name"], str):  # typed, though unused
                raise ValidationError("messages", f"{where}.name must be a string")
            role = message.get("role")
            if role not in ROLES:
                raise ValidationError("messages", f"{where}.role must be one of {sorted(ROLES)}")
            content = message.get("content")
            if isinstance(content, str):
                self._check_text(content, where)
                text = content
            elif isinstance(content, list) and content:
                pieces = [self._part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
                # User text never holds the placeholder (checked), so each occurrence is a slot.
                slots += pieces.count(self.placeholder)
                text = PART_SEPARATOR.join(pieces)
            else:
                raise ValidationError("messages", f"{where}.content must be a string or a non-empty list of parts")
            conversation.append({"role": role, "content": text})
        return conversation, slots

    def _part_text(self, part: Any, where: str) -> str:
        if not isinstance(part, dict):
            raise ValidationError("messages", f"{where} must be an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str) or set(part) - {"type", "text"}:
                raise ValidationError("messages", f"{where} must be {{'type': 'text', 'text': <string>}}")
            self._check_text(text, where)
            return text
        if kind == "prompt_embeds":
            if set(part) - {"type"}:
                raise ValidationError(
                    "messages", f"{where}: embedding data goes in the prompt_embeds tensor, not in the message"
                )
            return self.placeholder
        raise ValidationError("messages", f"{where}.type must be 'text' or 'prompt_embeds'")

    def _check_text(self, text: str, where: str) -> None:
        check_text("messages", text, where)
        if self.placeholder in text:
            raise ValidationError("messages", f"{where} contains the reserved placeholder {self.placeholder!r}")

    def _splice(
        self, rendered: str, parts: Sequence[torch.Tensor], parameter: str, *, add_special_tokens: bool
    ) -> EnginePrompt:
        segments = rendered.split(self.placeholder)
        if len(segments) - 1 != len(parts):
            raise ValidationError(
                parameter, f"{len(segments) - 1} placeholders {self.placeholder!r} but {len(parts)} embedding parts"
            )
        token_ids: list[int] = list(self._prefix_ids) if add_special_tokens else []
        is_token_ids: list[bool] = [True] * len(token_ids)
        spans: list[tuple[int, int]] = []
        for i, segment in enumerate(segments):
            if segment:
                ids = self._encode(segment, add_special_tokens=False)
                token_ids.extend(ids)
                is_token_ids.extend([True] * len(ids))
            if i < len(parts):
                rows = int(parts[i].shape[0])
                spans.append((len(token_ids), rows))
                token_ids.extend([self.placeholder_token_id] * rows)
                is_token_ids.extend([False] * rows)
        embeds = torch.zeros(len(token_ids), self.hidden_size, dtype=self.dtype)
        for (start, rows), part in zip(spans, parts):
            embeds[start : start + rows] = part.to(self.dtype)
        return EnginePrompt(
            token_ids=token_ids,
            embeds=embeds,
            is_token_ids=is_token_ids,
            num_embedding_tokens=sum(rows for _, rows in spans),
        )
