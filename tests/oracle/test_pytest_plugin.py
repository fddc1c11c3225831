"""The pytest integration: the `pytest11` plugin (`--dpo-target`) and `parametrize_with_dpo_checks`."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def _plugin_args() -> list[str]:
    """`-p dpo_ref.oracle.pytest_plugin` unless the installed package already registers it as an entry point."""
    registered = any(ep.value == "dpo_ref.oracle.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if registered else ["-p", "dpo_ref.oracle.pytest_plugin"]


def _run(pytester, *args):
    return pytester.runpytest_inprocess(*_plugin_args(), "-p", "no:randomly", "-p", "no:cacheprovider", *args)


def test_plugin_loads_without_torch():
    code = "import sys, dpo_ref.oracle.pytest_plugin; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_plugin_is_inert_without_a_target(pytester):
    pytester.makepyfile("def test_nothing():\n    assert True\n")
    result = _run(pytester)
    result.assert_outcomes(passed=1)


def test_plugin_target_passes(pytester):
    result = _run(
        pytester,
        "--dpo-target",
        f"{CORPUS / 'loss_correct.py'}:cdpo",
        "--dpo-variant",
        "cdpo",
        "--dpo-max-examples",
        "5",
    )
    assert result.ret == 0
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] >= 12 and "failed" not in outcomes
    # the header counts the checks it is about to run (it said "collected 0 items" before they ran)
    ran = sum(outcomes.get(k, 0) for k in ("passed", "skipped", "failed", "xfailed"))
    result.stdout.fnmatch_lines([f"collected {ran} items"])


def test_plugin_target_fails_with_reproduction_and_xfail_file(pytester, tmp_path):
    target = f"{CORPUS / 'loss_broken.py'}:detached_policy_plus_zero"
    result = _run(pytester, "--dpo-target", target, "--dpo-max-examples", "10")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*dpo-ref::gradients*", "*Reproduction:*"])
    failed = result.parseoutcomes()["failed"]
    xfail = tmp_path / "xfail.txt"
    xfail.write_text("gradients\ngradient_signs\ninit\nlarge_batch\n")
    again = _run(pytester, "--dpo-target", target, "--dpo-max-examples", "10", "--dpo-xfail", str(xfail))
    assert again.ret == 0, again.stdout.str()
    assert again.parseoutcomes()["xfailed"] == failed == 4


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
def test_plugin_failure_shows_the_diagnosis(pytester):
    """The same diagnosis catalogue as the CLI: a loss adding the reference log-ratio is named in the failure."""
    target = f"{CORPUS / 'loss_broken.py'}:reference_sign"
    args = ["--dpo-target", target, "--dpo-variant", "dpo", "--dpo-max-examples", "10", "-k", "values"]
    result = _run(pytester, *args)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*dpo-ref check 'values' failed*", "Diagnosis: reference-sign: *"])


def test_decorator_failure_shows_the_diagnosis(pytester):
    pytester.makepyfile(
        test_mine=f"""
import sys
sys.path.insert(0, {str(CORPUS)!r})
from logps_broken import mean_not_sum
from dpo_ref import parametrize_with_dpo_checks

@parametrize_with_dpo_checks(mean_not_sum, level="logps", max_examples=5)
def test_bad(dpo_check):
    dpo_check()
"""
    )
    result = _run(pytester, "-k", "logps_values")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["E * Diagnosis: mean-not-sum: *"])


def test_plugin_bad_target_is_a_usage_error(pytester):
    result = _run(pytester, "--dpo-target", "missing.py:f")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dpo-ref: target file 'missing.py' does not exist*"])


def test_decorator_gives_one_test_per_check(pytester):
    pytester.makepyfile(
        test_mine=f"""
import sys
sys.path.insert(0, {str(CORPUS)!r})
from logps_broken import no_mask
from logps_correct import shift_gather_where as gather_log_softmax
from dpo_ref import parametrize_with_dpo_checks

@parametrize_with_dpo_checks(gather_log_softmax, level="logps", max_examples=5)
def test_good(dpo_check):
    dpo_check()

@parametrize_with_dpo_checks(no_mask, level="logps", max_examples=5, xfail=["logps_gradients"])
def test_bad(dpo_check):
    dpo_check()
"""
    )
    result = _run(pytester, "-v")
    assert result.ret == 1  # regression gating: a failing check fails the run
    result.stdout.fnmatch_lines(["*test_good?logps_values? PASSED*", "*test_bad?logps_values? FAILED*"])
    outcomes = result.parseoutcomes()
    # every check of the good one (call + each log-prob check); of the bad one call, inputs_unmodified and the
    # advisory -inf check (it reads the unscored positions, so -inf there gives NaN: advice, shown as a warning,
    # not a failure); the bad one's 7 value checks fail, its gradients check is declared xfail
    from dpo_ref.oracle.catalogue import LOGPS_CHECKS

    assert outcomes["passed"] == 1 + len(LOGPS_CHECKS) + 3
    assert outcomes["xfailed"] == 1
    assert outcomes["failed"] == 7


def test_plugin_advice_is_a_warning_and_strict_makes_it_a_failure(pytester):
    target = f"{CORPUS / 'logps_correct.py'}:mask_by_multiplying"
    args = ("--dpo-target", target, "--dpo-level", "logps", "--dpo-max-examples", "5")
    relaxed = _run(pytester, *args)
    assert relaxed.ret == 0
    relaxed.stdout.fnmatch_lines(["*dpo-ref advice*masks by multiplying*"])
    strict = _run(pytester, *args, "--dpo-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*dpo-ref::logps_neg_inf_unscored*"])


def test_decorator_xfail_takes_a_single_name():
    """`xfail="values"` is one check, not the unknown checks "v", "a", "l", ..."""
    from dpo_ref.oracle.pytest_support import checks_for

    target = f"{CORPUS / 'loss_broken.py'}:reference_unused"
    checks = {c.name: c for c in checks_for(target, xfail="values", max_examples=5)}
    with pytest.raises(pytest.xfail.Exception):
        checks["values"]()
