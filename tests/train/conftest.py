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
