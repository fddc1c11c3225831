"""LoRA (`--lora-r`): ln 2 at step 0, the reference is the policy's own weights with the adapters off, only the
adapters train, OUT/model loads with peft, --merge-lora loads with transformers and computes the adapter model."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import dpo_ref.train.loop as train_module
from dpo_ref.train import lora
from dpo_ref.train.loop import TrainConfig, read_metrics, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = torch.tensor([[1, 69, 70, 34, 71, 72], [1, 73, 74, 75, 34, 69]])  # two rows of the character vocabulary


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A local HF directory: a tiny Llama (untied embeddings) and the character tokenizer."""
    from dpo_ref.train.model import build_tiny_model
    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    directory = str(tmp_path_factory.mktemp("hf") / "llama")
    build_tiny_model(tokenizer, seed=7).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def small(data, out, **overrides) -> TrainConfig:
    cfg = dict(
        data=data[0], eval_data=data[1], out=str(out), sft_steps=0, rpo_alpha=0.0, batch_size=4, steps=4, lr=1e-2,
        warmup_steps=0, log_every=1, eval_every=1000, save_every=1000, progress=False, lora_r=4,
    )  # fmt: skip
    cfg.update(overrides)
    return TrainConfig(**cfg)


def storages(module: torch.nn.Module) -> set[int]:
    """The data pointers of every parameter's and buffer's storage: how many copies of weights exist."""
    return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}


@pytest.fixture
def captured_reference(monkeypatch):
    """The `Reference` make_reference returns, kept for the test."""
    seen = []
    original = train_module.make_reference

    def keep(s, d):
        seen.append((original(s, d), d.policy))
        return seen[-1][0]

    monkeypatch.setattr(train_module, "make_reference", keep)
    return seen


# ---------------------------------------------------------------------------------------------- step 0, the reference


@pytest.mark.parametrize("sft_steps", [0, 3])
def test_lora_step0_is_ln2_and_the_reference_is_the_policys_own_weights(data, tmp_path, captured_reference, sft_steps):
    summary = train(small(data, tmp_path, sft_steps=sft_steps, steps=2))
    first = summary["history"][0]
    # h = 0 exactly (the same modules compute policy and reference, B = 0 adds exact zeros): only the float32
    # rounding of -log sigmoid(0) and of the mean over pairs remains, far below 1e-6
    assert abs(first["loss"] - math.log(2)) < 1e-6 and first["logratio/chosen"] == 0.0
    ref, policy = captured_reference[0]
    assert lora.is_peft(policy)
    # no second copy: every tensor the reference computes with is one of the policy's
    assert storages(ref.scorer) <= storages(policy)
    assert sum(p.numel() for p in ref.scorer.parameters()) == sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.parameters())
    # the adapters only: r (in + out) per q_proj and v_proj (64 x 64) in each of the 2 layers
    assert trainable == 2 * 2 * 4 * (64 + 64) and trainable < total / 10


def test_the_storage_count_sees_a_copied_reference(data, tmp_path, captured_reference):
    """Without LoRA the reference is a frozen copy: the same count finds storages the policy does not own."""
    train(small(data, tmp_path, steps=1, lora_r=None))
    ref, policy = captured_reference[0]
    assert not storages(ref.scorer) & storages(policy)


def test_step0_check_catches_a_warm_up_left_in_the_adapters(data, tmp_path, monkeypatch):
    """Without folding the warmed-up adapters into the base, the reference (adapters off) is the model before the
    warm-up: h != 0 at step 0."""
    monkeypatch.setattr(lora, "fold_adapters", lambda model: None)
    summary = train(small(data, tmp_path, sft_steps=3, sft_lr=1e-2, steps=1))
    assert abs(summary["history"][0]["loss"] - math.log(2)) > 1e-4


def test_only_the_adapters_train(data, tmp_path, llama_dir):
    from safetensors.torch import load_file

    summary = train(small(data, tmp_path, model=llama_dir, steps=3))
    base = lora.base_state_dict(summary["policy"], merged=False)
    original = load_file(os.path.join(llama_dir, "model.safetensors"))
    assert base.keys() == original.keys()
    assert all(torch.equal(base[k], original[k]) for k in original)
    merged = lora.base_state_dict(summary["policy"], merged=True)
    moved = [k for k in original if not torch.equal(merged[k], original[k])]
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved)


@pytest.mark.parametrize("precompute_ref", [False, True])
def test_lora_with_precomputed_reference_and_reference_free_losses(data, tmp_path, precompute_ref):
    summary = train(small(data, tmp_path / "dpo", steps=2, precompute_ref=precompute_ref, eval_every=1))
    assert abs(summary["history"][0]["loss"] - math.log(2)) < 1e-6
    assert summary["history"][-1]["eval/accuracy"] >= 0.0
    if not precompute_ref:  # SimPO: no reference at all; its step 0 is its value at h = 0 only with a reference
        free = train(small(data, tmp_path / "simpo", loss="simpo", steps=2))
        logged = [r for r in free["history"] if "loss" in r]
        assert "logratio/chosen" not in logged[0] and all(math.isfinite(r["loss"]) for r in logged)


def _improved(summary) -> bool:
    last = [r for r in summary["history"] if "eval/loss" in r][-1]
    return last["eval/loss"] < math.log(2) - 0.05 and last["eval/accuracy"] > 0.8


def test_lora_learns(data, tmp_path):
    """40 steps of rank-16 adapters fit the training pairs, scored on themselves: loss 0.590 and 0.602, accuracy
    0.96 at seeds 0 and 1 (measured; held-out pairs of the tiny model move too little in 40 steps to be a stable
    criterion: 0.664 on one machine, 0.685 on another); a learning rate of ~0 stays at ln 2."""
    settings = dict(
        steps=40, batch_size=8, eval_every=40, log_every=10, lr=3e-3, lora_r=16, lora_alpha=32.0,
        lora_target_modules="all-linear", eval_data=data[0],
    )  # fmt: skip
    assert _improved(train(small(data, tmp_path / "a", **settings)))
    assert not _improved(train(small(data, tmp_path / "b", **{**settings, "lr": 1e-12})))


def test_lora_resumes_exactly(data, tmp_path):
    settings = dict(steps=4, sft_steps=2)
    full = train(small(data, tmp_path / "full", **settings))
    train(small(data, tmp_path / "resumed", stop_after=2, **settings))
    resumed = train(small(data, tmp_path / "resumed", resume=True, **settings))
    a, b = full["policy"].state_dict(), resumed["policy"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(full["metrics"]) == read_metrics(resumed["metrics"])


# ---------------------------------------------------------------------------------------------- OUT/model


def _logits(model, ids=IDS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits  # (N, T, V)


def test_saved_adapters_load_with_peft_on_the_model_directory(data, tmp_path, llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary = train(small(data, tmp_path, model=llama_dir, steps=3))
    model_dir = summary["model_dir"]
    assert os.path.exists(os.path.join(model_dir, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(model_dir, lora.BASE_DIR))  # the base is --model as it is
    with lora.peft_without_old_torchao():
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), model_dir)
    # the same modules and weights compute the same thing, bit for bit
    assert torch.equal(_logits(loaded), _logits(summary["policy"]))
    with loaded.disable_adapter():
        assert not torch.equal(_logits(loaded), _logits(summary["policy"]))  # the adapters matter


def test_built_in_model_writes_the_base_the_adapters_apply_to(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary = train(small(data, tmp_path, steps=2, sft_steps=2))
    base_dir = os.path.join(summary["model_dir"], lora.BASE_DIR)
    with lora.peft_without_old_torchao():
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), summary["model_dir"])
    assert torch.equal(_logits(loaded), _logits(summary["policy"]))


def _float64_merge(llama_dir: str, adapter_dir: str, scale: float) -> dict[str, torch.Tensor]:
    """W + scale B A in float64 from the two files alone: an independent merge."""
    from safetensors.torch import load_file

    base = {k: v.double() for k, v in load_file(os.path.join(llama_dir, "model.safetensors")).items()}
    adapters = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    for key, a in adapters.items():
        if ".lora_A." not in key:
            continue
        b = adapters[key.replace(".lora_A.", ".lora_B.")]
        target = key.split("base_model.model.", 1)[1].replace(".lora_A.weight", ".weight")
        base[target] = base[target] + scale * (b.double() @ a.double())
    return base


@pytest.fixture(scope="module")
def merged_run(data, tmp_path_factory, llama_dir):
    """A LoRA run long enough (lr 1e-2, 6 steps, scale alpha / r = 8) for the adapters to move the logits."""
    out = tmp_path_factory.mktemp("merged")
    settings = dict(model=llama_dir, steps=6, lora_alpha=32.0)
    adapters = train(small(data, out / "adapters", **settings))
    merged = train(small(data, out / "merged", merge_lora=True, **settings))
    return adapters, merged


def test_merge_lora_writes_weights_transformers_loads_computing_the_adapter_model(merged_run, llama_dir):
    from transformers import AutoModelForCausalLM

    adapters, merged = merged_run
    loaded = AutoModelForCausalLM.from_pretrained(merged["model_dir"])  # transformers alone, no peft
    assert not os.path.exists(os.path.join(merged["model_dir"], "adapter_config.json"))
    # the merged weights are W + (alpha / r) B A computed independently in float64 from the adapter run's files
    # (the two runs are the same computation, so their adapters are equal bit for bit): to float32 rounding
    expected = _float64_merge(llama_dir, adapters["model_dir"], 32.0 / 4)
    state = loaded.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key].double(), value, rtol=0, atol=4 * 2**-24 * value.abs().max().item())
    # the logits: the adapter model computes x W^T + s (x A^T) B^T, the merged one x (W + s B A)^T: the same
    # sums in another order, so they differ by float32 rounding only. A dot product of n terms in float32 is exact
    # to n u sum|x_i w_i| (u = 2^-24; n <= 128, the MLP's width) in the worst case; through the model's few
    # products and normalisations that is below 1e-5 on these O(1) logits
    adapter_logits, merged_logits = _logits(adapters["policy"]), _logits(loaded)
    difference = (adapter_logits - merged_logits).abs().max().item()
    assert difference < 1e-5, difference
    # the comparison is sharp: the adapters move the logits by far more than the tolerance
    with adapters["policy"].disable_adapter():
        assert (_logits(adapters["policy"]) - adapter_logits).abs().max().item() > 1e-3


def test_merge_check_catches_a_merge_without_the_scale(data, tmp_path, llama_dir, merged_run, monkeypatch):
    """A merge that forgets alpha / r (adds B A) writes weights whose logits differ from the adapter model's."""
    from peft.tuners.lora.layer import Linear
    from transformers import AutoModelForCausalLM

    adapters, _ = merged_run

    original = Linear.get_delta_weight
    monkeypatch.setattr(Linear, "get_delta_weight", lambda self, a: original(self, a) / self.scaling[a])
    broken = train(small(data, tmp_path, model=llama_dir, steps=6, lora_alpha=32.0, merge_lora=True))
    loaded = AutoModelForCausalLM.from_pretrained(broken["model_dir"])
    assert (_logits(adapters["policy"]) - _logits(loaded)).abs().max().item() > 1e-5


# ---------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_lora_torchrun_two_processes_match_one_process(data, tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dpo_ref"]
    args = [
        "train", "--data", data[0], "--eval-data", data[1], "--out", str(tmp_path / "ddp"), "--steps", "3",
        "--sft-steps", "2", "--batch-size", "2", "--log-every", "1", "--eval-every", "1000", "--warmup-steps", "0",
        "--lr", "1e-2", "--rpo-alpha", "0", "--lora-r", "4", "--no-progress",
    ]  # fmt: skip
    run = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = train(small(data, tmp_path / "single", steps=3, sft_steps=2, batch_size=4))
    ddp = load_file(str(tmp_path / "ddp" / "model" / "adapter_model.safetensors"))
    one = {k: v for k, v in single["policy"].state_dict().items() if ".lora_" in k}
    assert len(ddp) == len(one) > 0
    for key, value in ddp.items():
        # Adam divides by sqrt(v): a weight whose gradient is ~0 moves by up to lr per step on rounding alone
        match = [k for k in one if k.replace(".default", "") == key]
        torch.testing.assert_close(value, one[match[0]], rtol=1e-4, atol=1e-5)
    losses_ddp = [r["loss"] for r in read_metrics(str(tmp_path / "ddp" / "metrics.jsonl")) if "loss" in r]
    losses_one = [r["loss"] for r in read_metrics(single["metrics"]) if "loss" in r]
    assert losses_ddp == pytest.approx(losses_one, rel=1e-5, abs=1e-6)
    assert abs(losses_ddp[0] - math.log(2)) < 1e-6
    # sharp: one process with half the global batch ends elsewhere
    half = train(small(data, tmp_path / "half", steps=3, sft_steps=2, batch_size=2))["policy"].state_dict()
    assert not all(
        torch.allclose(value, half[[k for k in half if k.replace(".default", "") == key][0]], rtol=1e-4, atol=1e-5)
        for key, value in ddp.items()
    )


def test_lora_without_peft_installed_is_refused_in_one_line(monkeypatch):
    import sys

    from dpo_ref.errors import InputError
    from dpo_ref.train.config import check_lora

    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: find_spec answers None
    with pytest.raises(InputError, match=r"--lora-r needs peft, which is not installed: pip install 'dpo-ref\[lora\]'"):
        check_lora(TrainConfig(lora_r=4))
