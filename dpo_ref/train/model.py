"""The policy model: a tiny Llama built from a config (the default, no download) or a local HF directory.

`load_model_and_tokenizer(None)` builds a small `LlamaForCausalLM` from a `LlamaConfig` and the local
character tokenizer, so every command works offline and on a laptop. `load_model_and_tokenizer(PATH)`
loads any local Hugging Face causal-LM directory (safetensors weights + tokenizer) with `from_pretrained`,
never touching the network; weights only as a pickle (`pytorch_model.bin`) are refused with the command
that converts them; custom modelling code runs only with `trust_remote_code=True`.
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
    """Size of a Llama built from a config; the defaults are the default model's (about 0.1 M parameters
    with the 100-token character vocabulary). Also the bench's sizes and the oracle adapters' model."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # None = num_attention_heads (no grouped-query attention)
    max_position_embeddings: int = 128
    initializer_range: float = 0.02  # transformers' default


def llama_config(vocab_size: int, size: TinyLlamaSize | None = None, *, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 **overrides):  # fmt: skip
    """A `LlamaConfig` of `size` for a vocabulary of `vocab_size`; dropout 0 (the policy at step 0 equals the
    reference), untied input and output embeddings."""
    from transformers import LlamaConfig

    size = size or TinyLlamaSize()
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads or size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        initializer_range=size.initializer_range,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        **overrides,
    )


def tiny_llama(config, seed: int):
    """A freshly initialised `LlamaForCausalLM` of `config` (float32), deterministic given `seed`; the global
    RNG is left as it was."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def tiny_llama_config(tokenizer, size: TinyLlamaSize | None = None):
    """`llama_config` for `tokenizer`'s vocabulary and special tokens."""
    return llama_config(
        len(tokenizer),
        size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(tokenizer, seed: int = 0, size: TinyLlamaSize | None = None):
    """The default model: a tiny `LlamaForCausalLM` (float32) for `tokenizer`, deterministic given `seed`."""
    return tiny_llama(tiny_llama_config(tokenizer, size), seed)


def max_positions(model) -> int | None:
    """The longest sequence `model` has positions for (`max_position_embeddings` or GPT-2's `n_positions`)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_model_dir(path: str) -> None:
    """The refusals that need no loading: a config.json that is not a JSON object, and weights that exist
    only as a pickle (`pytorch_model*.bin`, which transformers would unpickle: see `load_model_and_tokenizer`)."""
    import glob
    import json

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"--model {path!r} could not be loaded: config.json is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(
            f"--model {path!r} could not be loaded: config.json holds a JSON {type(config).__name__}, not an object"
        )
    pickles = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(path), "pytorch_model*.bin")))
    if pickles and not glob.glob(os.path.join(glob.escape(path), "*.safetensors")):
        raise InputError(
            f"--model {path!r} holds its weights only as a pickle ({', '.join(pickles)}); dpo-ref loads safetensors "
            "only, since unpickling can run code. Convert it once, where you trust the file: python -c "
            f'"from transformers import AutoModelForCausalLM as M; '
            f'M.from_pretrained({path!r}).save_pretrained({path!r})"'
        )


def load_model_and_tokenizer(path: str | None, *, seed: int = 0, trust_remote_code: bool = False):
    """(model, tokenizer): the tiny default when `path` is None, else a local HF causal-LM directory.

    A tokenizer without a pad token gets its EOS as pad (the pad id is only ever masked out).
    """
    from dpo_ref.train.tokenizer import build_char_tokenizer

    if path is None:
        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer, seed), tokenizer
    if not os.path.isdir(path):
        raise InputError(f"--model {path!r} is not a directory; expected a local Hugging Face model directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InputError(f"--model {path!r} has no config.json; expected a local Hugging Face model directory")
    _check_model_dir(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # quiet while loading: a failure is reported as ONE line below (missing weights included), and the CLI's
    # stderr stays readable; restored afterwards
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        # use_safetensors: a pytorch_model.bin beside the safetensors is never unpickled (one without them was
        # refused above); weights_only as well, should a transformers version fall back to the pickle anyway
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype="float32",
            use_safetensors=True,
            weights_only=True,
            output_loading_info=True,
        )
    except Exception as err:  # noqa: BLE001 - transformers and safetensors raise many types for a bad directory
        hint = ""
        if "trust_remote_code" in str(err) and not trust_remote_code:
            hint = " (its custom code runs only with --trust-remote-code: pass it only if you trust that code)"
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if "ignore_mismatched_sizes" in first:
            first = "weights of a shape other than its config.json gives"
        raise InputError(f"--model {path!r} could not be loaded: {first}{hint}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    # weights the causal LM needs but the directory lacks would be freshly random: e.g. an encoder-only model
    absent = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if absent:
        raise InputError(
            f"--model {path!r} is not a complete causal-LM checkpoint: {len(absent)} weights of "
            f"{type(model).__name__} are missing or mis-shaped (first: {sorted(absent)[0]})"
        )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise InputError(f"--model {path!r}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise InputError(f"--model {path!r}: the tokenizer has no EOS token; responses must end with one")
    return model, tokenizer


def enable_gradient_checkpointing(model) -> None:
    """--gradient-checkpointing: each decoder layer keeps only its input for the backward pass and recomputes its
    activations there (transformers' `gradient_checkpointing_enable`, non-reentrant `torch.utils.checkpoint`, which
    needs no input that requires a gradient, so frozen embeddings under LoRA are fine). Active in training mode
    only; the recomputed forward is the same computation, so the gradients are those without it."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError(
            f"--gradient-checkpointing: {type(model).__name__} does not support gradient checkpointing in "
            "transformers; run without it"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
