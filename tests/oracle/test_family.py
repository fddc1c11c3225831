"""The oracle over the loss family: `--variant` accepts every family variant at the loss level.

For each variant: the family's own function and an independently written one in another style (the corpus's
family group, `tests/corpus/family_correct.py`) conform; a broken one (`tests/corpus/family_broken.py`) is
rejected with the right diagnosis named; a reproduction the oracle prints for it raises the disagreement it
claims. A registry variant without a correct and a broken case in the corpus index is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dpo_ref
from dpo_ref.errors import InputError
from dpo_ref.family import LOSS_FAMILY
from dpo_ref.variants import CLASSIC_VARIANTS, FAMILY_VARIANTS, ORACLE_NAME, VARIANTS
from tests.corpus import family, load

pytest_plugins = ["pytester"]

CORRECT = {variant: load(case) for variant, case in family(conforms=True).items()}
BROKEN = {variant: (load(case), case.diagnosis) for variant, case in family(conforms=False).items()}

FEW = 2  # examples per check: each check draws batches of up to 4 pairs and coefficients over their full range


def test_every_family_member_is_an_oracle_variant():
    assert set(ORACLE_NAME) == set(LOSS_FAMILY)
    assert set(VARIANTS) == set(CLASSIC_VARIANTS) | set(FAMILY_VARIANTS)
    assert set(CORRECT) == set(BROKEN) == set(FAMILY_VARIANTS)


@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_family_function_conforms(variant):
    report = dpo_ref.verify(LOSS_FAMILY[FAMILY_VARIANTS[variant]].fn, variant=variant, max_examples=FEW)
    assert report.passed, report.to_text()
    assert sum(c.status == "passed" for c in report.checks) >= 7
    assert report.precision["grade"] == "float64-exact", report.precision


@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_independent_implementation_conforms(variant):
    report = dpo_ref.verify(CORRECT[variant], variant=variant, max_examples=FEW)
    assert report.passed, report.to_text()


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("variant", sorted(FAMILY_VARIANTS))
def test_broken_implementation_rejected_with_its_diagnosis(variant):
    fn, name = BROKEN[variant]
    coefficients = LOSS_FAMILY[FAMILY_VARIANTS[variant]].coefficients
    beta = 0.5 if {"beta", "tau"} & set(coefficients) else None
    # 5 examples: the first 3 derandomised draws are ties (zeros), on which DPOP forgetting its penalty is DPO
    report = dpo_ref.verify(fn, variant=variant, max_examples=5, checks=["values"], beta=beta)
    assert not report.passed
    assert any(d.startswith(name + ":") for d in report.diagnosis), (name, report.diagnosis)


def test_reproduction_raises_what_it_claims():
    fn, _ = BROKEN["robust"]
    report = dpo_ref.verify(fn, variant="robust", max_examples=5, checks=["values"], beta=0.5, label_smoothing=0.2)
    repro = report["values"].reproduction
    source = repro.replace(
        "fn = ...  # the function you passed to dpo_ref.verify",
        "from tests.corpus.family_broken import robust_is_cdpo as fn",
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "PropertyViolation" in done.stderr, done.stderr[-2000:]
    assert "robust(beta=0.5, label_smoothing=0.2) loss value" in done.stderr


def test_classic_claim_names_a_family_member():
    report = dpo_ref.verify(CORRECT["nca_pair"], variant="dpo", max_examples=5, checks=["values"])
    assert any(d.startswith("nca_pair:") for d in report.diagnosis), report.diagnosis


def test_coefficients_fixed_and_validated():
    report = dpo_ref.verify(CORRECT["simpo"], variant="simpo", beta=2.5, coefficients={"gamma": 0.3}, max_examples=2)
    assert report.passed and report.settings["beta"] == 2.5 and report.settings["gamma"] == 0.3
    with pytest.raises(InputError, match="gamma must be a non-negative"):
        dpo_ref.verify(CORRECT["simpo"], variant="simpo", coefficients={"gamma": -1.0})
    with pytest.raises(InputError, match="takes coefficients beta, gamma; got tau"):
        dpo_ref.verify(CORRECT["simpo"], variant="simpo", coefficients={"tau": 1.0})


def test_lengths_keywords_required_with_a_hint():
    def no_lengths(pc, pr, rc, rr, beta=0.1):
        return pc - pr

    with pytest.raises(InputError, match="chosen_lengths/rejected_lengths"):
        dpo_ref.verify(no_lengths, variant="sigmoid_norm")


def test_cli_family_variant(tmp_path, capsys):
    from dpo_ref.cli import main

    target = tmp_path / "t.py"
    target.write_text("from tests.corpus.family_broken import hinge_is_dpo as fn\n")
    argv = ["verify", f"{target}:fn", "--variant", "hinge", "--beta", "0.5", "--max-examples", "3", "--checks",
            "values", "-q"]  # fmt: skip
    assert main(argv) == 1
    assert "dpo: its values are dpo(beta=0.5)" in capsys.readouterr().out
    assert main(argv[:-5] + ["--coef", "gamma"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(argv[:-5] + ["--coef", "gamma=0.5"]) == 2
    assert "takes coefficients beta; got gamma" in capsys.readouterr().err


def test_checks_bite_through_the_family_tolerance():
    """float32 arithmetic on float64 inputs passes; a coefficient floored to float16 does not."""

    def float32_inside(pc, pr, rc, rr, beta=0.1):
        return CORRECT["nca_pair"](pc.float(), pr.float(), rc.float(), rr.float(), beta).double()

    assert dpo_ref.verify(float32_inside, variant="nca_pair", max_examples=5).passed
    strict = dpo_ref.verify(float32_inside, variant="nca_pair", max_examples=5, strict=True, checks=["values"])
    assert not strict.passed

    def beta_in_half(pc, pr, rc, rr, beta=0.1):
        return CORRECT["nca_pair"](pc, pr, rc, rr, float(torch.tensor(beta).half()))

    assert not dpo_ref.verify(beta_in_half, variant="nca_pair", max_examples=10, checks=["values"]).passed


def test_pytest_plugin_runs_a_family_variant(pytester):
    from tests.oracle.test_pytest_plugin import _run

    target = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "corpus", "family_correct.py")
    result = _run(pytester, "--dpo-target", f"{target}:simpo_rewards", "--dpo-variant", "simpo", "--dpo-coef",
                  "gamma=0.5", "--dpo-max-examples", "2")  # fmt: skip
    assert result.ret == 0
    assert result.parseoutcomes()["passed"] >= 7


def test_parametrize_with_dpo_checks_names_the_family_checks():
    from dpo_ref.oracle.pytest_support import checks_for

    names = [c.name for c in checks_for(CORRECT["hinge"], variant="hinge", max_examples=2)]
    assert {"call", "values", "gradients", "shift", "hinge_margin"} <= set(names)
    assert "robust_unbiased" not in names
