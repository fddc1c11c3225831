"""TRL's DPOTrainer searched through its own tokenisation and collation, and its batch composition.

Fast tests replay fixed draws through TRL's pipeline; the full Hypothesis search over every loss type is
marked slow (the compliance matrix, `dpo-ref matrix`, runs it).
"""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from dpo_ref.oracle.adapters import trl_batch, trl_search  # noqa: E402
from dpo_ref.oracle.adapters.trl_search import Draw  # noqa: E402

SMALLEST = Draw(rows=((("",), ("the",), ("the", "the")),))  # empty prompt: a completion token at position 0


@pytest.fixture(scope="module")
def trainer():
    return trl_search.build_search()


def test_off_by_one_on_the_smallest_row(trainer):
    """prompt "", chosen "the", rejected "the the": TRL counts [2, 3] tokens (EOS included), [1, 2] are scored."""
    draw = Draw(rows=(((), ("the",), ("the", "the")),))
    for loss_type in ("ipo", "sigmoid_norm"):
        out = trl_search.compare(trainer, draw, ((loss_type, 1.0),))
        assert not out["agree"] and out["trl_equals_mask_counts"], out
        assert out["trl_counts"] == [2, 3] and out["scored_counts"] == [1, 2]
    for loss_type in ("sigmoid", "sft", "hinge"):  # losses that do not divide by counts agree on the same row
        assert trl_search.compare(trainer, draw, ((loss_type, 1.0),))["agree"]


@pytest.mark.parametrize(
    "draw",
    [
        Draw(rows=((("the", "cat"), ("sat",), ("dog", "ran", "fast", "on", "the", "red", "mat")),)),
        Draw(rows=((("a",), ("big", "dog"), ("cat",)), (("no",), ("yes",), ("bad", "bad"))), conversational=True),
        Draw(rows=((("the", "cat", "is"), ("good", "dog", "ran"), ("bad",)),), max_length=4),
        Draw(
            rows=((("the", "cat", "is"), ("good", "dog", "ran"), ("bad",)),), max_length=3, truncation_mode="keep_end"
        ),
    ],
    ids=["lengths", "conversational", "keep_start", "keep_end"],
)
def test_every_loss_type_agrees_where_the_prompt_is_not_empty(trainer, draw):
    for loss_type in ("sigmoid", "robust", "aot", "sft", "ipo"):
        out = trl_search.compare(trainer, draw, ((loss_type, 1.0),))
        if draw.truncation_mode == "keep_end" and loss_type == "ipo":
            assert not out["agree"] and out["trl_equals_mask_counts"]  # the cut leaves a completion at position 0
        else:
            assert out["agree"], (loss_type, out)


@pytest.mark.slow
def test_search_finds_the_off_by_one_and_shrinks_it(trainer):
    result = trl_search.search(trainer, (("sigmoid_norm", 1.0),), max_examples=6)
    assert result.failed and "count-plus-one" in result.message, result.message
    assert "prompt ''" in result.message


@pytest.mark.slow
def test_full_search_every_loss_type():
    checks = {c.name: c for c in trl_search.run_search(max_examples=6)}
    failed = {n for n, c in checks.items() if c.failed}
    assert failed == {"search:ipo", "search:sigmoid_norm", "search:loss_weights:1*sigmoid+0.5*sft+0.25*ipo"}, failed


def test_padding_does_not_change_the_loss():
    assert all(c.passed for c in trl_batch.check_padding())


def test_left_padding_moves_every_token():
    import torch

    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "completion_mask": torch.tensor([[0, 1, 1], [1, 0, 0]]),
    }
    left = trl_batch.left_padded(batch, 0)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["completion_mask"].tolist() == [[0, 1, 1], [0, 0, 1]]


@pytest.mark.slow
def test_gradient_accumulation_sigmoid_holds_sft_does_not():
    assert trl_batch.check_accumulation("sigmoid").passed
    sft = trl_batch.check_accumulation("sft")
    assert sft.failed and "relative difference" in sft.message
