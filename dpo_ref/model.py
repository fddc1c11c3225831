"""The policy model: a tiny Llama built from a config (the default, no download) or a local HF directory.

`load_model_and_tokenizer(None)` builds a small `LlamaForCausalLM` from a `LlamaConfig` and the local
character tokenizer, so every command works offline and on a laptop. `load_model_and_tokenizer(PATH)`
loads any local Hugging Face causal-LM directory (weights + tokenizer) with `from_pretrained`, never
touching the network; custom modelling code runs only with `trust_remote_code=True`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from dpo_ref.errors import InputError

# transformers may import torchao, which logs a warning about its own build at import time: not ours to show
logging.getLogger("torchao").setLevel(logging.ERROR)


@dataclass
class TinyLlamaSize:
    """Size of the default model; about 0.1 M parameters with the 100-token character vocabulary."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 128


def tiny_llama_config(tokenizer, size: TinyLlamaSize | None = None):
    """A `LlamaConfig` for `tokenizer`'s vocabulary; dropout 0 so the policy at step 0 equals the reference."""
    from transformers import LlamaConfig

    size = size or TinyLlamaSize()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(tokenizer, seed: int = 0, size: TinyLlamaSize | None = None):
    """A freshly initialised tiny `LlamaForCausalLM` (float32), deterministic given `seed`."""
    import torch
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(tokenizer, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_model_and_tokenizer(path: str | None, *, seed: int = 0, trust_remote_code: bool = False):
    """(model, tokenizer): the tiny default when `path` is None, else a local HF causal-LM directory.

    A tokenizer without a pad token gets its EOS as pad (the pad id is only ever masked out).
    """
    from dpo_ref.tokenizer import build_char_tokenizer

    if path is None:
        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer, seed), tokenizer
    if not os.path.isdir(path):
        raise InputError(f"--model {path!r} is not a directory; expected a local Hugging Face model directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(f"--model {path!r} has no config.json; expected a local Hugging Face model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code, dtype="float32"
        )
    except (OSError, ValueError) as err:
        raise InputError(f"--model {path!r} could not be loaded: {str(err).splitlines()[0]}") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise InputError(f"--model {path!r}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise InputError(f"--model {path!r}: the tokenizer has no EOS token; responses must end with one")
    return model, tokenizer
