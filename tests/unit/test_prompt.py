"""PromptBuilder: template rendering, placeholder expansion and splicing (no server)."""

from __future__ import annotations

import pytest
import torch

from backend.errors import ValidationError
from backend.prompt import PromptBuilder

PH = "<|prompt_embeds|>"


@pytest.fixture(scope="module")
def builder(tiny) -> PromptBuilder:
    return PromptBuilder(tiny.tokenizer, PH, tiny.hidden_size, torch.float32)


def rows(n: int, value: float = 1.0) -> torch.Tensor:
    return torch.full((n, 128), value)


def test_text_prompt_is_tokenized_like_vllm(builder, tiny):
    prompt = builder.from_text("Hello", [])
    assert prompt.token_ids == tiny.ids("Hello", special=True)
    assert prompt.embeds is None and prompt.to_vllm() == {"prompt_token_ids": prompt.token_ids}


def test_embeddings_alone_are_the_whole_prompt(builder):
    prompt = builder.from_embeddings(rows(5))
    assert prompt.num_tokens == 5 and prompt.num_embedding_tokens == 5
    assert set(prompt.to_vllm()) == {"prompt_embeds", "prompt_token_ids", "prompt_is_token_ids"}
    assert prompt.is_token_ids == [False] * 5


@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_one_part_is_spliced_at_its_placeholder(builder, tiny, position):
    content = {"start": [{"type": "prompt_embeds"}, {"type": "text", "text": "ab"}],
               "middle": [{"type": "text", "text": "ab"}, {"type": "prompt_embeds"}, {"type": "text", "text": "cd"}],
               "end": [{"type": "text", "text": "ab"}, {"type": "prompt_embeds"}]}[position]
    prompt = builder.from_messages([{"role": "user", "content": content}], [rows(3, 7.0)])
    text_version = [{"role": "user", "content": "\n".join(p.get("text", "XYZ") for p in content)}]
    expected = tiny.tokenizer.apply_chat_template(text_version, tokenize=False, add_generation_prompt=True)
    expected_ids = tiny.ids(expected)
    # Same length as the text version where "XYZ" (3 tokens) stands for the 3-row part.
    assert prompt.num_tokens == len(expected_ids)
    mask = torch.tensor(prompt.is_token_ids)
    assert int((~mask).sum()) == 3 and prompt.num_embedding_tokens == 3
    start = prompt.is_token_ids.index(False)
    assert torch.equal(prompt.embeds[start:start + 3], rows(3, 7.0))
    assert torch.count_nonzero(prompt.embeds[mask]) == 0
    xyz = tiny.ids("XYZ")
    assert expected_ids[start:start + 3] == xyz
    assert [t for t, m in zip(prompt.token_ids, prompt.is_token_ids) if m] == \
        expected_ids[:start] + expected_ids[start + 3:]


def test_parts_in_several_messages_keep_their_order(builder):
    messages = [{"role": "system", "content": [{"type": "prompt_embeds"}]},
                {"role": "user", "content": [{"type": "prompt_embeds"}, {"type": "prompt_embeds"}]}]
    prompt = builder.from_messages(messages, [rows(1, 1.0), rows(2, 2.0), rows(3, 3.0)])
    spliced = prompt.embeds[~torch.tensor(prompt.is_token_ids)]
    assert spliced[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_raw_text_with_adjacent_placeholders(builder, tiny):
    prompt = builder.from_text(f"x{PH}{PH}y", [rows(2), rows(1)])
    assert prompt.is_token_ids == [True, True, False, False, False, True]
    assert prompt.token_ids[:2] == tiny.ids("x", special=True)


@pytest.mark.parametrize("messages, parts, fragment", [
    ([{"role": "user", "content": [{"type": "prompt_embeds"}]}], 2, "1 prompt_embeds content parts but 2"),
    ([{"role": "user", "content": "hi"}], 1, "0 prompt_embeds content parts but 1"),
    ([{"role": "user", "content": f"say {PH}"}], 0, "reserved placeholder"),
    ([{"role": "user", "content": [{"type": "text", "text": PH}]}], 0, "reserved placeholder"),
    ([{"role": "wizard", "content": "hi"}], 0, "role"),
    ([{"role": "user"}], 0, "content"),
    ([{"role": "user", "content": []}], 0, "content"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], 0, "type"),
    ([{"role": "user", "content": [{"type": "prompt_embeds", "data": "AAAA"}]}], 1, "tensor"),
    ([{"role": "user", "content": "hi", "extra": 1}], 0, "unknown fields"),
    ([], 0, "non-empty"),
    ({"role": "user"}, 0, "non-empty"),
    (["hi"], 0, "object"),
], ids=["too-many-parts", "too-few-slots", "placeholder-in-text", "placeholder-in-part", "bad-role",
        "no-content", "empty-content", "unknown-part", "data-in-part", "unknown-field", "empty", "not-a-list",
        "not-an-object"])
def test_bad_messages_name_the_input(builder, messages, parts, fragment):
    with pytest.raises(ValidationError) as info:
        builder.from_messages(messages, [rows(1)] * parts)
    assert info.value.parameter == "messages" and fragment in info.value.message


def test_text_input_placeholder_count_must_match(builder):
    with pytest.raises(ValidationError, match="text_input: 1 placeholders"):
        builder.from_text(f"a{PH}b", [rows(1), rows(1)])
    with pytest.raises(ValidationError, match="reserved placeholder but no prompt_embeds"):
        builder.from_text(f"a{PH}b", [])
