"""A character-level tokenizer built locally (no download), as a transformers `PreTrainedTokenizerFast`.

One token per printable ASCII character and newline, plus `<pad>`, `<s>` (BOS, prepended by the
post-processor), `</s>` (EOS) and `<unk>`. It carries a minimal chat template so conversational
preference data can be rendered with it:

    user: {content}\\n ... assistant: {content}\\n

It saves with `save_pretrained` and loads back with `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = tuple(chr(i) for i in range(32, 127)) + ("\n",)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_word_tokenizer(words, *, add_bos: bool):
    """A whitespace word-level tokenizer: ids 0..3 special (pad, bos, eos, unk), then `words` in order.

    A string of n words is exactly n tokens (plus BOS with `add_bos` when special tokens are added), so
    the bench and the oracle adapters control sequence lengths exactly.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_char_tokenizer():
    """The character-level tokenizer: vocabulary size 100, ids 0..3 special (pad, bos, eos, unk)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # BPE with no merges: every character is its own token, anything else maps to <unk>
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    backend.decoder = decoders.Fuse()  # join characters without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
