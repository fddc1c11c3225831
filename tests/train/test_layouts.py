"""Prefix sharing and packing in the trainer, proven equal to the two-sequence layout.

1. The trainer's batch log-prob path in each layout passes the oracle's pipeline level (`dpo-ref verify
   dpo_ref.train.layouts:prefix_sharing --level pipeline`): every row equals the row scored alone, in float64,
   on a Llama and a GPT-2, and a layout with the block mask left out is rejected.
2. Training with each flag gives ln 2 at step 0 and the same losses and weights as the two-sequence layout over
   a short run. Tolerance: the layouts compute the same sums of the same log-probs in float32 but in another
   order (other rows, other padding, a 4-D mask), so losses agree to float32 rounding carried through a few
   updates (relative 1e-4; float32 eps is 1.2e-7). Weights go through AdamW, whose step g / sqrt(v) is
   scale-free: where a gradient is itself at rounding level, a rounding difference moves that coordinate by up
   to lr per step, so the bound on the largest difference is a fraction of lr x steps (1e-2 of it, 1.2e-4),
   and nearly every coordinate (99 %) must agree to 1e-6. Measured on this run: largest 8.2e-6, none above 1e-5.
3. Rows of very different lengths, one-token completions, prompts that fill most of --max-length.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import dpo_ref
from dpo_ref.train import layouts
from dpo_ref.train.data import TokenizedPair
from dpo_ref.train.loop import train
from tests.train.test_train import small, state

BOTH = dict(prefix_sharing=True, packing=True, max_length=64)
LAYOUT_TARGETS = ("two_sequence", "prefix_sharing", "packing", "prefix_sharing_packed",
                  "prefix_sharing_segments", "packing_segments", "prefix_sharing_packed_segments")  # fmt: skip


@pytest.mark.parametrize("name", LAYOUT_TARGETS)
def test_each_layout_passes_the_pipeline_level(name, full):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dpo_ref.verify(f"dpo_ref.train.layouts:{name}", level="pipeline", max_examples=None if full else 4)
    assert report.passed, report.to_text()
    assert report.detected["convention"].startswith("separate+bos+eos") or "separate" in report.detected["convention"]


def test_a_prefix_layout_without_its_block_mask_is_rejected(monkeypatch):
    """The rejected tokens seeing the chosen ones (the mask's point) is what the oracle catches."""
    real = layouts.collate

    def leaky(pairs, layout, pad, max_length=None):
        batch = real(pairs, layout, pad, max_length)
        m = batch["attention_mask"]
        batch["attention_mask"] = m | torch.ones_like(m).tril()  # causal over the whole row: rejected sees chosen
        return batch

    monkeypatch.setattr(layouts, "collate", leaky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dpo_ref.verify(layouts.pipeline("prefix-sharing"), level="pipeline", max_examples=4, fail_fast=True)
    assert not report.passed


def _pairs():
    return [
        TokenizedPair([5, 6, 7, 8, 9, 10, 11], [12], [13], 0),  # a long prompt, one-token completions
        TokenizedPair([5], [6, 7, 8, 9, 10, 11, 12, 13, 14], [15, 16], 1),  # a one-token prompt, a long completion
        TokenizedPair([7, 8], [9, 10], [11, 12, 13], 2),
    ]


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
@pytest.mark.parametrize("max_length", [None, 12])
def test_layouts_score_what_two_sequences_score(layout, max_length):
    from dpo_ref.train.model import TinyLlamaSize, llama_config, tiny_llama

    size = TinyLlamaSize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = tiny_llama(llama_config(32, size), seed=0).double().eval()
    pairs = _pairs()
    expected = []  # each sequence alone, unpadded, positions 0..L-1
    for side in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            ids = p.prompt_ids + getattr(p, side)
            lp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            expected.append(sum(float(lp[t - 1, ids[t]]) for t in range(len(p.prompt_ids), len(ids))))
    batch = layouts.collate(pairs, layout, 0, max_length if layout in ("packing", "both") else None)
    logps, counts = layouts.score(model, batch)
    assert torch.allclose(logps, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    assert counts.tolist() == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    if layout in ("packing", "both") and max_length is not None:
        assert batch["input_ids"].shape[1] <= max_length


@pytest.mark.parametrize("flags", [dict(prefix_sharing=True), dict(packing=True, max_length=64),
                                   dict(prefix_sharing=True, packing=True, max_length=64),
                                   dict(BOTH, attention="mask")])  # fmt: skip
def test_training_with_a_layout_equals_two_sequences(data, tmp_path, flags):  # noqa: F811
    base = train(small(data, tmp_path / "base", steps=4, max_length=64))
    other = train(small(data, tmp_path / "other", steps=4, **{"max_length": 64, **flags}))
    assert abs(other["history"][0]["loss"] - math.log(2)) < 1e-6
    assert len(base["history"]) == len(other["history"])
    for a, b in zip(base["history"], other["history"]):
        assert a["step"] == b["step"] and a.keys() == b.keys()
        for key in ("loss", "eval/loss", "logps/chosen", "logps/rejected"):
            if key in a:
                assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)
    w_base, w_other = state(_load(tmp_path / "base")), state(_load(tmp_path / "other"))
    diff = torch.cat([(w_base[k] - w_other[k]).abs().flatten() for k in w_base])
    lr, steps = 3e-3, 4
    assert float(diff.max()) <= 1e-2 * lr * steps  # measured: <= 8.2e-6
    assert float((diff > 1e-6).float().mean()) <= 0.01


def _load(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out / "model"))


def test_a_sequence_longer_than_a_packed_row_gets_a_row_of_its_own():
    batch = layouts.collate(_pairs(), "both", 0, max_length=5)
    assert batch["input_ids"].shape[0] == 3  # each shared row (>= 9 tokens) alone, none split


# ---------------------------------------------------------------------------------------------- resume, DDP


def test_resume_with_both_layouts_continues_exactly(data, tmp_path):  # noqa: F811
    """A run stopped and resumed in the packed shared-prefix layout equals the uninterrupted run bit for bit
    (the same batches in the same order through the same kernels: nothing may differ, not even rounding)."""
    settings = dict(steps=6, eval_every=3, **BOTH)
    full = train(small(data, tmp_path / "full", **settings))
    train(small(data, tmp_path / "resumed", stop_after=3, **settings))
    resumed = train(small(data, tmp_path / "resumed", resume=True, **settings))
    a, b = state(full["policy"]), state(resumed["policy"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    from dpo_ref.train.loop import read_metrics

    assert read_metrics(full["metrics"]) == read_metrics(resumed["metrics"])


@pytest.mark.slow
def test_torchrun_two_processes_in_both_layouts_match_one_process(data, tmp_path):  # noqa: F811
    """DDP with --prefix-sharing --packing: two processes at batch 2 end where one process at batch 4 ends (each
    process packs its own half of the global batch; the loss is the mean over pairs either way). Tolerance: the
    module docstring's (Adam on rounding-level gradients)."""
    import os
    import subprocess
    import sys

    from tests.train.test_train import ROOT, _cli_args, _weights

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dpo_ref"]
    flags = ["--prefix-sharing", "--packing", "--max-length", "64"]
    run = subprocess.run(
        command + _cli_args(data, tmp_path / "ddp", 2) + flags, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    single = train(small(data, tmp_path / "single", steps=3, sft_steps=2, batch_size=4, rpo_alpha=0.5, **BOTH))
    ddp, one = _weights(str(tmp_path / "ddp" / "model")), state(single["policy"])
    # each process packs its own half, so rows (and float32 summation order) differ more than in the plain DDP
    # test: the module docstring's AdamW bound, over 2 SFT + 3 DPO updates at lr 3e-3 (measured: one coordinate
    # of 4096 in one matrix at 1.7e-5, the rest at rounding)
    diff = torch.cat([(ddp[k] - one[k]).abs().flatten() for k in ddp])
    assert float(diff.max()) <= 1e-2 * 3e-3 * 5
    assert float((diff > 1e-6).float().mean()) <= 0.01
