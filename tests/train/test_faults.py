"""Faults: no work lost to `kill -9`, no bad state saved when the loss or gradient is not finite.

The kill tests run `python -m dpo_ref train` in a real subprocess and SIGKILL it, then `--resume` and
compare the final weights bit for bit with an uninterrupted run of the same settings (CPU, one thread).
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import dpo_ref.train.loop as train_module
from dpo_ref.errors import InputError
from dpo_ref.train.cli import _summary_lines
from dpo_ref.train.loop import TrainConfig, read_metrics, train
from dpo_ref.train.rundir import KILL_IN_CHECKPOINT_ENV, RunDir, load_tensors, read_metadata
from dpo_ref.train.tasks import ReversalTask, reversal_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
ENV.pop(KILL_IN_CHECKPOINT_ENV, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows, _ = reversal_rows(ReversalTask(train_size=48, eval_size=8, max_len=4))
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# the same run as CLI arguments and as a TrainConfig
SETTINGS = dict(
    steps=60, sft_steps=2, batch_size=4, lr=3e-3, rpo_alpha=0.5, warmup_steps=3, log_every=1, eval_every=1000,
    save_every=5,
)  # fmt: skip


def _argv(data: str, out, **settings) -> list[str]:
    argv = ["train", "--data", data, "--out", str(out), "--no-progress"]
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _start(argv: list[str], env=ENV) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dpo_ref", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _uninterrupted(data: str, out, **settings) -> dict[str, torch.Tensor]:
    summary = train(TrainConfig(data=data, out=str(out), progress=False, **settings))
    return load_file(os.path.join(summary["model_dir"], "model.safetensors"))


def _resume(data: str, out, **settings) -> None:
    from dpo_ref.cli import main

    assert main(_argv(data, out, **settings) + ["--resume"]) == 0


def _final_weights(out) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(str(out), "model", "model.safetensors"))


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_9_mid_training_then_resume_equals_the_uninterrupted_run(data, tmp_path):
    out = tmp_path / "killed"
    metrics = out / "metrics.jsonl"
    process = _start(_argv(data, out, **SETTINGS))
    deadline = time.monotonic() + 900  # a guard against a hang: a niced run on a busy machine can crawl
    # kill once step 11 is logged: past the checkpoint of step 10, with records after it to discard
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 12:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before it could be killed: " + process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    saved_step = read_metadata(str(out / "checkpoint.safetensors"))["step"]
    assert 10 <= saved_step < SETTINGS["steps"] and not (out / "model").exists()  # really killed mid-run

    _resume(data, out, **SETTINGS)  # in this process: the same code as `--resume`, without another start-up
    expected = _uninterrupted(data, tmp_path / "full", **SETTINGS)
    assert _bitwise_equal(_final_weights(out), expected)
    # the log too: the killed run's records after its checkpoint were dropped, none is missing or doubled
    assert read_metrics(str(metrics)) == read_metrics(str(tmp_path / "full" / "metrics.jsonl"))


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_keeps_the_previous_one(data, tmp_path):
    settings = dict(SETTINGS, steps=12)
    out = tmp_path / "run"
    # the test hook SIGKILLs the writer after the temporary file of checkpoint 10 is complete, before the rename
    process = _start(_argv(data, out, **settings), env={**ENV, KILL_IN_CHECKPOINT_ENV: "10"})
    _, err = process.communicate(timeout=900)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    stray = glob.glob(str(out / ".tmp-*.safetensors"))
    assert len(stray) == 1 and read_metadata(stray[0])["step"] == 10  # killed exactly mid-write
    tensors, meta = load_tensors(str(out / "checkpoint.safetensors"))  # the previous checkpoint loads
    assert meta["step"] == 5 and all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model/"))

    _resume(data, out, **settings)
    assert glob.glob(str(out / ".tmp-*")) == []  # the stray file is cleaned up
    assert _bitwise_equal(_final_weights(out), _uninterrupted(data, tmp_path / "full", **settings))


def test_a_checkpoint_cut_short_is_refused_not_loaded(data, tmp_path):
    """What the atomic rename prevents: a checkpoint file cut mid-write is unreadable (a clear InputError)."""
    train(TrainConfig(data=data, out=str(tmp_path), progress=False, **dict(SETTINGS, steps=2, save_every=2)))
    path = tmp_path / "checkpoint.safetensors"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match="cannot be read"):
        load_tensors(str(path))
    with pytest.raises(InputError, match="cannot be read"):
        train(TrainConfig(data=data, out=str(tmp_path), progress=False, resume=True, **dict(SETTINGS, steps=2)))


def test_resume_drops_a_metrics_line_cut_short_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 0.69}\n{"step": 1, "loss": 0.68}\n{"step": 2, "lo')
    RunDir(str(tmp_path)).keep_metrics_before(2)
    assert read_metrics(str(path)) == [{"step": 0, "loss": 0.69}, {"step": 1, "loss": 0.68}]


# ---------------------------------------------------------------------------------------------- non-finite


def _checkpoint_is_finite(out) -> bool:
    tensors, _ = load_tensors(os.path.join(str(out), "checkpoint.safetensors"))
    return all(bool(torch.isfinite(v).all()) for k, v in tensors.items() if k.startswith(("model/", "optim/")))


EXPLODE = dict(sft_steps=0, steps=6, batch_size=4, lr=1e30, warmup_steps=0, log_every=100, save_every=1)


def test_an_exploding_lr_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    """--lr 1e30: the first update is finite but makes the next loss NaN; no NaN state reaches the disk."""
    from dpo_ref.cli import main

    code = main(_argv(data, tmp_path, **EXPLODE))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "non-finite loss or gradient at step 1" in err[0] and "(step 1) is the last good checkpoint" in err[0]
    assert read_metadata(str(tmp_path / "checkpoint.safetensors"))["step"] == 1
    assert _checkpoint_is_finite(tmp_path)
    assert not (tmp_path / "model").exists()


def test_the_finite_check_bites(data, tmp_path, monkeypatch):
    """With the guard blinded (isfinite always true) the same run saves a NaN checkpoint and a model."""
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: real(x) | True)
    summary = train(TrainConfig(data=data, out=str(tmp_path), progress=False, **EXPLODE))
    monkeypatch.undo()
    assert "model_dir" in summary and not _checkpoint_is_finite(tmp_path)


def _poison_training_step(monkeypatch, bad_steps: set[int]) -> None:
    """Make the loss (and so the gradient) NaN at the given training steps; evaluation is untouched."""
    real, calls = train_module.preference_loss, []

    def poisoned(cfg, *logps):
        result = real(cfg, *logps)
        if torch.is_grad_enabled():
            calls.append(None)
            if len(calls) - 1 in bad_steps:
                return result._replace(losses=result.losses * float("nan"))
        return result

    monkeypatch.setattr(train_module, "preference_loss", poisoned)


def test_skip_nonfinite_skips_the_update_and_counts_it(data, tmp_path, monkeypatch):
    common = dict(data=data, progress=False, sft_steps=0, steps=3, batch_size=4, warmup_steps=0, log_every=1)
    two_steps = train(TrainConfig(out=str(tmp_path / "two"), stop_after=2, **common))["policy"].state_dict()
    three_steps = train(TrainConfig(out=str(tmp_path / "three"), **common))["policy"].state_dict()
    assert not _bitwise_equal(two_steps, three_steps)  # the last update does move the weights

    _poison_training_step(monkeypatch, {2})
    summary = train(TrainConfig(out=str(tmp_path / "skip"), skip_nonfinite=True, **common))
    assert summary["nonfinite_skipped"] == 1
    # step 2 was skipped: weights (and AdamW state) stay those after two updates, bit for bit
    assert _bitwise_equal(summary["policy"].state_dict(), two_steps)
    last = [r for r in summary["history"] if r["step"] == 2][0]
    assert last["nonfinite_skipped"] == 1 and "loss" not in last
    assert "skipped 1 updates with a non-finite" in "\n".join(_summary_lines(summary_cfg(common), summary))

    # without the flag the same fault stops the run, naming the step, and keeps the checkpoint of step 2
    _poison_training_step(monkeypatch, {2})
    with pytest.raises(FloatingPointError, match=r"at step 2: .*\(step 2\) is the last good checkpoint"):
        train(TrainConfig(out=str(tmp_path / "stop"), save_every=1, **common))
    assert read_metadata(str(tmp_path / "stop" / "checkpoint.safetensors"))["step"] == 2
    assert _checkpoint_is_finite(tmp_path / "stop")


def summary_cfg(common: dict) -> TrainConfig:
    return train_module.check_config(TrainConfig(skip_nonfinite=True, **common))


def test_nonfinite_detection_at_an_unlogged_step_still_precedes_the_checkpoint(data, tmp_path, monkeypatch):
    """The flag lives on the device between logging steps; a checkpoint step reads it before saving."""
    _poison_training_step(monkeypatch, {3})
    common = dict(data=data, progress=False, sft_steps=0, steps=8, batch_size=4, warmup_steps=0)
    with pytest.raises(FloatingPointError, match=r"at step 3: .*\(step 2\) is the last good checkpoint"):
        train(TrainConfig(out=str(tmp_path), log_every=100, save_every=2, **common))
    assert read_metadata(str(tmp_path / "checkpoint.safetensors"))["step"] == 2
    assert _checkpoint_is_finite(tmp_path)


# ---------------------------------------------------------------------------------------------- verify --isolate

ISOLATE_TARGETS = """
import os
import signal
import time

import torch.nn.functional as F


def hangs(pc, pr, rc, rr, beta=0.1):
    time.sleep(10**6)


def exits(pc, pr, rc, rr, beta=0.1):
    os._exit(1)


def kills_the_interpreter(pc, pr, rc, rr, beta=0.1):
    os.kill(os.getpid(), signal.SIGKILL)


def dpo(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - pr) - (rc - rr)))
"""


@pytest.fixture(scope="module")
def isolate_targets(tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "targets.py"
    path.write_text(ISOLATE_TARGETS)
    return str(path)


@pytest.mark.parametrize(
    "name, timeout, message",
    [
        pytest.param(
            "hangs",
            "5",
            r"did not finish within 5 s \(a hang\?\); the child process was killed",
            marks=pytest.mark.slow,
        ),
        ("exits", None, r"ended the interpreter before the checks finished \(exit status 1\)"),
        ("kills_the_interpreter", None, r"ended the interpreter before the checks finished \(killed by signal SIGKILL"),
    ],
    ids=["sleeps forever", "os._exit(1)", "SIGKILLs itself"],
)
def test_isolate_reports_a_hang_or_a_crash_as_a_failed_verification(isolate_targets, capsys, name, timeout, message):
    import re

    from dpo_ref.cli import main

    argv = ["verify", f"{isolate_targets}:{name}", "--max-examples", "3", "--isolate"]
    code = main(argv + (["--timeout", timeout] if timeout else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and re.search(message, err[0]), err


def test_isolate_relays_a_conforming_report_and_its_json(isolate_targets, tmp_path, capsys):
    from dpo_ref.cli import main

    report = tmp_path / "report.json"
    argv = ["verify", f"{isolate_targets}:dpo", "--max-examples", "3", "--checks", "values", "--isolate"]
    assert main(argv + ["--json", str(report)]) == 0
    assert "CONFORMS" in capsys.readouterr().out
    assert json.loads(report.read_text())["passed"] is True


def test_a_non_finite_sft_warm_up_is_not_saved(data, tmp_path):
    with pytest.raises(FloatingPointError, match="SFT warm-up made the weights non-finite"):
        train(TrainConfig(data=data, out=str(tmp_path), progress=False, **dict(EXPLODE, sft_steps=3, sft_lr=1e30)))
    assert not (tmp_path / "sft.safetensors").exists() and not (tmp_path / "checkpoint.safetensors").exists()


# ---------------------------------------------------------------------------------------------- the run directory

QUICK = dict(sft_steps=0, steps=2, batch_size=4, lr=3e-3, warmup_steps=0, log_every=1, eval_every=1000, save_every=1)


def _files(directory) -> dict[str, bytes]:
    """Every file under `directory`: relative path -> bytes."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


def _one_line_exit_2(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


HOLD_LOCK = """
import sys, time
from dpo_ref.train.rundir import RunDir
RunDir(sys.argv[1]).claim({}, resume=False, overwrite=False, resume_keys=[])
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_a_directory_in_use_is_refused_naming_the_other_process(data, tmp_path, capsys):
    from dpo_ref.cli import main

    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _files(out)
        code = main(_argv(data, out, **QUICK) + ["--overwrite"])
        line = _one_line_exit_2(code, capsys.readouterr().err)
        assert f"is in use by another dpo-ref process (pid {holder.pid} on " in line
        assert _files(out) == before  # nothing of the other run touched
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed (its lock file stays behind, stale): the directory is free again
    assert (out / ".lock").exists()
    assert main(_argv(data, out, **QUICK) + ["--overwrite"]) == 0
    assert not (out / ".lock").exists()  # a finished run removes its lock


def test_a_rerun_is_refused_without_overwrite_and_overwrite_leaves_no_old_files(data, tmp_path, capsys):
    from dpo_ref.cli import main

    assert main(_argv(data, tmp_path, **QUICK)) == 0
    assert (tmp_path / "model").is_dir()
    capsys.readouterr()
    before = _files(tmp_path)
    line = _one_line_exit_2(main(_argv(data, tmp_path, **QUICK)), capsys.readouterr().err)
    assert "already holds a run (run.json, metrics.jsonl, checkpoint.safetensors, model)" in line
    assert "--resume" in line and "--overwrite" in line
    assert _files(tmp_path) == before
    # --overwrite: a fresh run that stops early leaves none of the old run's files (no model/ beside it)
    assert main(_argv(data, tmp_path, **dict(QUICK, stop_after=1)) + ["--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.safetensors", "metrics.jsonl", "run.json"]


def test_every_file_of_a_run_gets_the_permissions_the_umask_gives(data, tmp_path):
    """run.json, metrics, the warm-up, the checkpoint and model/ (written by transformers) alike: what a plain
    `open(path, "w")` gives under the umask (0664 under 002), not mkstemp's 0600, so others can read them."""
    old = os.umask(0o002)
    try:
        train(TrainConfig(data=data, out=str(tmp_path / "run"), progress=False, **dict(QUICK, sft_steps=1)))
        with open(tmp_path / "plain", "w") as f:  # the independent reference
            f.write("x")
    finally:
        os.umask(old)
    expected = os.stat(tmp_path / "plain").st_mode & 0o777
    assert expected == 0o664
    modes = {name: os.stat(tmp_path / "run" / name).st_mode & 0o777 for name in _files(tmp_path / "run")}
    assert {"run.json", "metrics.jsonl", "sft.safetensors", "checkpoint.safetensors"} <= set(modes)
    assert any(name.startswith("model" + os.sep) for name in modes)
    assert modes == dict.fromkeys(modes, expected)


def test_a_refused_resume_names_every_mismatch_and_runs_no_warm_up(data, tmp_path):
    settings = dict(QUICK, sft_steps=2, steps=3)
    train(TrainConfig(data=data, out=str(tmp_path), progress=False, stop_after=1, **settings))
    before = _files(tmp_path)
    changed = dict(settings, lr=1e-4, steps=4, sft_steps=3)
    with pytest.raises(InputError) as info:
        train(TrainConfig(data=data, out=str(tmp_path), progress=False, resume=True, **changed))
    message = str(info.value)
    for expected in ("lr=0.003 (this run: 0.0001)", "steps=3 (this run: 4)", "sft_steps=2 (this run: 3)"):
        assert expected in message
    assert _files(tmp_path) == before  # no warm-up ran: sft.safetensors and everything else unchanged


def test_resume_checks_the_data_by_content_not_by_the_spelling_of_its_path(data, tmp_path, monkeypatch):
    copy = tmp_path / "d.jsonl"
    copy.write_bytes(open(data, "rb").read())
    out = str(tmp_path / "run")
    full = train(TrainConfig(data=str(copy), out=str(tmp_path / "full"), progress=False, **dict(QUICK, steps=3)))
    train(TrainConfig(data=str(copy), out=out, progress=False, stop_after=1, **dict(QUICK, steps=3)))
    monkeypatch.chdir(tmp_path)
    resumed = train(TrainConfig(data="./d.jsonl", out=out, progress=False, resume=True, **dict(QUICK, steps=3)))
    assert _bitwise_equal(resumed["policy"].state_dict(), full["policy"].state_dict())
    # an edited file is other data, whatever its name
    copy.write_text(copy.read_text() + json.dumps({"prompt": "ab>", "chosen": "ba", "rejected": "bb"}) + "\n")
    with pytest.raises(InputError, match=r"--resume: .*other settings: data_sha256="):
        train(TrainConfig(data="d.jsonl", out=out, progress=False, resume=True, **dict(QUICK, steps=4)))


def test_another_batch_split_at_the_same_global_batch_reuses_the_warm_up(data, tmp_path, monkeypatch):
    settings = dict(QUICK, sft_steps=2, steps=3)
    train(TrainConfig(data=data, out=str(tmp_path), progress=False, stop_after=1, **settings))
    sft = (tmp_path / "sft.safetensors").read_bytes()
    calls = []
    real = train_module.sft_micro_batch
    monkeypatch.setattr(train_module, "sft_micro_batch", lambda *a: calls.append(1) or real(*a))
    split = dict(settings, batch_size=2, grad_accum=2)  # the same global batch of 4
    summary = train(TrainConfig(data=data, out=str(tmp_path), progress=False, resume=True, **split))
    assert summary["sft"]["reused"] and calls == [] and (tmp_path / "sft.safetensors").read_bytes() == sft
    # the check bites: another global batch is another run
    with pytest.raises(InputError, match=r"global_batch=4 \(this run: 8\)"):
        train(TrainConfig(data=data, out=str(tmp_path), progress=False, resume=True, **dict(split, grad_accum=4)))


def test_ctrl_c_during_the_warm_up_then_resume_equals_the_uninterrupted_run(data, tmp_path, monkeypatch):
    settings = dict(QUICK, sft_steps=3, steps=2)
    full = train(TrainConfig(data=data, out=str(tmp_path / "full"), progress=False, **settings))
    real, calls = train_module.sft_micro_batch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "sft_micro_batch", interrupted)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(data=data, out=str(out), progress=False, **settings))
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["run.json"]  # no warm-up saved, the lock released
    resumed = train(TrainConfig(data=data, out=str(out), progress=False, resume=True, **settings))
    assert _bitwise_equal(resumed["policy"].state_dict(), full["policy"].state_dict())


@pytest.mark.slow
def test_a_real_ctrl_c_during_the_warm_up_then_resume_equals_the_uninterrupted_run(data, tmp_path):
    """The README's promise with a real SIGINT to a real `dpo-ref train`: exit 130 with one line, nothing of
    the warm-up saved and the lock released; `--resume` redoes the warm-up and ends where a run never stopped."""
    settings = dict(QUICK, sft_steps=100, steps=2)
    out = tmp_path / "interrupted"
    argv = [a for a in _argv(data, out, **settings) if a != "--no-progress"]  # its phase lines say when
    process = _start(argv)
    line = process.stderr.readline()  # blocks until the first phase starts (or the process ends)
    assert line.startswith("dpo-ref train: sft warm-up (100 steps)"), line + process.communicate()[1][-2000:]
    time.sleep(0.05)  # the line is printed as the warm-up starts; 100 steps take far longer than this
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=900)
    assert process.returncode == 130 and err.strip().splitlines() == ["dpo-ref train: interrupted"], err[-2000:]
    assert sorted(os.listdir(out)) == ["run.json"]  # stopped mid-warm-up: no sft.safetensors, no .lock

    _resume(data, out, **settings)
    assert _bitwise_equal(_final_weights(out), _uninterrupted(data, tmp_path / "full", **settings))


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    import errno

    import safetensors.torch

    from dpo_ref.cli import main

    real, saves = safetensors.torch.save_file, []

    def fills_the_disk(tensors, path, metadata=None):
        saves.append(path)
        if len(saves) == 2:  # the checkpoint of step 2: the one of step 1 is on disk
            with open(path, "wb") as f:
                f.write(b"half")
            # what safetensors raises on a write error (seen in the real-process test below): not an OSError
            raise safetensors.SafetensorError(
                f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error {errno.ENOSPC})"
            )
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    line = _one_line_exit_2(main(_argv(data, tmp_path, **QUICK)), capsys.readouterr().err)
    assert "checkpoint.safetensors'" in line and "the disk is full" in line
    assert read_metadata(str(tmp_path / "checkpoint.safetensors"))["step"] == 1  # intact
    assert glob.glob(str(tmp_path / ".tmp-*")) == [] and not (tmp_path / ".lock").exists()


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_real_failed_write_of_the_weights_is_one_line_exit_2(data, tmp_path, capsys):
    """No mock: files of this process may not exceed 600 kB for the run (RLIMIT_FSIZE, restored after), so
    the checkpoint (about 1.2 MB: weights and AdamW's two moments) fails inside safetensors, as on a full disk."""
    import resource

    from dpo_ref.cli import main

    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, no signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, limits[1]))
    try:
        code = main(_argv(data, tmp_path / "run", **QUICK))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    line = _one_line_exit_2(code, capsys.readouterr().err)
    assert re.fullmatch(
        r"dpo-ref train: error: cannot write '.*checkpoint\.safetensors': File too large; its previous version "
        r"\(if any\) is intact",
        line,
    ), line
    assert sorted(os.listdir(tmp_path / "run")) == ["metrics.jsonl", "run.json"]  # no temporary file, no lock


def test_progress_is_one_plain_line_per_phase_when_not_on_a_terminal(data, tmp_path, capsys):
    train(TrainConfig(data=data, out=str(tmp_path), **dict(QUICK, sft_steps=2)))
    assert capsys.readouterr().err.splitlines() == [
        "dpo-ref train: sft warm-up (2 steps)",
        "dpo-ref train: dpo (2 steps)",
    ]
