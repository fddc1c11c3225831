"""The oracle's verdict can be trusted: calibrated precision, advice kept apart, reductions, name mapping,
usage errors for signatures it cannot call, targets that try to end or hang the run, pure JSON, progress.

Each test pairs an acceptance with a rejection, so the behaviour it shows can fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import dpo_ref
from dpo_ref.checks import properties as P
from dpo_ref.cli import main
from dpo_ref.oracle import adapters, load_target, verify
from dpo_ref.oracle.report import ADVICE, FAILED, PASSED

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "tests/corpus"
FEW = 8  # examples per check: every behaviour here shows on the first few


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _write(tmp_path: Path, body: str, name: str = "target.py") -> str:
    path = tmp_path / name
    path.write_text("import torch\nimport torch.nn.functional as F\n" + textwrap.dedent(body))
    return str(path)


# --- precision: the verdict is about the formula, the grade about the arithmetic ---------------------------


def test_float32_arithmetic_conforms_with_its_grade_and_strict_rejects_it():
    report = verify(f"{CORPUS}/loss_correct.py:float32_internal", max_examples=FEW)
    assert report.passed, report.to_text()
    assert report.precision["grade"] == "float32-level"
    assert 1 < report.precision["worst_units_of_float64_bound"] <= P.EPS_FLOAT32 / P.EPS_FLOAT64
    strict = verify(f"{CORPUS}/loss_correct.py:float32_internal", max_examples=FEW, strict=True, checks="values")
    assert not strict.passed and strict["values"].status == FAILED


def test_dpo_ref_itself_is_float64_exact_even_under_strict():
    report = verify(dpo_ref.dpo_loss, variant="cdpo", max_examples=FEW, strict=True)
    assert report.passed, report.to_text()
    assert report.precision["grade"] == "float64-exact"


@pytest.mark.slow
def test_softplus_threshold_passes_by_default_on_any_draw():
    """F.softplus(x) returns x above 20: an error below e^-20 relative, inside the float32-level tolerance for
    every input, so the verdict cannot depend on which inputs Hypothesis draws."""
    for examples in (5, 60):
        assert verify(f"{CORPUS}/loss_correct.py:softplus_default", max_examples=examples).passed


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
def test_half_precision_margin_is_rejected_and_named():
    report = verify(f"{CORPUS}/loss_broken.py:half_precision_margin", max_examples=FEW, fail_fast=True)
    assert not report.passed
    assert [d.split(":", 1)[0] for d in report.diagnosis] == ["half-precision"], report.diagnosis


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
def test_a_shifted_margin_is_not_called_half_precision():
    """A mistake of another kind (here each margin minus the batch mean) is outside the half-precision band,
    however large the inputs: the band is the rounding of half-rounded log-probs, not a loose tolerance."""
    report = verify(f"{CORPUS}/loss_broken.py:batch_centred_margin", max_examples=FEW, fail_fast=True)
    assert not report.passed
    assert not any(d.startswith("half-precision") for d in report.diagnosis), report.diagnosis


def _scoring_in(dtype):
    def fn(logits, labels):  # an independent style: log_softmax in `dtype`, gathered, masked with where
        lb = labels[:, 1:]
        lp = logits[:, :-1].to(dtype).log_softmax(-1).gather(-1, lb.clamp_min(0)[..., None])[..., 0]
        return torch.where(lb != -100, lp.to(logits.dtype), 0.0).sum(-1)

    return fn


@pytest.mark.parametrize(
    "fn, name",
    [
        (_scoring_in(torch.float16), "float16-scoring"),
        (_scoring_in(torch.bfloat16), "bfloat16-scoring"),
        (load_target(f"{CORPUS}/logps_broken.py:float16_scoring"), "float16-scoring"),
        (load_target(f"{CORPUS}/logps_broken.py:bfloat16_scoring"), "bfloat16-scoring"),
    ],
)
def test_half_precision_scoring_names_only_the_dtype_used(fn, name):
    """The diagnosis slack is the bfloat16 rounding, so a float16 log-softmax is also within it of the bfloat16
    candidate (and vice versa); only the dtype whose values are closer (eps 8x apart) is named."""
    from dpo_ref.oracle.diagnosis import diagnose_logps

    named = [d.split(":", 1)[0] for d in diagnose_logps(fn, average=False)]
    assert named == [name], named


def test_equal_infinities_agree_and_nan_does_not():
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    P._close(inf, inf.clone(), torch.zeros(1, dtype=torch.float64), "equal infinities")
    with pytest.raises(P.PropertyViolation):
        P._close(-inf, inf, torch.ones(1, dtype=torch.float64), "opposite infinities")
    with pytest.raises(P.PropertyViolation):
        P._close(inf * 0, inf * 0, torch.ones(1, dtype=torch.float64), "NaN")


# --- advice is not a verdict ------------------------------------------------------------------------------


def test_undetached_rewards_are_advice_and_fail_only_under_strict():
    report = verify(f"{CORPUS}/loss_broken.py:rewards_not_detached", max_examples=FEW)
    assert report.passed and report["rewards_detached"].status == ADVICE
    assert any("detach" in a for a in report.advice)
    assert not verify(f"{CORPUS}/loss_broken.py:rewards_not_detached", max_examples=FEW, strict=True).passed


def test_detach_advice_only_when_the_rewards_carry_the_graph(tmp_path):
    """Rewards read through .numpy() raise on inputs that require grad: the advisory check fails, but not
    because the rewards carry the graph, so the fixed "detach them" advice would send the user the wrong way."""
    path = _write(
        tmp_path,
        """
        def loss(pc, pr, rc, rr, beta=0.1):
            h = (pc - rc) - (pr - rr)
            chosen = torch.from_numpy(beta * (pc - rc).numpy())  # numpy for logging
            rejected = torch.from_numpy(beta * (pr - rr).numpy())
            return -F.logsigmoid(beta * h), chosen, rejected
        """,
    )
    report = verify(f"{path}:loss", max_examples=FEW)
    assert report["rewards_detached"].status == ADVICE, report.to_text()
    assert not any("detach" in a for a in report.advice), report.advice


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
def test_wrong_rewards_fail_and_say_what_they_are():
    report = verify(f"{CORPUS}/loss_broken.py:rewards_without_beta", max_examples=FEW)
    assert report["rewards"].status == FAILED
    assert "without the coefficient" in report["rewards"].message


# --- calling conventions ------------------------------------------------------------------------------------


class _ModuleWithFixedBeta(torch.nn.Module):  # torchtune's style: beta fixed at construction
    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, pc, pr, rc, rr):
        return -torch.nn.functional.logsigmoid(self.beta * ((pc - rc) - (pr - rr)))


class _ModuleTakingBeta(torch.nn.Module):
    def forward(self, pc, pr, rc, rr, beta=0.1):
        return -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def test_a_module_is_read_by_its_forward_signature():
    """nn.Module.__call__ takes *args, **kwargs: reading that, a module with beta fixed at construction was
    called with beta= and reported as not conforming (exit 1). It is a usage error with a wrapping hint; a
    module whose forward takes beta is verified as it stands."""
    from dpo_ref.errors import InputError

    with pytest.raises(InputError, match=r"takes no `beta`.*_ModuleWithFixedBeta\(beta=beta\)"):
        verify(_ModuleWithFixedBeta(), max_examples=FEW)
    assert verify(_ModuleTakingBeta(), max_examples=FEW).passed
    wrapped = verify(lambda pc, pr, rc, rr, beta: _ModuleWithFixedBeta(beta=beta)(pc, pr, rc, rr), max_examples=FEW)
    assert wrapped.passed, wrapped.to_text()


def test_parameters_named_in_another_order_are_passed_by_name():
    report = verify(f"{CORPUS}/loss_correct.py:reordered_parameters", max_examples=FEW)
    assert report.passed, report.to_text()
    assert any("passed by name" in n for n in report.notes)


@pytest.mark.parametrize(
    "body, level, words",
    [
        ("def f(logits, labels, loss_mask):\n    return logits.sum((1, 2))\n", "logps", "from_loss_mask"),
        ("def f(logits):\n    return logits.sum((1, 2))\n", "logps", "not (logits, labels)"),
        ("def f(pc, pr, rc, beta=0.1):\n    return pc\n", "loss", "not the four log-probs"),
        ("def f(pc, pr, rc, rr, mask, beta=0.1):\n    return pc\n", "loss", "requires more than the four"),
    ],
)
def test_a_signature_that_cannot_be_called_is_a_usage_error_with_a_hint(tmp_path, capsys, body, level, words):
    path = _write(tmp_path, body)
    assert main(["verify", f"{path}:f", "--level", level, "--max-examples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def _masked_logps(logits, labels, loss_mask):  # a correct (logits, labels, loss_mask) function
    lp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:, None])[..., 0]
    return (lp * loss_mask[:, 1:]).sum(-1)


def _masked_logps_ignoring_mask(logits, labels, loss_mask):  # the same, mask forgotten
    return torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[:, 1:, None])[..., 0].sum(-1)


def _concatenated(logits, labels):  # chosen and rejected in one batch, split in halves
    out = dpo_ref.sequence_logps(logits, labels)
    return out.chunk(2)


def _concatenated_swapped(logits, labels):  # the halves returned the wrong way round
    chosen, rejected = dpo_ref.sequence_logps(logits, labels).chunk(2)
    return rejected, chosen


def _hidden(hidden, weight, labels):
    return dpo_ref.sequence_logps(hidden @ weight.T, labels)


def _hidden_without_shift(hidden, weight, labels):
    logits = hidden @ weight.T
    mask = labels != -100
    lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp_min(0)[..., None])[..., 0]
    return (lp * mask).sum(-1)


@pytest.mark.parametrize(
    "adapter, good, bad",
    [
        (adapters.from_loss_mask, _masked_logps, _masked_logps_ignoring_mask),
        (adapters.from_input_ids_mask, _masked_logps, _masked_logps_ignoring_mask),
        (adapters.from_concatenated, _concatenated, _concatenated_swapped),
        (adapters.from_hidden_states, _hidden, _hidden_without_shift),
    ],
)
def test_shape_adapters_accept_correct_and_reject_broken(adapter, good, bad):
    assert verify(adapter(good), level="logps", max_examples=FEW).passed
    report = verify(adapter(bad), level="logps", max_examples=FEW)
    assert not report.passed


def _hidden_weight_not_transposed(hidden, weight, labels):  # hidden @ W for hidden @ W.T
    return dpo_ref.sequence_logps(hidden @ weight, labels)


def _hidden_weight_rows_rescaled(hidden, weight, labels):  # logits scaled by the rows' norms
    return dpo_ref.sequence_logps((hidden @ weight.T) * weight.norm(dim=-1), labels)


def _hidden_weight_rows_normalised(hidden, weight, labels):  # a "normalised" head, W / ||W_i||
    return dpo_ref.sequence_logps(hidden @ (weight / weight.norm(dim=-1, keepdim=True)).T, labels)


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
@pytest.mark.parametrize(
    "bad", [_hidden_weight_not_transposed, _hidden_weight_rows_rescaled, _hidden_weight_rows_normalised]
)
def test_hidden_state_adapter_sees_how_the_lm_head_weight_is_used(bad):
    """An identity LM head (the old adapter) passed all three: the weight handed over is non-square and its
    rows differ in scale, while hidden @ W.T still equals the logits exactly (so correct code stays exact)."""
    assert not verify(adapters.from_hidden_states(bad), level="logps", max_examples=FEW, fail_fast=True).passed


def test_hidden_state_adapter_stays_float64_exact():
    """The LM head it builds reproduces the logits exactly: a correct target passes the values under strict."""
    strict = verify(
        adapters.from_hidden_states(_hidden), level="logps", max_examples=FEW, strict=True, checks="logps_values"
    )
    assert strict.passed and strict["logps_values"].status == PASSED, strict.to_text()


def test_shape_adapter_failures_are_diagnosed():
    report = verify(adapters.from_hidden_states(_hidden_without_shift), level="logps", max_examples=FEW)
    assert any(d.startswith("no-shift") for d in report.diagnosis), report.diagnosis


# --- a diagnosis for any target, from the CLI too --------------------------------------------------------------


@pytest.mark.usefixtures("unshrunk_in_quick_tier")
def test_a_file_target_gets_a_named_diagnosis_on_the_command_line(capsys):
    argv = ["verify", f"{CORPUS}/loss_broken.py:cdpo_is_robust", "--variant", "cdpo", "--max-examples", "5"]
    code = main([*argv, "--fail-fast"])  # the diagnosis still runs when fail-fast stops at the first failure
    out = capsys.readouterr().out
    assert code == 1
    assert "Diagnosis:" in out and "robust-dpo" in out, out
    assert "not run: fail-fast stopped at the first failing check" in out


# --- the target cannot fool the oracle ---------------------------------------------------------------------


def test_system_exit_at_import_is_a_failed_verification(tmp_path, capsys):
    path = _write(tmp_path, "import sys\nsys.exit(0)\ndef f(pc, pr, rc, rr, beta=0.1):\n    return pc\n")
    assert main(["verify", f"{path}:f", "--max-examples", "2"]) == 1
    report = verify(f"{path}:f")
    assert not report.passed and "SystemExit(0)" in report["call"].message


@pytest.mark.parametrize("where", ["call", "checks"])
def test_system_exit_in_the_call_is_a_failed_check(tmp_path, capsys, where):
    guard = "" if where == "call" else "    if pc.shape[0] != 3:\n    "
    body = (
        "import sys\ndef f(pc, pr, rc, rr, beta=0.1):\n"
        f"{guard}    sys.exit(0)\n"
        "    return F.softplus(-beta * ((pc - rc) - (pr - rr)))\n"
    )
    path = _write(tmp_path, body)
    assert main(["verify", f"{path}:f", "--max-examples", "3", "--checks", "values"]) == 1
    out = capsys.readouterr().out
    assert "SystemExit(0)" in out
    assert "TargetRaised" not in out and out.count("the target raised") == out.count("SystemExit(0)"), out


def test_keyboard_interrupt_still_stops_the_run(tmp_path):
    path = _write(tmp_path, "def f(pc, pr, rc, rr, beta=0.1):\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        verify(f"{path}:f")


def test_json_stdout_stays_json_when_the_target_prints(tmp_path):
    body = (
        "import os\ndef f(pc, pr, rc, rr, beta=0.1):\n"
        "    print('chatty python')\n    os.write(1, b'chatty fd\\n')\n"
        "    return F.softplus(-beta * ((pc - rc) - (pr - rr)))\n"
    )
    path = _write(tmp_path, body)
    out = subprocess.run(
        [sys.executable, "-m", "dpo_ref", "verify", f"{path}:f", "--json", "-", "--max-examples", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["passed"] is True
    assert "chatty" in out.stderr and "PASS" in out.stderr  # the prints and the progress went to stderr


def test_progress_reports_each_check_once_as_it_finishes():
    seen = []
    report = verify(f"{CORPUS}/loss_correct.py:logsigmoid_standard", max_examples=2, progress=seen.append)
    assert [r.name for r in seen] == [c.name for c in report.checks]
    assert all(r.status in (PASSED, "skipped") for r in seen)


# --- --isolate: process groups, leftovers, Ctrl-C ----------------------------------------------------------


def _token_processes(token_file: Path) -> list[int]:
    """pids still alive whose environment carries the marker written by the target."""
    marker = token_file.read_text().strip().encode() if token_file.exists() else b"\0never"
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def _leaver(tmp_path: Path, hang: bool) -> tuple[str, Path]:
    token_file = tmp_path / "token"
    body = f"""
        import os, subprocess, sys, time
        marker = "DPO_REF_TEST_MARKER=" + str(os.getpid())
        open({str(token_file)!r}, "w").write(marker)
        env = dict(os.environ, DPO_REF_TEST_MARKER=str(os.getpid()))
        # a grandchild in a session of its own, holding our stdout/stderr, sleeping for an hour
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], env=env, start_new_session=True)
        def f(pc, pr, rc, rr, beta=0.1):
            {"time.sleep(3600)" if hang else "pass"}
            return F.softplus(-beta * ((pc - rc) - (pr - rr)))
        """
    return _write(tmp_path, body), token_file


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
@pytest.mark.slow  # two real processes; with hang=True it waits out --timeout
@pytest.mark.parametrize("hang", [False, True])
def test_isolate_is_not_held_up_by_a_leftover_process_and_kills_it(tmp_path, hang):
    path, token_file = _leaver(tmp_path, hang)
    start = time.monotonic()
    argv = ["verify", f"{path}:f", "--isolate", "--timeout", "60", "--max-examples", "2", "--checks", "values"]
    out = subprocess.run(
        [sys.executable, "-m", "dpo_ref", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert time.monotonic() - start < 200
    assert out.returncode == (1 if hang else 0), out.stderr
    if hang:
        assert "did not finish within 60 s" in out.stderr
    time.sleep(0.5)
    assert _token_processes(token_file) == []  # the grandchild in its own session is gone too


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_ctrl_c_under_isolate_stops_the_child_and_what_it_started(tmp_path):
    path, token_file = _leaver(tmp_path, hang=True)
    argv = ["verify", f"{path}:f", "--isolate", "--max-examples", "2", "--checks", "values"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "dpo_ref", *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 200
    while not (token_file.exists() and len(_token_processes(token_file)) >= 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, err
    time.sleep(0.5)
    assert _token_processes(token_file) == []


@pytest.mark.slow
def test_subtle_bugs_are_still_rejected_at_float32_level():
    """The float32-level tolerance still rejects what matters: beta floored for small beta, NaN on ties."""
    for name in ("beta_floored", "nan_on_ties", "half_precision_margin"):
        assert not verify(f"{CORPUS}/loss_broken.py:{name}", max_examples=30).passed, name


def test_a_module_target_resolves_from_the_current_directory(tmp_path, monkeypatch):
    """`dpo-ref verify mypkg.losses:f` from the directory holding mypkg/ (the console script's sys.path does not
    start with the current directory, unlike `python -m`)."""
    import sys as _sys

    from dpo_ref.oracle import load_target

    (tmp_path / "mypkg_cwd").mkdir()
    (tmp_path / "mypkg_cwd" / "__init__.py").write_text("")
    (tmp_path / "mypkg_cwd" / "losses.py").write_text("def f(pc, pr, rc, rr, beta=0.1):\n    return pc\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_sys, "path", [p for p in _sys.path if p not in ("", str(tmp_path), os.getcwd())])
    assert callable(load_target("mypkg_cwd.losses:f"))
