"""The oracle on real libraries (the `compare` extra): TRL's DPOTrainer and torchtune's DPO pieces.

These tests pin down the findings recorded in docs/verify.md. They skip, naming the import error, only
when the `compare` extra is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_ref.errors import InputError
from dpo_ref.oracle import verify
from dpo_ref.oracle.report import FAILED, PASSED

ROOT = Path(__file__).resolve().parents[2]


def _importable(name: str) -> str | None:
    from dpo_ref.oracle.adapters import torchtune as tt_adapter
    from dpo_ref.oracle.adapters import trl as trl_adapter

    try:
        (trl_adapter.import_trl if name == "trl" else tt_adapter.import_torchtune)()
    except InputError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def trl_reports():
    reason = _importable("trl")
    if reason:
        pytest.skip(reason)
    return {v: verify("trl", variant=v) for v in ("dpo", "cdpo", "ipo", "ipo-mean")}


@pytest.fixture(scope="module")
def torchtune_report():
    reason = _importable("torchtune")
    if reason:
        pytest.skip(reason)
    return verify("torchtune", variant="dpo", max_examples=15)


def test_trl_findings(trl_reports):
    """One test (the four TRL runs are shared, and xdist would repeat a module fixture per worker)."""
    # loss_type="sigmoid" is DPO: log-probs, per-example losses and parameter gradients all agree
    report = trl_reports["dpo"]
    assert report.passed, report.to_text()
    assert [c.name for c in report.checks] == ["logps", "loss_values", "gradients", "search:sigmoid"]

    # loss_type="ipo" is IPO on length-averaged log-probs: fails as ipo; as ipo-mean it agrees on the fixed rows
    # but the row search (the matrix's) finds its count of a completion token at position 0 (count-plus-one)
    ipo, ipo_mean = trl_reports["ipo"], trl_reports["ipo-mean"]
    assert ipo["logps"].status == PASSED
    assert ipo["loss_values"].status == FAILED and ipo["gradients"].status == FAILED
    assert "equal dpo_ref ipo-mean" in ipo["loss_values"].message
    assert all(ipo_mean[c].status == PASSED for c in ("logps", "loss_values", "gradients")), ipo_mean.to_text()
    assert ipo_mean["search:ipo"].status == FAILED and "count-plus-one" in ipo_mean["search:ipo"].message

    # loss_type="sigmoid" with label_smoothing computes plain DPO, not cDPO
    cdpo = trl_reports["cdpo"]
    assert cdpo["loss_values"].status == FAILED
    assert "label_smoothing ignored" in cdpo["loss_values"].message

    # conventions reported as notes: EOS appended, float32 log-probs, bf16 default
    notes = " ".join(report.notes)
    assert "appends the EOS token" in notes
    assert "float32" in notes and "bf16=True" in notes

    # the reproduction runs and shows the difference
    namespace: dict = {}
    exec(ipo["loss_values"].reproduction.replace("print(", "_ = ("), namespace)
    trl_value, summed_ipo = float(namespace["loss"].detach()), float(namespace["ref"].detach())
    assert trl_value != pytest.approx(summed_ipo, rel=1e-3)


def test_torchtune_dpo_loss_and_logps(torchtune_report):
    report = torchtune_report
    assert report["loss:values"].status == PASSED
    assert report["library:pipeline"].status == PASSED
    assert report.passed, report.to_text()  # it computes DPO and its log-probs correctly
    # its one piece of advice: masking by multiplication turns a -inf logit at an unscored position into NaN
    assert report["logps:logps_neg_inf_unscored"].status == "advice", report.to_text()
    assert "got nan" in report["logps:logps_neg_inf_unscored"].message
    assert any("masks by multiplying" in a for a in report.advice)


def test_torchtune_has_no_ipo_loss():
    reason = _importable("torchtune")
    if reason:
        pytest.skip(reason)
    with pytest.raises(InputError, match="has no IPO loss"):
        verify("torchtune", level="loss", variant="ipo")
    report = verify("torchtune", variant="ipo-mean", max_examples=5, checks=None)
    assert report.level == "logps" and any("no IPO loss" in n for n in report.notes)


@pytest.mark.slow
def test_trl_builds_leave_no_temporary_folder_behind():
    reason = _importable("trl")
    if reason:
        pytest.skip(reason)
    code = (
        "from dpo_ref.oracle.adapters.trl import build\n"
        "trainer, _ = build()\n"
        "import os; assert os.path.isdir(trainer.args.output_dir)\n"
        "print(trainer.args.output_dir)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    # and print no third-party warning: a fresh interpreter is where torchao warns about the torch version
    assert out.stderr == "", out.stderr
    folder = out.stdout.strip().splitlines()[-1]
    assert folder and not os.path.exists(folder), f"{folder} was left behind"


def _matrix_status(loss_type: str) -> str:
    """The status `dpo-ref matrix` recorded for TRL's searched `loss_type` (docs/compliance.json)."""
    import json
    from pathlib import Path

    matrix = json.loads((Path(__file__).resolve().parents[2] / "docs" / "compliance.json").read_text())
    (status,) = [
        e["status"] for e in matrix["entries"] if e["library"] == "trl" and e["check"] == f"search:{loss_type}"
    ]
    return status


@pytest.mark.parametrize("variant", ["ipo-mean", pytest.param("dpo", marks=pytest.mark.slow)])
def test_verify_trl_and_the_matrix_give_one_verdict(variant):
    """`verify trl` asks the matrix's question too (the same derandomised row search), so both see TRL's IPO count
    a completion token at position 0, which has no log-prob (count-plus-one)."""
    pytest.importorskip("trl")
    from dpo_ref import variants as V

    loss_type = V.REGISTRY[variant].adapters["trl"]
    from dpo_ref.oracle import verify

    report = verify("trl", variant=variant)
    (search,) = [c for c in report.checks if c.name == f"search:{loss_type}"]
    assert search.status == _matrix_status(loss_type)
    if variant == "ipo-mean":
        assert not report.passed and "count-plus-one" in search.message
