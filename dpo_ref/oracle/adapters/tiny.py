"""A tiny local causal LM, tokenizer and preference rows for driving libraries end to end.

Nothing is downloaded: the tokenizer is a whitespace word-level `tokenizers` model wrapped in
`PreTrainedTokenizerFast`, the model a 1-layer `LlamaForCausalLM` built from a config with a fixed
seed. Policy and reference get different seeds, so the margins are not all zero.
"""

from __future__ import annotations

import torch

WORDS = "the cat dog sat on mat a red blue big small ran fast slow is was good bad yes no".split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]

# prompt, chosen, rejected: completions of different lengths, one reaching the longest row's end
ROWS = {
    "prompt": ["the cat", "a dog is", "big"],
    "chosen": [" sat on the mat", " good", " red dog ran fast"],
    "rejected": [" ran", " bad bad no", " slow"],
}


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )


def model(seed: int, dtype: torch.dtype = torch.float64):
    """A 1-layer Llama with vocabulary SPECIAL + WORDS; weights drawn with a large std for non-trivial log-probs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def own_token_ids(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """The oracle's tokenization: prompt ids and completion ids, nothing added."""
    return tok(prompt, add_special_tokens=False)["input_ids"], tok(completion, add_special_tokens=False)["input_ids"]
