"""The pipeline and packed levels on code nobody here wrote: the corpus's "pipeline" group (tests/corpus/, labelled
in pipeline_index.py by a separate session and proved without the oracle in
tests/meta/test_pipeline_corpus_selfcheck.py). Every correct implementation conforms (and the convention it
declares is the one detected), every broken one is rejected with its diagnosis named, every check bites, and
the levels work from the CLI, the Python API and the pytest plugin.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

import dpo_ref
from dpo_ref.oracle.levels import check_names
from dpo_ref.oracle.packed import PACKED_CHECKS
from dpo_ref.oracle.pipeline import PIPELINE_CHECKS, Convention
from tests.corpus import select
from tests.corpus.pipeline_index import INDEX

PIPELINES = [c for c in select("pipeline") if c.level == "pipeline"]
PACKED = [c for c in select("pipeline") if c.level == "packed"]
CONVENTIONS = {e.target: e.convention for e in INDEX}
QUICK = {"pipeline": 4, "packed": 20}  # examples per check in the quick tier
FULL = {"pipeline": 10, "packed": 50}  # and in the full tier (a broken one stops at its first failing check)


def _verify(case, full: bool, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options.setdefault("max_examples", (FULL if full else QUICK)[case.level])
        options.setdefault("fail_fast", not case.conforms)
        return dpo_ref.verify(case.target, level=case.level, **options)


def _id(case) -> str:
    return case.name


# the quick tier runs these; the full tier (`--full`, as CI) runs the whole corpus
QUICK_CASES = {
    "trl_concatenated_forward", "row_by_row_joint", "left_pad_no_position_ids", "chosen_rejected_swapped",
    "detached_logps", "packed_segment_ids_index_add", "packed_global_shift_unmasked", "packed_half_precision",
}  # fmt: skip


def _tiered(cases):
    return [c if c.name in QUICK_CASES else pytest.param(c, marks=pytest.mark.slow) for c in cases]


def test_the_corpus_is_large_enough():
    assert len([c for c in PIPELINES if c.conforms]) >= 12 and len([c for c in PIPELINES if not c.conforms]) >= 20
    assert len([c for c in PACKED if c.conforms]) >= 4 and len([c for c in PACKED if not c.conforms]) >= 6


@pytest.mark.parametrize("case", _tiered([c for c in PIPELINES + PACKED if c.conforms]), ids=_id)
def test_correct_implementation_conforms(case, full):
    report = _verify(case, full)
    assert report.passed, report.to_text()
    if case.level == "pipeline":
        declared = CONVENTIONS[case.target]
        conv = Convention(declared["tokenize"], declared["bos"], declared["eos"])
        assert report.detected["convention"].startswith(str(conv)), report.detected


@pytest.mark.parametrize("case", _tiered([c for c in PIPELINES + PACKED if not c.conforms]), ids=_id)
def test_broken_implementation_is_rejected_with_its_diagnosis(case, full):
    report = _verify(case, full)
    assert not report.passed, report.to_text()
    named = [d.split(":")[0] for d in report.diagnosis]
    assert case.diagnosis in named, (case.diagnosis, report.diagnosis)


# Each check, run alone, rejects this broken implementation: a check removed or made blind fails here.
BITES = {
    "pipeline_values": "left_pad_mask_forgotten",
    "pipeline_absolute_positions": "left_pad_no_position_ids",
    "pipeline_long_rows": "truncated_to_max_length",
    "pipeline_one_token": "mask_applied_after_shift",
    "pipeline_no_pad_token": "eos_masked_as_pad",
    "pipeline_batch_composition": "first_row_prompt_length",
    "pipeline_gradients": "detached_logps",
    "pipeline_model_unchanged": "leaves_train_mode",
    "packed_values": "packed_no_shift",
    "packed_values_float32": "packed_double_shift",
    "packed_boundary": "packed_global_shift_unmasked",
    "packed_single_tokens": "packed_window_one_past_end",
    "packed_large": "packed_cu_seqlens_as_lengths",
    "packed_repeatable": "packed_segment_last_dropped",
    "packed_gradients": "packed_mean_not_sum",
    "packed_inputs_unmodified": "packed_holes_clamped_in_place",
}


def test_every_check_has_a_bite():
    assert set(BITES) == {c.name for c in PIPELINE_CHECKS + PACKED_CHECKS}
    assert set(check_names("pipeline")) - {"call"} | set(check_names("packed")) - {"call"} == set(BITES)


def _in_place(logits, labels, cu_seqlens):
    """Right values, but writes into its input (clamps the -100 labels in place)."""
    out = dpo_ref.packed_sequence_logps(logits, labels.clone(), cu_seqlens)
    labels.clamp_(min=0)
    return out


@pytest.mark.parametrize("check", sorted(BITES))
def test_each_check_alone_rejects_its_broken_implementation(check):
    name = BITES[check]
    if name == "packed_holes_clamped_in_place":
        target, level = _in_place, "packed"
    else:
        case = next(c for c in PIPELINES + PACKED if c.name == name)
        target, level = case.target, case.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = dpo_ref.verify(target, level=level, checks=[check], max_examples=QUICK[level])
    assert [c.name for c in report.checks if c.failed] == [check], report.to_text()


def test_the_reference_packed_function_conforms():
    report = dpo_ref.verify(dpo_ref.packed_sequence_logps, level="packed", max_examples=30)
    assert report.passed, report.to_text()
    averaged = dpo_ref.verify(
        lambda lg, lab, cu: dpo_ref.packed_sequence_logps(lg, lab, cu, average=True),
        level="packed",
        average=True,
        max_examples=30,
    )
    assert averaged.passed, averaged.to_text()


def test_packed_reference_equals_each_segment_alone_on_a_hand_example():
    # two segments: [a b c] and [d e]; labels 1,2 and 0 scored; the second segment's first label (0) is not
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.6, 0.2],
                                      [0.3, 0.3, 0.4]]], dtype=torch.float64))  # fmt: skip
    labels = torch.tensor([[-100, 1, 2, 0, 1]])
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    out = dpo_ref.packed_sequence_logps(logits, labels, cu)
    expected = torch.tensor([math.log(0.25 * 0.8), math.log(0.6)], dtype=torch.float64)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "cu, words",
    [([0, 3], "rise from 0"), ([1, 5], "rise from 0"), ([0, 4, 2, 5], "rise from 0"), ([[0, 5]], "shape")],
)
def test_packed_reference_refuses_bad_cu_seqlens(cu, words):
    with pytest.raises(dpo_ref.InputError, match=words):
        dpo_ref.packed_sequence_logps(torch.zeros(1, 5, 3), torch.zeros(1, 5, dtype=torch.long), torch.tensor(cu))


def test_a_pinned_convention_is_used_and_a_bad_one_refused():
    case = next(c for c in PIPELINES if c.name == "trl_concatenated_forward")  # separate+bos+eos
    pinned = dpo_ref.verify(case.target, level="pipeline", convention="joint", checks=["pipeline_values"],
                            max_examples=3)  # fmt: skip
    assert not pinned.passed and "pinned: joint" in pinned.settings["convention"]
    with pytest.raises(dpo_ref.InputError, match="convention must be one of"):
        dpo_ref.verify(case.target, level="pipeline", convention="both")
    with pytest.raises(dpo_ref.InputError, match="pipeline level only"):
        dpo_ref.verify(case.target, level="loss", convention="joint")


def test_cli_exit_status_and_report(tmp_path):
    good = next(c for c in PACKED if c.conforms).target
    bad = next(c for c in PACKED if c.diagnosis == "cross-boundary").target
    run = [sys.executable, "-m", "dpo_ref", "verify", "--level", "packed", "--max-examples", "10"]
    ok = subprocess.run([*run, good], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    no = subprocess.run([*run, bad], capture_output=True, text=True, timeout=300)
    assert no.returncode == 1 and "cross-boundary" in no.stdout, no.stdout + no.stderr
    pipe = next(c for c in PIPELINES if c.diagnosis == "chosen-rejected-swapped").target
    out = subprocess.run([sys.executable, "-m", "dpo_ref", "verify", pipe, "--level", "pipeline", "--max-examples",
                          "3", "--fail-fast"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1 and "chosen-rejected-swapped" in out.stdout, out.stdout + out.stderr


def test_pytest_plugin_runs_the_packed_checks(tmp_path):
    good = next(c for c in PACKED if c.conforms).target
    test = tmp_path / "test_mine.py"
    test.write_text(
        "from dpo_ref import parametrize_with_dpo_checks\n"
        f"@parametrize_with_dpo_checks({good!r}, level='packed', max_examples=5)\n"
        "def test_dpo(dpo_check):\n    dpo_check()\n"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, cwd=root, timeout=300)  # fmt: skip
    assert run.returncode == 0 and f"{len(PACKED_CHECKS) + 1} passed" in run.stdout, run.stdout + run.stderr
