"""Batch composition in torchtune 0.6.1's DPO recipe (`dpo_ref.oracle.adapters.torchtune_batch`).

The recipe's own `concatenated_forward` and its step's arithmetic (mean over pairs, divided by the accumulation
steps) on dpo_ref's tiny Llama: accumulation holds to float64 rounding; left padding changes the loss, because the
recipe calls the model with no attention mask (recipes/lora_dpo_single_device.py:494) and relies on
padded_collate_dpo padding on the right (torchtune/data/_collate.py:558-563). Each check is shown to bite.
"""

from __future__ import annotations

import pytest

from dpo_ref.errors import InputError


@pytest.fixture(scope="module")
def tb():
    from dpo_ref.oracle.adapters import torchtune_batch

    try:
        torchtune_batch.recipe()
    except (InputError, FileNotFoundError) as err:
        pytest.skip(f"torchtune's DPO recipe cannot be loaded: {err}")
    return torchtune_batch


def test_accumulation_holds_and_bites(tb, monkeypatch):
    assert tb.check_accumulation("DPOLoss").status == "passed"
    step = tb._step

    def summed(policy, reference, batch, loss_name, accumulation):  # loss.sum() / GAS: the batch size leaks in
        return step(policy, reference, batch, loss_name, accumulation) * (batch[0].shape[0] // 2)

    monkeypatch.setattr(tb, "_step", summed)
    result = tb.check_accumulation("DPOLoss")
    assert result.status == "failed" and "|micro| / |full| = 0.25" in result.message, result.message


def test_left_padding_changes_the_loss(tb):
    right, left = tb.check_padding("DPOLoss")
    assert right.status == "passed", right.message
    assert left.status == "failed" and "relative" in left.message
    batch = tb.collate(tb.rows())
    base, moved = tb.batch_loss(batch), tb.batch_loss(tb.padded_left(batch))
    assert abs(moved - base) > 1e-3 * abs(base)  # far beyond float64 rounding: the model sees the pads


def test_padding_helpers_keep_the_rows(tb):
    batch = tb.collate(tb.rows())
    ids, labels = tb.padded_left(batch)
    pad = tb.tiny.tokenizer().pad_token_id
    for i in range(ids.shape[0]):
        assert ids[i][ids[i] != pad].tolist() == batch[0][i][batch[0][i] != pad].tolist()
        assert labels[i][labels[i] != -100].tolist() == batch[1][i][batch[1][i] != -100].tolist()
    ids, labels = tb.padded_right(batch, 5)
    assert ids.shape[1] == batch[0].shape[1] + 5 and (labels[:, -5:] == -100).all()
