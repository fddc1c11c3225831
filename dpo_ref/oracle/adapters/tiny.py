"""A tiny local causal LM, tokenizer and preference rows for driving libraries end to end.

Nothing is downloaded: the tokenizer and the model come from dpo-ref's own factories
(`dpo_ref.train.tokenizer.build_word_tokenizer`, `dpo_ref.train.model.tiny_llama`): a whitespace word-level
tokenizer and a 1-layer `LlamaForCausalLM` built from a config with a fixed seed. Policy and reference
get different seeds, so the margins are not all zero.
"""

from __future__ import annotations

import torch

from dpo_ref.train.tokenizer import SPECIAL_TOKENS

WORDS = "the cat dog sat on mat a red blue big small ran fast slow is was good bad yes no".split()
SPECIAL = list(SPECIAL_TOKENS)

# prompt, chosen, rejected: completions of different lengths, one reaching the longest row's end
ROWS = {
    "prompt": ["the cat", "a dog is", "big"],
    "chosen": [" sat on the mat", " good", " red dog ran fast"],
    "rejected": [" ran", " bad bad no", " slow"],
}
# four pairs of different lengths, for batch-composition checks (a batch of 4 vs 4 batches of 1)
ROWS4 = {
    "prompt": ROWS["prompt"] + ["the"],
    "chosen": ROWS["chosen"] + [" cat is good"],
    "rejected": ROWS["rejected"] + [" dog was bad no"],
}


def tokenizer():
    """The word-level tokenizer of SPECIAL + WORDS (`dpo_ref.train.tokenizer.build_word_tokenizer`), adding nothing."""
    from dpo_ref.train.tokenizer import build_word_tokenizer

    return build_word_tokenizer(WORDS, add_bos=False)


def model(seed: int, dtype: torch.dtype = torch.float64):
    """A 1-layer Llama with vocabulary SPECIAL + WORDS; weights drawn with a large std for non-trivial log-probs."""
    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    size = TinyLlamaSize(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    return tiny_llama(llama_config(len(SPECIAL) + len(WORDS), size), seed).to(dtype).eval()


def own_token_ids(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """The oracle's tokenization: prompt ids and completion ids, nothing added."""
    return tok(prompt, add_special_tokens=False)["input_ids"], tok(completion, add_special_tokens=False)["input_ids"]
