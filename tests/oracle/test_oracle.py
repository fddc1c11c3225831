"""Meta-tests of the conformance oracle: it rejects every broken implementation and accepts every correct one.

The implementations are the suite's set of the corpus (tests/corpus/, group "suite" in its index), written in the
user-facing (third-party) signature; they are loaded by path, exactly as `dpo-ref verify path/to/file.py:name`
loads them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dpo_ref
from dpo_ref.errors import InputError
from dpo_ref.oracle import load_target, verify
from dpo_ref.oracle.report import ADVICE, FAILED, PASSED, SKIPPED, XFAILED
from tests import corpus
from tests.corpus import select

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 20  # per check, for the broken targets: each is caught well within it
ACCEPT_EXAMPLES = 10  # per check, for the correct targets (every check runs)

SUITE_BROKEN = {level: select("suite", level, conforms=False) for level in ("loss", "logps")}
SUITE_CORRECT = {level: select("suite", level, conforms=True) for level in ("loss", "logps")}


def target(module: str, name: str) -> str:
    return corpus.find(module, name).target


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # reproductions load targets by their relative path


def run_reproduction(result) -> None:
    """Reproductions reproduce: run as they are, they end in the AssertionError of their own last lines (the
    disagreement, at the tolerance the oracle applied), or raise what the check reported the target raising."""
    with pytest.raises(Exception) as raised:
        exec(compile(result.reproduction, "<reproduction>", "exec"), {})
    err = raised.value
    if not (isinstance(err, AssertionError) and "<reproduction>" in _where(err)):
        assert f"raised {type(err).__name__}" in result.message, (err, result.message)


def _where(err: BaseException) -> str:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else ""


def _pairs(level: str, strict: bool = False) -> list:
    """(case, check) for every check a broken case of the suite's set must fail (`strict_fails` if strict)."""
    return [
        pytest.param(c, check, id=f"{c.name}-{check}")
        for c in sorted(SUITE_BROKEN[level], key=lambda c: c.name)
        for check in (c.strict_fails if strict else c.fails)
    ]


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("case, check", _pairs("loss"))
def test_broken_loss_is_rejected(case, check):
    report = verify(case.target, variant=case.variant, checks=[check], max_examples=EXAMPLES, **case.options)
    assert not report.passed
    result = report[check]
    assert result.status == FAILED, result
    assert result.message and result.reproduction
    if check != "call":
        run_reproduction(result)


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("case, check", _pairs("logps"))
def test_broken_logps_is_rejected(case, check):
    report = verify(case.target, level="logps", average=case.average, checks=[check], max_examples=EXAMPLES)
    assert not report.passed
    assert report[check].status == FAILED, report[check]
    run_reproduction(report[check])


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize("case, check", _pairs("loss", strict=True) + _pairs("logps", strict=True))
def test_advisory_check_is_advice_by_default_and_fails_under_strict(case, check):
    report = verify(case.target, level=case.level, checks=[check], max_examples=EXAMPLES)
    assert report.passed and report[check].status == ADVICE, report.to_text()
    strict = verify(case.target, level=case.level, checks=[check], max_examples=EXAMPLES, strict=True)
    assert strict[check].status == FAILED
    run_reproduction(strict[check])


def test_enough_broken_and_correct_targets():
    assert len(SUITE_BROKEN["loss"]) + len(SUITE_BROKEN["logps"]) >= 15
    assert len(SUITE_CORRECT["loss"]) + len(SUITE_CORRECT["logps"]) >= 5
    assert all(c.fails or c.strict_fails for level in SUITE_BROKEN.values() for c in level)


@pytest.mark.parametrize("case", SUITE_CORRECT["loss"], ids=lambda c: c.name)
def test_correct_loss_is_accepted(case):
    report = verify(case.target, variant=case.variant, max_examples=ACCEPT_EXAMPLES, **case.options)
    assert report.passed, report.to_text()
    assert all(c.status in (PASSED, SKIPPED) for c in report.checks), report.to_text()


@pytest.mark.parametrize("case", SUITE_CORRECT["logps"], ids=lambda c: c.name)
def test_correct_logps_is_accepted(case):
    report = verify(case.target, level="logps", average=case.average, max_examples=ACCEPT_EXAMPLES)
    assert report.passed, report.to_text()


def test_dpo_refs_own_functions_conform():
    assert verify(dpo_ref.dpo_loss, variant="cdpo", max_examples=ACCEPT_EXAMPLES).passed
    assert verify(dpo_ref.ipo_loss, variant="ipo", max_examples=ACCEPT_EXAMPLES).passed  # called with tau=
    assert verify(dpo_ref.sequence_logps, level="logps", max_examples=ACCEPT_EXAMPLES).passed


@pytest.mark.parametrize(
    "name, reduction",
    [
        ("per_example", "per-example"),
        ("scalar_mean", "mean"),
        ("scalar_sum", "sum"),
        ("named_tuple_with_rewards", "per"),
    ],
)
def test_reduction_is_detected_and_reported(name, reduction):
    report = verify(target("loss_correct", name), checks=["values"], max_examples=5)
    assert report.detected["reduction"].startswith(reduction)
    assert f"reduction: {report.detected['reduction']}" in report.to_text()


def test_wrong_reduction_is_reported_as_neither():
    report = verify(target("loss_broken", "divides_by_fixed_batch"), checks=["reduction"], max_examples=5)
    assert "neither" in report.detected["reduction"]
    assert report["reduction"].status == FAILED


def test_ipo_mean_and_ipo_judge_the_same_loss_function():
    # at the loss level the two differ only in the log-probs fed; ipo-mean says so
    report = verify(target("loss_correct", "ipo"), variant="ipo-mean", max_examples=5)
    assert report.passed
    assert any("ipo-mean" in n for n in report.notes)


def test_reproduction_is_shrunk_and_deterministic():
    first = verify(target("loss_broken", "reference_unused"), checks=["values"], max_examples=EXAMPLES)
    second = verify(target("loss_broken", "reference_unused"), checks=["values"], max_examples=EXAMPLES)
    assert first["values"].reproduction == second["values"].reproduction
    # shrunk: the generated batches hold up to 8 examples of arbitrary values; the reproduction is tiny
    line = next(ln for ln in first["values"].reproduction.splitlines() if ln.startswith("pc = "))
    assert line.count(",") <= 2, line  # at most two values, then the dtype


def test_gradient_mismatch_reproduction_shows_expected_gradient():
    report = verify(target("loss_broken", "wrong_custom_backward"), checks=["gradients"], max_examples=EXAMPLES)
    repro = report["gradients"].reproduction
    assert ".backward()" in repro and "(dpo_ref, float64)" in repro


def test_batch_sum_fails_unless_declared():
    report = verify(target("loss_correct", "scalar_sum"), max_examples=5)
    assert not report.passed and report["call"].status == FAILED
    assert "gradient grows with the batch size" in report["call"].message
    assert any(d.startswith("batch-sum") for d in report.diagnosis)
    declared = verify(target("loss_correct", "scalar_sum"), reduction="sum", max_examples=5)
    assert declared.passed, declared.to_text()
    wrong = verify(target("loss_correct", "scalar_mean"), reduction="sum", max_examples=5)
    assert not wrong.passed and "declared reduction 'sum'" in wrong["call"].message


@pytest.mark.parametrize("name", ["mean_not_sum", "no_shift", "float16_scoring", "bfloat16_scoring"])
def test_multiplying_mask_advice_only_when_it_is_the_cause(name):
    """These mask with torch.where but compute wrong values, so the -inf check fails on its values, not on a
    0 * -inf NaN: the advice to stop multiplying would be wrong (the value checks and the diagnosis say why)."""
    report = verify(f"tests/corpus/logps_broken.py:{name}", level="logps", max_examples=5)
    assert not report.passed and report["logps_neg_inf_unscored"].status in ("advice", "passed")
    assert not any("masks by multiplying" in a for a in report.advice), report.advice


@pytest.mark.parametrize("name, variant", [("mask_multiply_original", "dpo"), ("averaged_eps_guard", "ipo-mean")])
def test_multiplying_mask_advice_in_the_corpus_styles(name, variant):
    target = f"tests/corpus/logps_correct.py:{name}"
    report = verify(target, level="logps", variant=variant, max_examples=5)
    assert report.passed, report.to_text()
    assert any("masks by multiplying" in a for a in report.advice), report.advice


def test_multiplying_mask_is_advice_not_failure():
    report = verify(target("logps_correct", "mask_by_multiplying"), level="logps", max_examples=10)
    assert report.passed, report.to_text()
    assert report["logps_neg_inf_unscored"].status == "advice"
    assert any("masks by multiplying" in a for a in report.advice)
    assert "Advice" in report.to_text()
    strict = verify(target("logps_correct", "mask_by_multiplying"), level="logps", max_examples=10, strict=True)
    assert not strict.passed and strict["logps_neg_inf_unscored"].status == FAILED
    # with -inf only where dpo_ref never looks, a where-style implementation has nothing to advise
    clean = verify(target("logps_correct", "shift_gather_where"), level="logps", max_examples=10)
    assert clean["logps_neg_inf_unscored"].status == PASSED


def test_xfail_turns_a_known_failure_into_xfailed():
    report = verify(target("loss_broken", "reference_unused"), checks=["values"], xfail=["values"], max_examples=5)
    assert report["values"].status == XFAILED
    assert report.passed


def test_checks_and_xfail_accept_a_single_name():
    """`checks="values"` is one check, not the checks "v", "a", "l", ... (which would be a usage error)."""
    report = verify(target("loss_broken", "reference_unused"), checks="values", xfail="values", max_examples=5)
    assert [c.name for c in report.checks if c.name != "call"] == ["values"]
    assert report["values"].status == XFAILED and report.passed


def test_an_xfail_list_may_name_checks_a_subset_leaves_out():
    """One shared xfail file serves every `--checks` subset: a known check that was not run is not a typo (the
    docs' own example, checks="values" with xfail="finite", raised); a name no check has still is."""
    report = verify(target("loss_correct", "per_example"), checks="values", xfail="finite", max_examples=3)
    assert report.passed and [c.name for c in report.checks] == ["call", "values"]
    with pytest.raises(InputError, match="unknown check"):
        verify(target("loss_correct", "per_example"), checks="values", xfail="finit", max_examples=3)


def test_call_failure_skips_the_rest():
    report = verify(target("loss_broken", "raises_always"), max_examples=5)
    assert report["call"].status == FAILED
    assert "NotImplementedError" in report["call"].message
    assert all(c.status == SKIPPED for c in report.checks if c.name != "call")


def test_nan_output_is_reported():
    def nan_loss(pc, pr, rc, rr, beta=0.1):
        return torch.full_like(pc, float("nan"))

    report = verify(nan_loss, checks=["values", "finite"], max_examples=5)
    assert report["values"].status == FAILED and "nan" in report["values"].message
    assert report["finite"].status == FAILED


def test_report_serialises():
    report = verify(target("loss_correct", "per_example"), checks=["values"], max_examples=5)
    data = report.to_dict()
    assert data["passed"] is True
    assert data["counts"]["passed"] == 2  # call and values
    assert '"level": "loss"' in report.to_json()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(variant="kto"), "variant must be one of"),
        (dict(variant="dpo", label_smoothing=0.1), "cdpo only"),
        (dict(variant="cdpo", label_smoothing=0.7), "label_smoothing must be in"),
        (dict(beta=-1.0), "beta must be a positive"),
        (dict(max_examples=0), "max_examples"),
        (dict(level="tokens"), "level must be one of"),
        (dict(checks=["nope"]), "unknown check"),
        (dict(xfail=["nope"], checks=["values"]), "xfail names unknown"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, words):
    with pytest.raises(InputError, match=words):
        verify(target("loss_correct", "per_example"), max_examples=kwargs.pop("max_examples", 5), **kwargs)


def test_signature_problems_are_input_errors():
    def no_beta(pc, pr, rc, rr):
        return pc

    def no_eps(pc, pr, rc, rr, beta=0.1):
        return pc

    with pytest.raises(InputError, match="no `beta` keyword"):
        verify(no_beta)
    with pytest.raises(InputError, match="label_smoothing"):
        verify(no_eps, variant="cdpo")


def test_load_target_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    ok = tmp_path / "ok.py"
    ok.write_text("VALUE = 3\ndef f(*a, **k):\n    return 0\n")
    cases = [
        ("nothing_here.py:f", "does not exist"),
        (f"{bad}:f", "RuntimeError: boom"),
        (f"{ok}:g", "has no attribute 'g'"),
        (f"{ok}:VALUE", "not a callable"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("just_a_name", "must be path/to/file.py:name"),
    ]
    for spec, words in cases:
        with pytest.raises(InputError, match=words):
            load_target(spec)
    assert callable(load_target(f"{ok}:f"))
    assert load_target("dpo_ref.losses:dpo_loss") is dpo_ref.dpo_loss
    assert load_target("trl") == "trl"


@pytest.mark.parametrize("name", ["reference_unused", "beta_divides", "reference_added"])
def test_reproduction_shows_a_plain_disagreement(name):
    """Shrinking alone can shrink the miss too (1e-13 near h = 0); the reported example must show a
    relative miss of at least CLEAR_DISAGREEMENT, on a single row, when such an example exists."""
    import re

    from dpo_ref.oracle.runner import CLEAR_DISAGREEMENT

    result = verify(target("loss_broken", name), checks=["values"], max_examples=EXAMPLES)["values"]
    got, want = (float(v) for v in re.search(r"got (\S+), expected (\S+) ", result.message).groups())
    assert abs(got - want) >= CLEAR_DISAGREEMENT * abs(want), result.message
    line = next(ln for ln in result.reproduction.splitlines() if ln.startswith("pc = "))
    assert line.count(",") == 1, line  # one value, then the dtype


def test_half_precision_is_named_only_within_what_half_precision_explains():
    """Half rounding explains about eps_half (|logit| + 1) per token: a row off by 1 nat (a wrong token, an
    offset) is not "half-precision", while a log-softmax really done in bfloat16 is named as such."""
    from dpo_ref.oracle.diagnosis import diagnose_logps

    def offset(logits, labels):
        return dpo_ref.sequence_logps(logits, labels) - 1.0

    def in_bfloat16(logits, labels):
        lp = logits[:, :-1].to(torch.bfloat16).log_softmax(-1).double()
        mask = labels[:, 1:] != -100
        return torch.where(mask, lp.gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0], 0.0).sum(-1)

    assert not any("half" in d for d in diagnose_logps(offset, False))
    assert any("bfloat16" in d or "half" in d for d in diagnose_logps(in_bfloat16, False))
