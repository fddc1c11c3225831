"""`dpo-ref bench`: inputs are exactly what both sides claim, the correctness guard bites, the CLI runs at a tiny size.

Timings are never asserted (a benchmark prints ratios; it is not a timed test).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from dpo_ref.bench import run as bench
from dpo_ref.bench.run import PRESETS, BenchError, check_agreement

try:
    import trl  # noqa: F401

    TRL_ERROR = None
except ImportError as err:  # the bench extra is optional
    TRL_ERROR = f"trl is not importable ({err}); install the bench extra: pip install 'dpo-ref[bench]'"
needs_trl = pytest.mark.skipif(TRL_ERROR is not None, reason=TRL_ERROR or "")

TINY = PRESETS["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spec(side: str, ref: str = "ref_model", **overrides) -> dict:
    spec = {
        "side": side,
        "ref": ref,
        "size": bench.asdict(TINY),
        "device": "cpu",
        "threads": 1,
        "steps": 1,
        "warmup": 1,
        "lr": 1e-4,
        "beta": 0.1,
        "seed": 0,
    }
    spec.update(overrides)
    return spec


def test_rows_tokenize_to_exactly_seq_len_tokens_on_dpo_ref_side():
    from dpo_ref.train.data import prepare_dataset

    size = replace(TINY, seq_len=40, prompt_len=11, batch=3)
    rows = bench.bench_rows(size, seed=3)
    tokenizer = bench.bench_tokenizer(size.vocab)
    assert len(tokenizer) == size.vocab
    pairs, _ = prepare_dataset(rows, tokenizer)
    for row, pair in zip(rows, pairs):
        # independent count: whitespace words, plus BOS on the prompt and EOS on each response
        assert len(pair.prompt_ids) == len(row["prompt"].split()) + 1 == size.prompt_len
        for response in ("chosen", "rejected"):
            ids = getattr(pair, f"{response}_ids")
            assert len(ids) == len(row[response].split()) + 1
            assert len(pair.prompt_ids) + len(ids) == size.seq_len
            assert tokenizer.unk_token_id not in ids and ids[-1] == tokenizer.eos_token_id


def test_param_count_matches_the_built_model():
    for size in (TINY, replace(TINY, kv_heads=1, heads=4, hidden=32)):
        model = bench.bench_model(size, seed=0)
        assert bench.param_count(size) == sum(p.numel() for p in model.parameters())


def _result(loss: float = 0.7, tokens=(32, 32), checksum: float = 123.0) -> dict:
    return {"first_loss": loss, "tokens_per_sequence": list(tokens), "param_checksum": checksum}


def test_check_agreement_accepts_equal_and_rejects_each_kind_of_mismatch():
    ok = check_agreement("s", _result(0.7), _result(0.7 * (1 + 2e-6)))
    assert ok["first_loss_rel_diff"] == pytest.approx(2e-6, rel=1e-3)
    with pytest.raises(BenchError, match="first-step losses disagree"):
        check_agreement("s", _result(0.7), _result(0.7 * (1 + 5e-5)))
    with pytest.raises(BenchError, match="first-step losses disagree"):
        check_agreement("s", _result(float("nan")), _result(0.7))
    with pytest.raises(BenchError, match="different tokens"):
        check_agreement("s", _result(tokens=(32, 31)), _result(tokens=(32, 32)))
    with pytest.raises(BenchError, match="different weights"):
        check_agreement("s", _result(checksum=123.0), _result(checksum=123.01))


@needs_trl
@pytest.mark.parametrize("ref", ["ref_model", "precomputed_ref"])
def test_both_sides_agree_in_process_and_the_guard_rejects_a_broken_dpo_ref_loss(ref, monkeypatch):
    from dpo_ref.bench.trl_worker import trl_worker
    from dpo_ref.losses import dpo_loss
    from dpo_ref.train import loop as train

    ours, theirs = bench.dpo_ref_worker(_spec("dpo_ref", ref)), trl_worker(_spec("trl", ref))
    guard = check_agreement(ref, ours, theirs)
    assert guard["first_loss_rel_diff"] <= bench.LOSS_RTOL
    # the reference differs from the policy, so the loss is not the trivial ln 2 of a policy equal to it
    assert abs(ours["first_loss"] - math.log(2)) > 1e-3
    assert ours["tokens_per_sequence"] == [TINY.seq_len] * (2 * TINY.batch)

    def broken(cfg, pc, pr, rc, rr):  # a plausible bug: beta applied twice
        return dpo_loss(pc, pr, rc, rr, beta=cfg.beta * cfg.beta, validate=False)

    monkeypatch.setattr(train, "preference_loss", broken)
    with pytest.raises(BenchError, match="first-step losses disagree"):
        check_agreement(ref, bench.dpo_ref_worker(_spec("dpo_ref", ref)), theirs)


@needs_trl
@pytest.mark.slow
def test_cli_runs_at_tiny_size_and_writes_the_json_keys(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable,
        "-m",
        "dpo_ref",
        "bench",
        "--size",
        "tiny",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--settings",
        "ref_model",
        "--no-verify",
        "--no-logps",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ref_model" in proc.stdout and "first-step loss" in proc.stdout
    # progress: a line when the train-step phase starts, then one per worker process as it finishes
    assert proc.stdout.startswith("train step: dpo-ref vs TRL")
    for side in ("dpo_ref", "trl"):
        assert re.search(rf"^  ref_model +{side} +repeat 1/1: median step +[0-9.]+ ms", proc.stdout, re.M), side
    result = json.loads(out.read_text())
    entry = result["train_step"]["ref_model"]
    for key in ("dpo_ref_s", "trl_s", "ratio", "dpo_ref_peak_mb", "trl_peak_mb"):
        assert entry[key] > 0, key
    assert entry["ratio"] == pytest.approx(entry["dpo_ref_s"] / entry["trl_s"])
    assert entry["first_loss_rel_diff"] <= bench.LOSS_RTOL
    assert "logps" not in result and "verify_s" not in result  # --no-logps, --no-verify
    for key in ("torch", "transformers", "trl", "device"):
        assert result[key]


def test_cli_rejects_bad_sizes_with_one_line():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_ref", "bench", "--prompt-len", "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--prompt-len" in proc.stderr and "Traceback" not in proc.stderr


@needs_trl
@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_path_at_tiny_size(tmp_path):
    """The CUDA path (bf16 autocast on both sides, max-allocated memory, MFU); skipped without a GPU."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dpo_ref", "bench", "--size", "tiny", "--device", "cuda", "--steps", "2",
           "--repeats", "1", "--no-verify", "--no-logps", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for setting in bench.REF_SETTINGS:
        entry = result["train_step"][setting]
        assert entry["dpo_ref_peak_mb"] > 0 and entry["trl_peak_mb"] > 0
        assert entry["first_loss_rel_diff"] <= bench.LOSS_RTOL_BF16


def test_table_says_when_the_logits_are_too_small_for_the_log_prob_ratios():
    """At the default size (128 MiB of logits) the ratios stand alone; at a smoke-test size the table
    must say they mean little, instead of printing a scary 3x against a 0.25 target."""
    import copy
    import json
    import os

    from dpo_ref.bench.run import SMALL_LOGITS_MB, format_table

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "results", "bench.json")
    with open(path) as f:
        result = json.load(f)
    assert result["logps"]["detail"]["logits_mb"] >= SMALL_LOGITS_MB
    assert "too small" not in format_table(result)
    tiny = copy.deepcopy(result)
    tiny["logps"]["detail"]["logits_mb"] = 0.25
    assert "too small" in format_table(tiny)


def test_gpu_check_script_parses_and_stops_cleanly_without_a_gpu(tmp_path):
    """benchmarks/gpu_check.sh is prepared for a GPU; here it must parse and, with no GPU, stop with one
    line, exit status 3 and nothing written."""
    import shutil
    import subprocess

    import torch

    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run the script itself")
    out = tmp_path / "gpu"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([script, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 3 and run.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device is visible to torch; nothing was run"
    ]
    assert not out.exists() and shutil.which("bash")
