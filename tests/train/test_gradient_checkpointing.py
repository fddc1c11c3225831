"""`--gradient-checkpointing`: the step-0 loss and every gradient as without it; the layers are recomputed."""

from __future__ import annotations

import math

import pytest
import torch

import dpo_ref.train.loop as train_module
from dpo_ref.train import lora
from dpo_ref.train.config import check_config
from dpo_ref.train.data import PreferenceCollator, prepare_dataset
from dpo_ref.train.loop import SequenceScorer, TrainConfig, frozen_reference, preference_micro_batch
from dpo_ref.train.model import build_tiny_model, enable_gradient_checkpointing
from dpo_ref.train.tasks import ReversalTask, reversal_rows
from dpo_ref.train.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def batch():
    tokenizer = build_char_tokenizer()
    rows, _ = reversal_rows(ReversalTask(train_size=8, eval_size=2, max_len=5))
    pairs, _ = prepare_dataset(rows, tokenizer)
    return PreferenceCollator(tokenizer.pad_token_id)(pairs)  # 8 pairs: (16, T) rows


def step0_gradients(batch, *, checkpointing: bool, lora_r=None, broken=None):
    """(loss, (calls of layer 0's MLP, elements autograd saved in the forward), {name: grad}) of one preference
    micro-batch of a fresh tiny model (seed 3)."""
    cfg = check_config(TrainConfig(sft_steps=0, rpo_alpha=0.5, lora_r=lora_r))
    policy = build_tiny_model(build_char_tokenizer(), seed=3)
    reference = SequenceScorer(frozen_reference(policy))
    if checkpointing:
        enable_gradient_checkpointing(policy)
    if broken is not None:
        for layer in policy.model.layers:
            layer._gradient_checkpointing_func = broken
    if lora_r:
        torch.manual_seed(0)
        policy = lora.apply_lora(policy, r=lora_r, alpha=16.0, dropout=0.0, targets="all-linear")
    policy.train()
    calls, saved = [], []
    mlp = lora.inner_model(policy).model.layers[0].mlp
    mlp_forward = mlp.forward  # patched on the instance: forward hooks do not fire in the recomputation
    mlp.forward = lambda *args, **kwargs: (calls.append(1), mlp_forward(*args, **kwargs))[1]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.numel()), t)[1], lambda t: t):
        loss, _ = preference_micro_batch(cfg, SequenceScorer(policy), batch, ref_scorer=reference)
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    return loss.item(), (len(calls), sum(saved)), grads


def max_relative_difference(a: dict, b: dict) -> float:
    """max over parameters of |a - b|_inf / |b|_inf (a missing gradient of `a` counts as zeros)."""
    return max(
        (((a[k] if a[k] is not None else 0) - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30)).item() for k in b
    )


@pytest.mark.parametrize("lora_r", [None, 4])
def test_checkpointing_gives_the_same_loss_and_gradients(batch, lora_r):
    loss, (calls, saved), grads = step0_gradients(batch, checkpointing=False, lora_r=lora_r)
    loss_c, (calls_c, saved_c), grads_c = step0_gradients(batch, checkpointing=True, lora_r=lora_r)
    assert (calls, calls_c) == (1, 2)  # checkpointing is on: layer 0's MLP ran again in the backward pass
    assert saved_c < saved / 3  # and the forward kept less for the backward (measured: about a ninth)
    # The backward pass recomputes each layer's forward from its saved input with the same kernels on the same
    # inputs, so on CPU the activations, hence the loss and gradients, are the same numbers; tolerances allow
    # float32 rounding of a different reduction order (u = 2^-24 times the ~10^2-term sums of this model) all
    # the same: 1e-6 relative to each gradient's largest entry. Measured: 0 (bit for bit) on CPU.
    assert loss_c == loss
    assert grads.keys() == grads_c.keys() and len(grads) > 0
    assert max_relative_difference(grads_c, grads) <= 1e-6
    assert math.isfinite(loss)


def test_gradient_check_catches_a_checkpoint_that_cuts_the_graph(batch):
    """A 'checkpoint' that detaches each layer's input loses every gradient below it: the comparison sees it."""

    def detaching(forward, hidden, *args, **kwargs):
        return forward(hidden.detach(), *args, **kwargs)

    _, _, grads = step0_gradients(batch, checkpointing=False)
    _, _, broken = step0_gradients(batch, checkpointing=True, broken=detaching)
    assert max_relative_difference(broken, grads) > 0.5


def test_checkpointed_training_run_matches_the_plain_one(tmp_path):
    """Three updates of the trainer with and without --gradient-checkpointing: the same metrics (CPU)."""
    from tests.train.conftest import write_jsonl
    from tests.train.test_lora import small

    rows, held = reversal_rows(ReversalTask(train_size=24, eval_size=8, max_len=4))
    data = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "e.jsonl", held)
    plain = train_module.train(small(data, tmp_path / "plain", steps=3, lora_r=None))["history"]
    checkpointed = train_module.train(
        small(data, tmp_path / "ckpt", steps=3, lora_r=None, gradient_checkpointing=True)
    )["history"]
    assert abs(checkpointed[0]["loss"] - math.log(2)) < 1e-6
    for a, b in zip(plain, checkpointed):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
