"""Make a model directory with a realistic shape (Llama 3.2 1B, Llama 3.1 8B) and no downloads.

config.json of the real architecture, a synthetic byte-level tokenizer with the full 128,256-entry
vocabulary (Llama 3's special-token ids), the Llama 3 chat template, and optionally random bf16
weights (for equality tests, which need the embedding table). Without weights, serve it with
vLLM's `load_format: "dummy"` for realistic speed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scripts.make_tiny_model import CHAT_TEMPLATE

logger = logging.getLogger(__name__)

VOCAB = 128256
SPECIALS = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007, "<|eot_id|>": 128009, "<|finetune_right_pad_id|>": 128004}
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_theta=500000.0),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_theta=500000.0),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE, no merges; ids 256..127999 are never-produced fillers, specials at Llama 3's ids."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 128000)})
    special_ids = set(SPECIALS.values())
    for i in range(128000, VOCAB):
        if i not in special_ids:
            vocab[f"<|reserved_special_token_{i - 128000}|>"] = i
    vocab.update(SPECIALS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", SPECIALS["<|begin_of_text|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=131072)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--weights", action="store_true", help="also save random bf16 weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=131072, bos_token_id=128000,
                         eos_token_id=[128001, 128009], torch_dtype="bfloat16", **SHAPES[args.shape])
    args.output.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(args.output)
    if not args.weights:
        config.save_pretrained(args.output)
        logger.info("%s config + tokenizer written to %s (serve with load_format=dummy)", args.shape, args.output)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(args.output)
    logger.info("%s with random weights written to %s", args.shape, args.output)


if __name__ == "__main__":
    main()
