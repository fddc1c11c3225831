"""What the benches share: the word tokenizer and the rows of exact lengths both sides of a comparison tokenize
alike, the environment of a worker process, the accelerators' bf16 peaks for MFU. Imported by
`dpo_ref.bench.run` (which re-exports these names) and `dpo_ref.bench.memory`."""

from __future__ import annotations

import os

from dpo_ref.bench.sizes import BenchSize

# dense bf16 peak of known accelerators, for MFU (TFLOP/s)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def bench_tokenizer(vocab: int):
    """A word-level tokenizer of exactly `vocab` ids: <pad> <s> </s> <unk>, then words w4 .. w{vocab-1}.

    Text is whitespace-separated words, so a string of n words is exactly n tokens (plus BOS when the
    tokenizer adds special tokens), whichever side tokenizes it.
    """
    from dpo_ref.train.tokenizer import SPECIAL_TOKENS, build_word_tokenizer

    return build_word_tokenizer([f"w{i}" for i in range(len(SPECIAL_TOKENS), vocab)], add_bos=True)


def bench_rows(size: BenchSize, seed: int = 0) -> list[dict]:
    """`size.batch` preference rows whose prompt+response is exactly `size.seq_len` tokens (BOS, EOS included).

    One step sees all rows, so both sides' first batches hold the same pairs (a mean over pairs does
    not depend on their order) and the first-step losses are comparable.
    """
    import random

    rng = random.Random(seed)
    prompt_words, response_words = size.prompt_len - 1, size.seq_len - size.prompt_len - 1  # BOS, EOS

    def words(n: int) -> str:
        return " ".join(f"w{rng.randrange(4, size.vocab)}" for _ in range(n))

    return [
        {"prompt": words(prompt_words), "chosen": " " + words(response_words), "rejected": " " + words(response_words)}
        for _ in range(size.batch)
    ]


def package_root() -> str:
    import dpo_ref

    return os.path.dirname(os.path.dirname(os.path.abspath(dpo_ref.__file__)))


def worker_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    env.update({"OMP_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error"})
    return env
