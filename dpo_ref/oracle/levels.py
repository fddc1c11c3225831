"""Verify one normalised target at one level: the `call` check, then every catalogue check, then a diagnosis.

`verify_loss` and `verify_logps` are what `dpo_ref.verify` and the library adapters (`dpo_ref.oracle.adapters`)
call; they depend on the catalogue, the runner and the diagnoses, never on the API module (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

import dpo_ref.oracle.diagnosis as diagnosis
from dpo_ref.checks.properties import TOLERANCE_K
from dpo_ref.errors import InputError
from dpo_ref.oracle.catalogue import LOGPS_CHECKS, MARGIN_CHECKS, Config, probe_spec
from dpo_ref.oracle.family_checks import FAMILY_BATCH, GENERAL_CHECKS
from dpo_ref.oracle.report import ADVICE as ADVICE_STATUS
from dpo_ref.oracle.report import FAILED, PASSED, SKIPPED, CheckResult, Report
from dpo_ref.oracle.runner import describe_error, guarded, run_check
from dpo_ref.oracle.snippets import HEADER
from dpo_ref.oracle.targets import LogpsTarget, LossTarget
from dpo_ref.variants import CLOSED_FORM, LOSS_FAMILY

Progress = Callable[[CheckResult], None] | None

# One table of loss-level checks: those with closed-form values and gradients (`catalogue.MARGIN_CHECKS`) and
# those against the mpmath reference (`family_checks.GENERAL_CHECKS`); the registry says which apply to a variant.
LOSS_CHECKS = MARGIN_CHECKS + GENERAL_CHECKS


def loss_checks(variant: str = "dpo") -> tuple:
    """The loss-level checks that apply to `variant` (its registry record's properties)."""
    return tuple(c for c in LOSS_CHECKS if c.applies(variant))


def level_checks(level: str, variant: str = "dpo") -> tuple:
    """The checks run at `level` for `variant`."""
    if level == "loss":
        return loss_checks(variant)
    if level == "packed":
        from dpo_ref.oracle.packed import PACKED_CHECKS

        return PACKED_CHECKS
    if level == "pipeline":
        from dpo_ref.oracle.pipeline import PIPELINE_CHECKS

        return PIPELINE_CHECKS
    return LOGPS_CHECKS


def check_names(level: str, variant: str = "dpo") -> list[str]:
    """The names of the checks run at `level` for `variant` (what an xfail file may list)."""
    return ["call"] + [c.name for c in level_checks(level, variant)]


def settings_for(cfg: Config, level: str) -> dict:
    """The settings a report shows: what was claimed and how hard the checks looked."""
    unit = "eps_dtype (float64-exact demanded: --strict)" if cfg.strict else "max(eps_dtype, eps_float32)"
    out = {"max_examples per check": cfg.max_examples}
    if level == "pipeline":
        out["expected"] = "each row scored alone, unpadded, positions 0..L-1, float64, under the detected convention"
        out["models"] = "Llama (rotary) and GPT-2 (absolute positions), tokenizers with and without a pad token"
        out["tolerance"] = f"{TOLERANCE_K:g} u (4 n_tokens (max|logit| + 1) + 1), u = max(eps_float64, eps_float32)"
        if cfg.convention:
            out["convention"] = f"pinned: {cfg.convention}"
        return out
    if level in ("logps", "packed"):
        out["convention"] = "mean over scored tokens" if cfg.average else "sum over scored tokens"
        out["tolerance"] = f"{TOLERANCE_K:g} u (4 n_tokens (max|logit| + 1) + 1), u = {unit}"
        return out
    record = cfg.record
    reduction = {"auto": "per-example or batch mean"}.get(cfg.reduction, f"declared: {cfg.reduction}")
    if record.oracle == CLOSED_FORM:
        coef = "tau" if "tau" in record.coefficients else "beta"
        out[coef] = cfg.beta if cfg.beta is not None else "drawn from 1e-3 to 1e3"
        if "label_smoothing" in record.coefficients:
            out["label_smoothing"] = cfg.label_smoothing if cfg.label_smoothing is not None else "drawn from (0, 0.49]"
        out["reduction"] = reduction
        out["tolerance"] = (
            f"|L - L_ref| <= {TOLERANCE_K:g} u (|dL/dh| sum|inputs| + |L_ref| + 1 + beta sum|log-ratios|), u = {unit}"
        )
        return out
    fixed = dict(cfg.coefficients)
    out["formula"] = f"dpo_ref.family {record.key} ({record.paper})"
    for c in record.coefficients:
        out[c] = fixed.get(c, "drawn from its valid range")
    if record.needs_lengths:
        out["lengths"] = "chosen_lengths=, rejected_lengths= (int64 scored-token counts, drawn from 1 to 64)"
    out["batch"] = f"up to {FAMILY_BATCH} pairs"
    out["reduction"] = reduction
    unit = "eps_dtype (--strict)" if cfg.strict else "max(eps_dtype, eps_float32)"
    out["tolerance"] = f"{TOLERANCE_K:g} u (G (S + C_h) + |L| + C_L + 1) (dpo_ref.checks.family_properties), u = {unit}"
    return out


def probe_coefficients(cfg: Config) -> dict:
    """The coefficients of the `call` probe and the diagnosis: the fixed ones, else the table's probe values
    (closed form: beta or tau 0.5, eps 0.1; otherwise the reference function's defaults)."""
    if cfg.record.oracle == CLOSED_FORM:
        return probe_spec(cfg).coefficients
    import inspect

    record = cfg.record
    defaults = {n: p.default for n, p in inspect.signature(record.fn).parameters.items() if n in record.coefficients}
    return {**defaults, **dict(cfg.coefficients)}


def select(all_checks, only: Iterable[str] | None, level: str, variant: str = "dpo"):
    if only is None:
        return list(all_checks)
    only = set(only)
    unknown = only - set(check_names(level, variant))
    if unknown:
        raise InputError(
            f"unknown check(s) {', '.join(sorted(unknown))}; {level} checks: {', '.join(check_names(level, variant))}"
        )
    return [c for c in all_checks if c.name in only]


def _probe_lines() -> list[str]:
    from dpo_ref.oracle.targets import PROBE_LOGPS

    pc, pr, rc, rr = (f"torch.tensor({v}, dtype=torch.float64)" for v in PROBE_LOGPS)
    return [f"pc, pr = {pc}, {pr}", f"rc, rr = {rc}, {rr}"]


def _emit(report: Report, result: CheckResult, progress: Progress) -> None:
    report.checks.append(result)
    if progress is not None:
        progress(result)


def _basic_call_failed(report, call, err, selected, lines: list[str], progress: Progress) -> Report:
    """The target fails on a plain batch: report that with a reproduction and skip every other check."""
    call.status, call.message = FAILED, describe_error(err)
    call.reproduction = "\n".join([HEADER, *lines])
    _emit(report, call, progress)
    for c in selected:
        _emit(report, CheckResult(c.name, SKIPPED, c.description, "not run: the target fails the basic call"), progress)
    return report


def _worth_diagnosing(report: Report, selected) -> bool:
    """A value check failed, or fail-fast stopped before the value checks could say."""
    value_checks = {c.name for c in selected if c.value}
    return any(c.failed and c.name in value_checks for c in report.checks) or any(
        c.message == FAIL_FAST_SKIP and c.name in value_checks for c in report.checks
    )


FAIL_FAST_SKIP = "not run: fail-fast stopped at the first failing check"


def _run_all(report: Report, selected, target, cfg: Config, progress: Progress) -> None:
    for check in selected:
        skip = check.skip_when(target, cfg) if check.skip_when is not None else None
        if cfg.fail_fast and any(c.status == FAILED for c in report.checks):
            skip = FAIL_FAST_SKIP
        if skip is not None:
            _emit(report, CheckResult(check.name, SKIPPED, check.description, skip), progress)
            continue
        _emit(report, run_check(check, target, cfg), progress)
        if report.checks[-1].status == ADVICE_STATUS or (cfg.strict and check.advisory and report.checks[-1].failed):
            # the advice text is fixed per check: given only when its cause is what failed, not when the check
            # failed for another reason (wrong values, an error), which the value checks and diagnosis report
            if _advice_applies(check, target, cfg):
                report.advice.append(check.advice or report.checks[-1].message)


def _advice_applies(check, target, cfg: Config) -> bool:
    if check.cause is None:
        return True
    try:
        return bool(guarded(lambda: check.cause(target, cfg)))
    except Exception:  # whatever the target raises: the advice's cause is not what was seen
        return False


def verify_loss(
    target: LossTarget, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None
) -> Report:
    """Every loss-level check that applies to the claimed variant, on a normalised target: the `call` probe,
    then the checks, then a diagnosis if a value check failed."""
    record = cfg.record
    report = Report(target.name, "loss", cfg.variant, settings=settings_for(cfg, "loss"))
    selected = select(loss_checks(cfg.variant), only, "loss", cfg.variant)
    coefficients = probe_coefficients(cfg)
    keywords = ", ".join(f"{c}=..." for c in record.coefficients) + (", lengths" if record.needs_lengths else "")
    call = CheckResult("call", PASSED, f"accepts (pc, pr, rc, rr, {keywords}) and returns losses (B,) or a scalar")
    try:
        reduction = guarded(lambda: target.detect_reduction(coefficients))
    except Exception as err:
        lengths = ["nc, nr = torch.tensor([2, 5, 1]), torch.tensor([3, 1, 4])"] if target.lengths else []
        lines = [target.import_src, *_probe_lines(), *lengths, f"print({target.call_src(coefficients)})"]
        return _basic_call_failed(report, call, err, selected, lines, progress)
    _reduction_verdict(report, call, reduction, cfg.reduction)
    if target.reward_access and "rewards" in record.properties:
        report.detected["rewards"] = "returned: out{} and out{}".format(*target.reward_access)
    if target.mapping_note:
        report.notes.append(target.mapping_note)
    _emit(report, call, progress)
    if record.average:
        report.notes.append(
            f"at the loss level {LOSS_FAMILY[record.key].name} and {record.name} are the same function; they differ "
            "in the log-probs fed"
        )
    _run_all(report, selected, target, cfg, progress)
    if _worth_diagnosing(report, selected) and not report.diagnosis:
        report.diagnosis += diagnosis.diagnose_loss(target, cfg, coefficients)
    return report


def _reduction_verdict(report: Report, call: CheckResult, reduction: str, declared: str) -> None:
    """Record the detected reduction; a batch sum (undeclared) or a reduction other than the declared one fails."""
    report.detected["reduction"] = {
        "per-example": "per-example losses (B,)",
        "mean": "mean over the batch (scalar)",
        "sum": "sum over the batch (scalar)",
        "unknown": "a scalar that is neither the mean nor the sum of the expected losses",
        "mean-expanded": "the batch mean expanded to every row (B,), as TRL's sft loss returns it "
        "(batch_loss.expand(batch_size)): checked as the batch mean",
    }[reduction]
    as_declared = {"per-example": "none", "mean-expanded": "mean"}.get(reduction, reduction)
    if declared not in ("auto", as_declared) and reduction != "unknown":
        call.status = FAILED
        call.message = f"declared reduction {declared!r}, but the target returns {report.detected['reduction']}"
    elif reduction == "sum" and declared != "sum":
        call.status = FAILED
        call.message = diagnosis.batch_sum_diagnosis()
        report.diagnosis.append(diagnosis.batch_sum_diagnosis())


def verify_logps(
    target: LogpsTarget, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None
) -> Report:
    """All log-prob-level checks on a target fn(logits, labels) -> (B,)."""
    report = Report(target.name, "logps", cfg.variant, settings=settings_for(cfg, "logps"))
    selected = select(level_checks("logps"), only, "logps")
    call = CheckResult("call", PASSED, "accepts (logits (B, T, V), labels (B, T)) and returns (B,)")
    logits = torch.zeros(2, 4, 3, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 0, 1]])

    def basic():
        out = target(logits, labels)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AssertionError(f"returned {shape} for a batch of 2; expected a tensor of shape (2,)")

    try:
        guarded(basic)
    except Exception as err:
        return _basic_call_failed(
            report,
            call,
            err,
            selected,
            [
                target.import_src,
                "logits = torch.zeros(2, 4, 3, dtype=torch.float64)",
                "labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 0, 1]])",
                f"print({target.call_src()})  # expected log(1/3) * [2, 1]",
            ],
            progress,
        )
    _emit(report, call, progress)
    _run_all(report, selected, target, cfg, progress)
    if _worth_diagnosing(report, selected):
        report.diagnosis += diagnosis.diagnose_logps(target, cfg.average)
    return report


def verify_packed(target, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None) -> Report:
    """All packed-level checks on a target fn(logits (1, N, V), labels (1, N), cu_seqlens (S+1,)) -> (S,)."""
    from dpo_ref.oracle import packed

    report = Report(target.name, "packed", cfg.variant, settings=settings_for(cfg, "packed"))
    selected = select(level_checks("packed"), only, "packed")
    call = CheckResult("call", PASSED, "accepts (logits (1, N, V), labels (1, N), cu_seqlens (S+1,)) and returns (S,)")
    logits = torch.zeros(1, 5, 3, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, -100, 0]])
    cu_seqlens = torch.tensor([0, 3, 5], dtype=torch.int32)

    def basic():
        out = target(logits, labels, cu_seqlens)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AssertionError(f"returned {shape} for 2 segments; expected a tensor of shape (2,)")

    try:
        guarded(basic)
    except Exception as err:
        lines = [
            target.import_src,
            "logits = torch.zeros(1, 5, 3, dtype=torch.float64)",
            "labels = torch.tensor([[-100, 1, 2, -100, 0]])",
            "cu_seqlens = torch.tensor([0, 3, 5], dtype=torch.int32)  # segments [0, 3) and [3, 5)",
            f"print({target.call_src()})  # expected log(1/3) * [2, 1]",
        ]
        return _basic_call_failed(report, call, err, selected, lines, progress)
    _emit(report, call, progress)
    _run_all(report, selected, target, cfg, progress)
    if _worth_diagnosing(report, selected):
        report.diagnosis += packed.diagnose_packed(target, cfg.average)
    return report


def verify_pipeline(target, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None) -> Report:
    """All pipeline-level checks on fn(model, tokenizer, examples) -> (chosen_logps, rejected_logps): the call on
    a probe batch, the convention detected there (or pinned), every check, then a diagnosis."""
    from dpo_ref.oracle import pipeline, pipeline_diagnosis
    from dpo_ref.oracle.pipeline_worlds import WORLDS

    report = Report(target.name, "pipeline", cfg.variant, settings=settings_for(cfg, "pipeline"))
    selected = select(level_checks("pipeline"), only, "pipeline")
    call = CheckResult(
        "call", PASSED, "accepts (model, tokenizer, examples) and returns (chosen_logps, rejected_logps)"
    )
    world = WORLDS["llama"]
    try:
        guarded(lambda: target(world.model(), world.tokenizer(), pipeline.PROBE))
    except Exception as err:
        lines = [
            target.import_src,
            "from dpo_ref.oracle.pipeline_worlds import WORLDS",
            "world = WORLDS['llama']",
            f"examples = {pipeline.PROBE!r}",
            f"print({target.call_src('world.model(), world.tokenizer(), examples')})",
        ]
        return _basic_call_failed(report, call, err, selected, lines, progress)
    target.conventions = guarded(lambda: pipeline.detect(target, cfg))
    report.detected["convention"] = pipeline.describe_detection(target.conventions)
    _emit(report, call, progress)
    _run_all(report, selected, target, cfg, progress)
    failures = {c.name: c.message for c in report.checks if c.failed}
    if failures:
        passed = {c.name for c in report.checks if c.status == PASSED}
        report.diagnosis += pipeline_diagnosis.diagnose(target, cfg, failures, passed)
    return report
