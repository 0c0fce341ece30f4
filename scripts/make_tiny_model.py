"""Make a tiny Llama-style model (random weights, byte-level tokenizer) that needs no hub access.

It stands in for a real Hugging Face model in tests and local runs: same architecture family,
same chat-template shape (Llama 3), small enough to run on two CPU cores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT, "<|pad|>"]
# The serving default (model.json) caps the context at 8192; fault tests raise it, so that a
# request can outlast their checks: this model writes thousands of tokens a second on a fast CPU.
MAX_POSITIONS = 65536

# Llama 3's template, shortened: string content only (as the real one), an optional system
# message, and a generation prompt that opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: one token per UTF-8 byte, plus Llama 3 specials."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def build_model(vocab_size: int, bos_id: int, eos_ids: list[int], seed: int, *, hidden_size: int = 128,
                layers: int = 2, intermediate_size: int = 256) -> LlamaForCausalLM:
    """A small Llama (2 layers, width 128 by default) with head_dim 64 (the CPU attention kernels reject smaller heads).

    Wider variants (`hidden_size` a multiple of 64) measure per-request costs that grow with the
    embedding width, such as payload transport, at a real model's width without its compute.
    """
    heads = hidden_size // 64
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger-than-default init spreads the logits, so greedy decoding is not a tie-break lottery
    # and different prompts give visibly different continuations.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=128, help="a multiple of 64")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=256)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the saved weights' dtype (and config.json's)")
    args = parser.parse_args()
    if args.hidden_size < 64 or args.hidden_size % 64:
        parser.error("--hidden-size must be a multiple of 64")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tokenizer = build_tokenizer()
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    eos_ids = [tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(EOS)]
    model = build_model(len(tokenizer), bos_id, eos_ids, args.seed, hidden_size=args.hidden_size, layers=args.layers,
                        intermediate_size=args.intermediate_size).to(getattr(torch, args.dtype))
    model.config.torch_dtype = args.dtype
    args.output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    logger.info("tiny model written to %s (vocab %d, hidden %d)", args.output, len(tokenizer),
                model.config.hidden_size)


if __name__ == "__main__":
    main()
