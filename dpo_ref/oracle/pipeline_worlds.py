"""The models and tokenizers the pipeline level hands a target: small, float64, built locally, nothing downloaded.

A *world* is one (model, tokenizer) pair. Two position schemes, because some bugs show with only one: a Llama
(rotary positions: attention sees only relative positions, so left padding without position ids goes unseen) and
a GPT-2 (absolute position embeddings: left padding without position ids shifts every position). Tokenizers
are character-level BPE with merges that cross word boundaries, so a prompt and its completion tokenised together
can merge into a token neither has alone ("...t" + "he" -> "the"); with and without a pad token, with and without
a BOS. The models use SDPA attention (in transformers 5.25 the eager Llama attention gives NaN for a left-padded
row in float64, while SDPA handles fully masked pad rows) and weights drawn wide enough that log-probs are far
from uniform.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch

ALPHABET = "aehnrst "  # the characters the drawn texts use
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
# merge rules in priority order; several cross a space, so a boundary between two texts can disappear
MERGES = (
    ("t", "h"), ("th", "e"), ("a", "n"), ("e", "r"), ("s", "t"), ("h", "e"), ("e", " "), ("s", " "),
    (" ", "t"), (" t", "he"), ("a", "t"), ("r", "e"), ("n", "e"), ("h", "a"), ("the", " "), ("e", "s"),
)  # fmt: skip


@dataclass(frozen=True)
class World:
    """One model and tokenizer the target is called with."""

    name: str
    positions: str  # "rotary" | "absolute"
    pad_token: bool
    bos: bool

    def tokenizer(self):
        return _tokenizer(self.pad_token, self.bos)

    def model(self) -> torch.nn.Module:
        """A fresh copy (a target that changes its model must not change the next call's)."""
        return copy.deepcopy(_model(self.positions))

    @property
    def describe(self) -> str:
        model = "Llama (rotary positions)" if self.positions == "rotary" else "GPT-2 (absolute positions)"
        pad = "a pad token" if self.pad_token else "no pad token"
        return f"{model}, tokenizer with {pad}, {'adds' if self.bos else 'no'} BOS"


WORLDS = {
    "llama": World("llama", "rotary", pad_token=True, bos=True),
    "gpt2": World("gpt2", "absolute", pad_token=True, bos=False),
    "llama-no-pad": World("llama-no-pad", "rotary", pad_token=False, bos=False),
}
VOCAB_SIZE = len(SPECIALS) + len(ALPHABET) + len(MERGES)


def _vocab() -> dict[str, int]:
    tokens = list(SPECIALS) + list(ALPHABET) + ["".join(m) for m in MERGES]
    return {t: i for i, t in enumerate(tokens)}


@functools.cache
def _tokenizer_template(pad_token: bool, bos: bool):
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES), unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIALS))
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    backend.decoder = decoders.Fuse()
    kwargs = {"pad_token": "<pad>"} if pad_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs
    )


def _tokenizer(pad_token: bool, bos: bool):
    """A fresh tokenizer (a target may set its pad token or padding side: the next call gets the original)."""
    return copy.deepcopy(_tokenizer_template(pad_token, bos))


@functools.cache
def _model(positions: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if positions == "rotary" else 1)
        if positions == "rotary":
            from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

            size = TinyLlamaSize(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=256, initializer_range=0.4)  # fmt: skip
            model = tiny_llama(llama_config(VOCAB_SIZE, size, attn_implementation="sdpa"), seed=0)
        else:
            from transformers import GPT2Config, GPT2LMHeadModel

            config = GPT2Config(
                vocab_size=VOCAB_SIZE, n_positions=256, n_embd=16, n_layer=2, n_head=2, initializer_range=0.4,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                attn_implementation="sdpa", tie_word_embeddings=False,
            )  # fmt: skip
            model = GPT2LMHeadModel(config)
            with torch.no_grad():  # position embeddings as wide as the token ones, so positions matter
                model.transformer.wpe.weight.normal_(0.0, 0.4)
    return model.to(torch.float64).eval()
