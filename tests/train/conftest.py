"""What the trainer's tests share: a small slice of the reversal task as JSONL files."""

from __future__ import annotations

import json

import pytest

from dpo_ref.train.tasks import ReversalTask, reversal_rows


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 training and 16 held-out pairs of the reversal task, as JSONL files."""
    root = tmp_path_factory.mktemp("data")
    rows, held_out = reversal_rows(ReversalTask(train_size=48, eval_size=16, max_len=4))
    return write_jsonl(root / "train.jsonl", rows), write_jsonl(root / "eval.jsonl", held_out)


def save_tiny_gpt2(directory: str, **config) -> str:
    """A 2-layer GPT-2 (another model family) for the character tokenizer, seed 6, saved with that tokenizer as a
    local --model directory; `config`: GPT2Config options beyond the shape (dropout, tied embeddings, ...)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config,
    )  # fmt: skip
    torch.manual_seed(6)
    GPT2LMHeadModel(gpt2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
