"""The built-in preference task: reverse a short random string.

    prompt   "cadb>"    a random string over `ALPHABET` followed by ">"
    chosen   "bdac"     its exact reversal
    rejected "bcac"     the reversal with one character replaced by a different letter

Preference is meaningful (exactly one response is correct) and generalises: the rule is the same for
every prompt, so a model that learned it ranks chosen above rejected on prompts it never saw. The
evaluation prompts are disjoint from the training prompts. Generation accuracy is the fraction of
held-out prompts whose greedy completion is exactly the reversal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ALPHABET = "abcdefgh"
SEPARATOR = ">"


@dataclass
class ReversalTask:
    """Sizes of the generated task; `seed` fixes every string."""

    train_size: int = 2000
    eval_size: int = 200
    min_len: int = 3
    max_len: int = 6
    seed: int = 1234


def _pair(rng: random.Random, text: str) -> dict:
    chosen = text[::-1]
    i = rng.randrange(len(chosen))
    wrong = rng.choice([c for c in ALPHABET if c != chosen[i]])
    rejected = chosen[:i] + wrong + chosen[i + 1 :]
    return {"prompt": text + SEPARATOR, "chosen": chosen, "rejected": rejected}


def reversal_rows(task: ReversalTask | None = None) -> tuple[list[dict], list[dict]]:
    """(train_rows, eval_rows): preference rows {"prompt", "chosen", "rejected"}, eval prompts unseen in train."""
    task = task or ReversalTask()
    rng = random.Random(task.seed)
    seen: set[str] = set()
    texts: list[str] = []
    while len(texts) < task.train_size + task.eval_size:
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(task.min_len, task.max_len)))
        if text not in seen:  # unique prompts, so the eval split shares none with the train split
            seen.add(text)
            texts.append(text)
    rows = [_pair(rng, text) for text in texts]
    return rows[: task.train_size], rows[task.train_size :]
