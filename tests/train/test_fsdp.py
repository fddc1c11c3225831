"""`--fsdp` (FSDP2): two processes equal one at the same global batch, a resumed run equals an uninterrupted one,
OUT/model loads with transformers (and LoRA's with peft), and the refusals.

The quick tier runs FSDP over one process in this process (a gloo group of one): sharding, the DCP checkpoint,
resume and the consolidated OUT/model, without torchrun; and the refusals. The slow tier adds tied weights (one
process) and runs `torchrun --nproc_per_node=2`: the equality with one process, resume, a kill, LoRA.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dpo_ref.train.config import check_fsdp
from dpo_ref.train.loop import TrainConfig, read_metrics, train
from tests.train.conftest import save_tiny_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
for _name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # set by torchrun for the children only
    ENV.pop(_name, None)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# Two processes against one at the same global batch: the same arithmetic but for the order of the gradient
# reduction (gloo averages the two halves' gradients; one process sums all rows at once) and of the float32
# sums it feeds, each good to ~1e-7 relative. Adam divides by sqrt(v), so a weight whose gradient is ~0 can move
# by up to lr (3e-3) per step on such rounding alone: atol 1e-5 admits 1/300 of that, rtol 1e-4 a few hundred
# float32 ulps of accumulated rounding over 2 warm-up + 3 preference steps. Measured: 7.4e-6 max abs.
RTOL, ATOL = 1e-4, 1e-5
METRIC_RTOL = 1e-5  # the logged losses and gradient norms: sums of float32 terms, no division by sqrt(v)


def small(data, out, **overrides) -> TrainConfig:
    cfg = dict(
        data=data[0], eval_data=data[1], out=str(out), sft_steps=2, rpo_alpha=0.5, batch_size=4, steps=3, lr=3e-3,
        warmup_steps=0, log_every=1, eval_every=1000, save_every=1000, progress=False,
    )  # fmt: skip
    cfg.update(overrides)
    return TrainConfig(**cfg)


def cli_args(data, out, *extra: str) -> list[str]:
    return [
        "train", "--data", data[0], "--eval-data", data[1], "--out", str(out), "--steps", "3", "--sft-steps", "2",
        "--rpo-alpha", "0.5", "--log-every", "1", "--eval-every", "1000", "--warmup-steps", "0", "--lr", "3e-3",
        "--no-progress", *extra,
    ]  # fmt: skip


def torchrun(args: list[str], module: list[str] | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run(
        TORCHRUN + (module or ["-m", "dpo_ref"]) + args, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(str(directory), "model.safetensors"))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logged(path, name: str) -> list[float]:
    return [r[name] for r in read_metrics(str(path)) if name in r]


def assert_same_training(out, single: dict) -> None:
    """OUT/model and OUT/metrics.jsonl of the FSDP run `out` against the one-process run `single`."""
    mine, one = weights(os.path.join(out, "model")), state(single["policy"])
    assert mine.keys() == one.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], one[k], rtol=RTOL, atol=ATOL)
    for name in ("loss/total", "grad_norm"):  # grad_norm: the reduction's scale (Adam alone is blind to it)
        assert logged(os.path.join(out, "metrics.jsonl"), name) == pytest.approx(
            logged(single["metrics"], name), rel=METRIC_RTOL
        ), name


# ---------------------------------------------------------------------------------------------- refusals


def _refused(capsys, tmp_path, *extra: str) -> str:
    from dpo_ref.cli import main

    out = tmp_path / "out"
    assert main(["train", "--out", str(out), "--no-progress", "--fsdp", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written
    return err


TORCHRUN_ENV = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512"}


def _as_torchrun(monkeypatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)


def test_fsdp_without_torchrun_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert "--fsdp shards over the processes torchrun starts, and WORLD_SIZE, RANK" in _refused(capsys, tmp_path)


def test_world_size_alone_is_not_torchrun(capsys, tmp_path, monkeypatch):
    """WORLD_SIZE set by hand without the rest: one line naming what is missing, not torch's traceback."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    err = _refused(capsys, tmp_path)
    assert "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set" in err


def test_fsdp_with_merge_lora_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    _as_torchrun(monkeypatch)
    assert "--fsdp with --merge-lora" in _refused(capsys, tmp_path, "--lora-r", "4", "--merge-lora")


def test_fsdp_with_float16_is_refused():
    from dpo_ref.errors import InputError

    # on a CPU-only machine --dtype float16 is refused before (no CUDA): the FSDP check itself, called directly
    with pytest.raises(InputError, match="--fsdp with --dtype float16"):
        check_fsdp(TrainConfig(fsdp=True, dtype="float16"), environ=TORCHRUN_ENV)
    check_fsdp(TrainConfig(fsdp=True, dtype="bfloat16"), environ=TORCHRUN_ENV)  # bfloat16 is fine


def test_fsdp_is_a_resume_key(data, tmp_path, monkeypatch):
    from dpo_ref.errors import InputError

    train(small(data, tmp_path, steps=2, stop_after=1, sft_steps=0))
    _as_torchrun(monkeypatch)
    with pytest.raises(InputError, match=r"fsdp=False \(this run: True\)"):
        train(small(data, tmp_path, steps=2, sft_steps=0, resume=True, fsdp=True))


# ---------------------------------------------------------------------------------------------- one process


@pytest.fixture
def group_of_one(tmp_path, monkeypatch):
    """A gloo process group of one in this process, as torchrun --nproc_per_node=1 would give."""
    import torch.distributed as dist

    for name, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_over_one_process_trains_resumes_and_exports_as_without_it(data, tmp_path, group_of_one):
    from transformers import AutoModelForCausalLM

    settings = dict(steps=4, save_every=2, fsdp=True)
    full = train(small(data, tmp_path / "full", **settings))
    assert os.path.isdir(os.path.join(full["out"], "checkpoint.dcp"))
    stopped = train(small(data, tmp_path / "resumed", stop_after=3, **settings))
    assert stopped["stopped"] and "model_dir" not in stopped
    resumed = train(small(data, tmp_path / "resumed", resume=True, **settings))
    a, b = weights(full["model_dir"]), weights(resumed["model_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resume: bit for bit
    assert read_metrics(full["metrics"]) == read_metrics(resumed["metrics"])
    # OUT/model loads with transformers alone and computes what the trained (sharded) policy computes
    loaded = AutoModelForCausalLM.from_pretrained(full["model_dir"]).eval()
    ids = torch.tensor([[1, 69, 70, 34, 71]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, full["policy"].eval()(input_ids=ids).logits)
    # one shard is the whole weight: the run without FSDP, to rounding (under FSDP the output layer runs at every
    # position, then the scored ones are picked: the same sums in another order; tolerances as for two processes)
    plain = state(train(small(data, tmp_path / "plain", steps=4, save_every=2))["policy"])
    assert a.keys() == plain.keys()
    for k in a:
        torch.testing.assert_close(a[k], plain[k], rtol=RTOL, atol=ATOL)


def test_a_damaged_shard_is_refused_in_one_line_not_loaded(data, tmp_path, group_of_one):
    from dpo_ref.errors import InputError

    settings = dict(steps=2, sft_steps=0, fsdp=True)
    train(small(data, tmp_path, stop_after=1, **settings))
    with open(tmp_path / "checkpoint.dcp" / "__0_0.distcp", "r+b") as f:
        f.truncate(100)  # as a full disk leaves it
    with pytest.raises(InputError, match=r"checkpoint\.dcp' cannot be read: EOFError"):
        train(small(data, tmp_path, resume=True, **settings))


@pytest.fixture(scope="module")
def tied_gpt2_dir(tmp_path_factory):
    """A local GPT-2 (another family) whose output layer is its input embedding (tied)."""
    return save_tiny_gpt2(str(tmp_path_factory.mktemp("hf") / "gpt2"), tie_word_embeddings=True)


@pytest.mark.slow
def test_tied_weights_are_gathered_as_one_tensor_as_without_fsdp(data, tmp_path, group_of_one, tied_gpt2_dir):
    from dpo_ref.train.rundir import read_metadata

    settings = dict(model=tied_gpt2_dir, steps=2, sft_lr=3e-3)
    sharded = train(small(data, tmp_path / "fsdp", fsdp=True, **settings))
    plain = train(small(data, tmp_path / "plain", **settings))
    a, b = weights(sharded["model_dir"]), weights(plain["model_dir"])
    assert a.keys() == b.keys() and "lm_head.weight" not in a  # written once, under the embedding's name
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL)  # RTOL, ATOL: see above
    sft = [read_metadata(os.path.join(run["out"], "sft.safetensors"))["aliases"] for run in (sharded, plain)]
    assert sft[0] == sft[1] == {"lm_head.weight": "transformer.wte.weight"}


# ---------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_two_fsdp_processes_match_one_process_and_a_summing_reduction_is_caught(data, tmp_path):
    single = train(small(data, tmp_path / "single"))
    torchrun(cli_args(data, tmp_path / "fsdp", "--fsdp", "--batch-size", "2"))
    assert_same_training(str(tmp_path / "fsdp"), single)
    assert abs(logged(tmp_path / "fsdp" / "metrics.jsonl", "loss")[0] - math.log(2)) < 1e-6
    with open(tmp_path / "fsdp" / "model" / "config.json") as f:
        assert json.load(f)["architectures"] == ["LlamaForCausalLM"]  # not the FSDP wrapper's class
    # the comparison is sharp: gradients summed over the processes, not averaged, fail it ...
    broken = tmp_path / "summed"
    torchrun(cli_args(data, broken, "--fsdp", "--batch-size", "2"), ["tests/train/fsdp_summed_gradients.py"])
    with pytest.raises(AssertionError, match="grad_norm|not close"):  # by its grad norms, or already its weights
        assert_same_training(str(broken), single)
    # ... and one process at half the global batch ends elsewhere
    half = state(train(small(data, tmp_path / "half", batch_size=2))["policy"])
    mine = weights(tmp_path / "fsdp" / "model")
    assert not all(torch.allclose(mine[k], half[k], rtol=RTOL, atol=ATOL) for k in mine)


@pytest.mark.slow
def test_a_resumed_two_process_fsdp_run_equals_the_uninterrupted_one_bit_for_bit(data, tmp_path):
    settings = ["--fsdp", "--batch-size", "2", "--steps", "6", "--save-every", "2", "--gradient-checkpointing"]
    torchrun(cli_args(data, tmp_path / "full", *settings))
    torchrun(cli_args(data, tmp_path / "resumed", *settings, "--stop-after", "3"))
    assert not os.path.exists(tmp_path / "resumed" / "model")
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoint.dcp")) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "run_state.json"
    ]  # fmt: skip
    torchrun(cli_args(data, tmp_path / "resumed", *settings, "--resume"))
    a, b = weights(tmp_path / "full" / "model"), weights(tmp_path / "resumed" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(str(tmp_path / "full" / "metrics.jsonl")) == read_metrics(
        str(tmp_path / "resumed" / "metrics.jsonl")
    )


@pytest.mark.slow
def test_a_kill_while_the_sharded_checkpoint_is_swapped_in_keeps_the_previous_one(data, tmp_path):
    from dpo_ref.train.rundir import KILL_IN_CHECKPOINT_ENV

    settings = ["--fsdp", "--batch-size", "2", "--steps", "6", "--save-every", "2"]
    torchrun(cli_args(data, tmp_path / "full", *settings))
    out = tmp_path / "killed"
    # the main process is SIGKILLed after every shard of step 4's checkpoint is written, before the swap
    run = subprocess.run(
        TORCHRUN + ["-m", "dpo_ref"] + cli_args(data, out, *settings),
        env={**ENV, KILL_IN_CHECKPOINT_ENV: "4"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode != 0
    with open(out / "checkpoint.dcp" / "run_state.json") as f:
        assert json.load(f)["step"] == 2  # the previous checkpoint, whole
    assert os.path.isdir(out / ".tmp-checkpoint.dcp")
    torchrun(cli_args(data, out, *settings, "--resume"))
    assert not os.path.exists(out / ".tmp-checkpoint.dcp")  # the killed writer's leftovers, removed
    a, b = weights(tmp_path / "full" / "model"), weights(out / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_lora_with_fsdp_matches_one_process_and_its_adapters_load_with_peft(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dpo_ref.train.lora import peft_without_old_torchao

    lora = ("--lora-r", "4", "--lr", "1e-2", "--rpo-alpha", "0")
    out = tmp_path / "fsdp"
    torchrun(cli_args(data, out, "--fsdp", "--batch-size", "2", "--gradient-checkpointing", *lora))
    single = train(small(data, tmp_path / "single", lora_r=4, lr=1e-2, rpo_alpha=0.0))
    one = {k: v for k, v in single["policy"].state_dict().items() if ".lora_" in k}
    mine = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert len(mine) == len(one) > 0
    for key, value in mine.items():
        match = [k for k in one if k.replace(".default", "") == key]
        torch.testing.assert_close(value, one[match[0]], rtol=RTOL, atol=ATOL)  # RTOL, ATOL: see above
    assert abs(logged(out / "metrics.jsonl", "loss")[0] - math.log(2)) < 1e-6  # the reference: the adapters off
    # the adapters load with peft on the base written beside them and compute what the trained policy computes
    base = AutoModelForCausalLM.from_pretrained(str(out / "model" / "base"))
    with peft_without_old_torchao():
        loaded = PeftModel.from_pretrained(base, str(out / "model")).eval()
    ids = torch.tensor([[1, 69, 70, 34, 71]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, single["policy"].eval()(input_ids=ids).logits, rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("final", ["checkpoint.dcp", "model"])
def test_a_kill_between_the_two_renames_puts_the_previous_one_back(tmp_path, final):
    """The swap is final -> final.old, then tmp -> final: killed between them, only final.old (whole) and the new
    tmp are left. A resumed run must find final.old put back, not delete it as a stray and restart from step 0."""
    from dpo_ref.train.rundir import TMP_PREFIX, RunDir

    out = tmp_path / "run"
    (out / f"{final}.old").mkdir(parents=True)
    (out / f"{final}.old" / "run_state.json").write_text('{"step": 2}')
    tmp = out / (f"{TMP_PREFIX}{final}" if final == "checkpoint.dcp" else f"{final}.tmp")
    tmp.mkdir()  # the new one, complete or not
    (out / "run.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    run_dir = RunDir(str(out))
    run_dir.claim({}, resume=True, overwrite=False, resume_keys=[])
    run_dir.release()
    assert (out / final / "run_state.json").read_text() == '{"step": 2}'
    assert not (out / f"{final}.old").exists() and not tmp.exists()
    if final == "checkpoint.dcp":
        assert run_dir.has_checkpoint()
