"""The bench's model sizes: a Llama built from a config (`bench_model`) at one of the `PRESETS`; shared by the TRL
comparison (`dpo_ref.bench.run`) and the layout bench (`dpo_ref.bench.layouts`)."""

from __future__ import annotations

from dataclasses import dataclass

MIN_VOCAB = 16  # 4 special tokens and words to draw


@dataclass
class BenchSize:
    """Model and batch of one benchmark: a Llama built from a config, `batch` pairs of `seq_len` tokens."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 1024
    vocab: int = 8192
    seq_len: int = 256  # tokens per sequence: prompt (with BOS) + response (with EOS)
    prompt_len: int = 64  # prompt tokens, BOS included
    batch: int = 8  # preference pairs per step: one (2 * batch, seq_len) forward


PRESETS = {
    "default": BenchSize(),
    "tiny": BenchSize(
        hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64, vocab=512, seq_len=32, prompt_len=8, batch=2
    ),
    # a Qwen2.5-0.5B-shaped Llama (untied head), for a GPU
    "0.5b": BenchSize(
        hidden=896,
        layers=24,
        heads=14,
        kv_heads=2,
        intermediate=4864,
        vocab=151936,
        seq_len=1024,
        prompt_len=256,
        batch=8,
    ),
}


def bench_model(size: BenchSize, seed: int):
    """A float32 `LlamaForCausalLM` of `size`, initialised deterministically from `seed` (no dropout)."""
    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    shape = TinyLlamaSize(
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=max(size.seq_len, 128),
    )
    return tiny_llama(llama_config(size.vocab, shape, use_cache=False), seed)
