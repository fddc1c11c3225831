"""`--dtype`: the mixed-precision policy. float32 master weights, bf16 autocast (CPU too), log-probs summed in
float32, float16 refused on CPU; the CUDA parts skipped (not faked) without a GPU."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_ref.errors import InputError
from dpo_ref.train.config import check_config
from dpo_ref.train.data import PreferenceCollator, prepare_dataset
from dpo_ref.train.loop import SequenceScorer, TrainConfig, train
from dpo_ref.train.model import build_tiny_model
from dpo_ref.train.precision import autocast, check_dtype
from dpo_ref.train.tasks import ReversalTask, reversal_rows
from dpo_ref.train.tokenizer import build_char_tokenizer
from tests.train.test_lora import small

BF16_U = 2.0**-8  # bf16 keeps 8 significant bits (7 stored + the implicit one): relative rounding 2^-8
FP32_U = 2.0**-24


def test_default_and_refusals():
    assert check_config(TrainConfig(device="cpu")).dtype == "float32"  # what dpo-ref did on CPU before --dtype
    assert check_config(TrainConfig(device="cpu", dtype="bfloat16")).dtype == "bfloat16"
    with pytest.raises(InputError, match=r"^--dtype float16 on CPU: .*use --dtype bfloat16 or float32$"):
        check_config(TrainConfig(device="cpu", dtype="float16"))
    with pytest.raises(InputError, match="--dtype must be one of float32, bfloat16, float16"):
        check_dtype("half", "cpu")


def test_autocast_follows_the_policy():
    linear, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    cpu = torch.device("cpu")
    with autocast(cpu, "bfloat16"):
        assert linear(x).dtype == torch.bfloat16
    with autocast(cpu, "float32"):
        assert linear(x).dtype == torch.float32
    with autocast(cpu):  # the default on CPU is float32
        assert linear(x).dtype == torch.float32


def test_bf16_log_probs_are_summed_in_float32():
    """Under bf16 autocast the logits are bf16 but the sequence log-probs are float32 sums: they equal the float64
    log-softmax of those same bf16 logits, summed, to float32 rounding, far closer than a bf16 sum gets."""
    tokenizer = build_char_tokenizer()
    rows, _ = reversal_rows(ReversalTask(train_size=8, eval_size=2, max_len=6))
    pairs, _ = prepare_dataset(rows, tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(pairs)
    model = build_tiny_model(tokenizer, seed=4)
    logits = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: logits.append(output))
    with torch.no_grad(), autocast(torch.device("cpu"), "bfloat16"):
        logps, counts = SequenceScorer(model)(batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert logits[0].dtype == torch.bfloat16 and logps.dtype == torch.float32
    # the independent sum: the scored positions in order (the scorer runs the head at those only, (S, V))
    mask = batch["labels"][:, 1:] != -100  # (N, T-1)
    target = batch["labels"][:, 1:][mask]  # (S,)
    per_token = logits[0].double().log_softmax(-1).gather(-1, target[:, None])[:, 0]  # (S,) float64
    rows_of = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]
    expected = torch.zeros(mask.shape[0], dtype=torch.float64).index_add(0, rows_of, per_token)  # (N,)
    # float32 log-softmax of V = 100 logits and a sum of n <= T terms: each step rounds by u = 2^-24 relative,
    # so |error| <= (n + V) u max|log p| per row in the worst case
    V, n = logits[0].shape[-1], int(counts.max())
    tolerance = (n + V) * FP32_U * expected.abs().max().item()
    assert (logps.double() - expected).abs().max().item() <= tolerance
    # sharp: the same sum in bf16 (what summing in the logits' dtype would give) misses by far more
    bf16_sum = torch.zeros(mask.shape[0], dtype=torch.bfloat16).index_add(0, rows_of, per_token.bfloat16())
    assert (bf16_sum.double() - expected).abs().max().item() > 100 * tolerance


@pytest.mark.parametrize("precompute_ref", [False, True])
def test_bf16_on_cpu_starts_at_ln2_with_float32_master_weights(data, tmp_path, precompute_ref):
    beta = 0.1
    bf16 = train(small(data, tmp_path / "bf16", lora_r=None, dtype="bfloat16", precompute_ref=precompute_ref))
    fp32 = train(small(data, tmp_path / "fp32", lora_r=None, precompute_ref=precompute_ref))
    first, first32 = bf16["history"][0], fp32["history"][0]
    # Policy and reference log-probs of a row are each within relative u = 2^-8 of their exact value, so
    # |h| <= 2u (|log pi(y_w)| + |log pi(y_l)|) and, as -log sigmoid(b h) = ln 2 - b h / 2 + O(h^2),
    # |loss - ln 2| <= beta u (|log pi(y_w)| + |log pi(y_l)|) (about 0.017 here). Measured on CPU: 1.9e-9, the
    # float32 rounding of ln 2 itself, live and precomputed alike: the same bf16 kernels compute both.
    bound = beta * BF16_U * (abs(first["logps/chosen"]) + abs(first["logps/rejected"]))
    assert abs(first["loss"] - math.log(2)) <= bound
    # bf16 is really on: the log-probs move from float32's by more than 10x float32's rounding of them, less than
    # bf16's (measured 7.2e-5 on -22.3: the untrained model's logits are ~0, so their bf16 rounding is small)
    moved = abs(first["logps/chosen"] - first32["logps/chosen"])
    assert 10 * FP32_U * abs(first32["logps/chosen"]) < moved < 2 * BF16_U * abs(first32["logps/chosen"])
    # master weights: every parameter (and so the AdamW update applied to it) stays float32
    assert all(p.dtype == torch.float32 for p in bf16["policy"].parameters())
    logged = [r for r in bf16["history"] if "loss" in r]
    assert all(math.isfinite(r["loss"]) for r in logged)


def test_bf16_step0_bound_catches_a_reference_that_is_not_the_policy(data, tmp_path, monkeypatch):
    """The bound is tight enough to see the classic mistake: the reference taken before the SFT warm-up."""
    import copy

    import dpo_ref.train.loop as train_module

    before = []
    original_warm_up = train_module.warm_up

    def keep_before(s, d):
        before.append(copy.deepcopy(d.policy))
        return original_warm_up(s, d)

    monkeypatch.setattr(train_module, "warm_up", keep_before)
    monkeypatch.setattr(train_module, "frozen_reference", lambda model: before[0].eval().requires_grad_(False))
    first = train(small(data, tmp_path, lora_r=None, dtype="bfloat16", steps=1, sft_steps=20, sft_lr=3e-3))
    first = first["history"][0]
    bound = 0.1 * BF16_U * (abs(first["logps/chosen"]) + abs(first["logps/rejected"]))
    assert abs(first["loss"] - math.log(2)) > bound


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_starts_at_ln2_and_trains(data, tmp_path, dtype):
    summary = train(small(data, tmp_path, lora_r=None, device="cuda", dtype=dtype, steps=10, eval_every=10))
    assert abs(summary["history"][0]["loss"] - math.log(2)) < 1e-6
    assert all(p.dtype == torch.float32 for p in summary["policy"].parameters())
    assert all(math.isfinite(r["loss"]) for r in summary["history"] if "loss" in r)
