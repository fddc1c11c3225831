"""Verify one normalised target at one level: the `call` check, then every catalogue check, then a diagnosis.

`verify_loss` and `verify_logps` are what `dpo_ref.verify` and the library adapters (`dpo_ref.oracle.adapters`)
call; they depend on the catalogue, the runner and the diagnoses, never on the API module (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

import dpo_ref.oracle.diagnosis as diagnosis
from dpo_ref.checks import properties as P
from dpo_ref.checks.properties import TOLERANCE_K
from dpo_ref.errors import InputError
from dpo_ref.oracle.catalogue import ADVICE, LOGPS_CHECKS, LOSS_CHECKS, Config
from dpo_ref.oracle.report import ADVICE as ADVICE_STATUS
from dpo_ref.oracle.report import FAILED, PASSED, SKIPPED, CheckResult, Report
from dpo_ref.oracle.runner import describe_error, guarded, run_check
from dpo_ref.oracle.snippets import HEADER
from dpo_ref.oracle.targets import FamilyTarget, LogpsTarget, LossTarget
from dpo_ref.variants import FAMILY_VARIANTS

Progress = Callable[[CheckResult], None] | None

# Checks whose failure means the values (not only robustness) differ: a diagnosis is worth trying.
VALUE_CHECKS = {"values", "values_float32", "large_batch", "gradients", "init", "swap", "optimum", "reduction"}
LOGPS_VALUE_CHECKS = {"logps_values", "logps_values_float32", "logps_last_position", "logps_unscored_ignored"}


def loss_checks(variant: str = "dpo") -> tuple:
    """The loss-level catalogue for `variant`: the classic checks, or the family's."""
    if variant in FAMILY_VARIANTS:
        from dpo_ref.oracle.family_checks import FAMILY_CHECKS

        return tuple(c for c in FAMILY_CHECKS if variant in c.variants)
    return LOSS_CHECKS


def check_names(level: str, variant: str = "dpo") -> list[str]:
    """The names of the checks run at `level` for `variant` (what an xfail file may list)."""
    return ["call"] + [c.name for c in (loss_checks(variant) if level == "loss" else LOGPS_CHECKS)]


def probe_spec(cfg: Config):
    coef = cfg.beta if cfg.beta is not None else 0.5
    eps = (cfg.label_smoothing or 0.1) if cfg.loss_variant == "cdpo" else 0.0
    return cfg.spec(coef, eps)


def settings_for(cfg: Config, level: str) -> dict:
    coef = "tau" if cfg.loss_variant == "ipo" else "beta"
    unit = "eps_dtype (float64-exact demanded: --strict)" if cfg.strict else "max(eps_dtype, eps_float32)"
    out = {"max_examples per check": cfg.max_examples}
    if level == "loss":
        out[coef] = cfg.beta if cfg.beta is not None else "drawn from 1e-3 to 1e3"
        if cfg.loss_variant == "cdpo":
            out["label_smoothing"] = cfg.label_smoothing if cfg.label_smoothing is not None else "drawn from (0, 0.49]"
        out["reduction"] = {"auto": "per-example or batch mean"}.get(cfg.reduction, f"declared: {cfg.reduction}")
        out["tolerance"] = (
            f"|L - L_ref| <= {TOLERANCE_K:g} u (|dL/dh| sum|inputs| + |L_ref| + 1 + beta sum|log-ratios|), u = {unit}"
        )
    else:
        out["convention"] = "mean over scored tokens" if cfg.average else "sum over scored tokens"
        out["tolerance"] = f"{TOLERANCE_K:g} u (4 n_tokens (max|logit| + 1) + 1), u = {unit}"
    return out


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


def _worth_diagnosing(report: Report, value_checks: set[str]) -> bool:
    """A value check failed, or fail-fast stopped before the value checks could say."""
    return any(c.failed and c.name in value_checks for c in report.checks) or any(
        c.message == FAIL_FAST_SKIP and c.name in value_checks for c in report.checks
    )


FAIL_FAST_SKIP = "not run: fail-fast stopped at the first failing check"


def _run_all(report: Report, selected, target, cfg: Config, progress: Progress, skip: dict[str, str]) -> None:
    for check in selected:
        if cfg.fail_fast and any(c.status == FAILED for c in report.checks):
            skip = {**skip, check.name: FAIL_FAST_SKIP}
        if check.name in skip:
            _emit(report, CheckResult(check.name, SKIPPED, check.description, skip[check.name]), progress)
            continue
        _emit(report, run_check(check, target, cfg), progress)
        if report.checks[-1].status == ADVICE_STATUS or (cfg.strict and check.advisory and report.checks[-1].failed):
            # the advice text is fixed per check: given only when its cause is what failed, not when the check
            # failed for another reason (wrong values, an error), which the value checks and diagnosis report
            if _advice_applies(check.name, target, cfg):
                report.advice.append(ADVICE.get(check.name, report.checks[-1].message))


def _advice_applies(name: str, target, cfg: Config) -> bool:
    cause = ADVICE_CAUSE.get(name)
    if cause is None:
        return True
    try:
        return bool(guarded(lambda: cause(target, cfg)))
    except Exception:  # whatever the target raises: the advice's cause is not what was seen
        return False


def _multiplying_mask(target, cfg: Config) -> bool:
    """The advice on -inf logits is the cause when -inf at the unscored positions gives a NaN or an infinity
    while the same inputs with the finite extreme fill give the right values: only the fill's infiniteness
    differs, so 0 * -inf (a multiplying mask) is what went wrong. A function whose values are wrong anyway
    (a mean for a sum, no shift, a half-precision log-softmax) is not told this: its value checks fail."""
    batch = diagnosis.diagnostic_token_batch()
    logits, labels = P.unscored_filled(batch, -float("inf"))
    with torch.no_grad():
        out = torch.as_tensor(target(logits, labels))
    if bool(torch.isfinite(out).all()):
        return False
    try:
        with torch.no_grad():
            P.check_logps_ignores_unscored(target, batch, cfg.average, P.UNSCORED_FILL)
    except P.PropertyViolation:
        return False
    return True


def _rewards_carry_graph(target, cfg: Config) -> bool:
    """The advice to detach is the cause when the rewards returned on the probe batch (leaves requiring grad)
    are tensors carrying the graph, not when reading them raised."""
    from dpo_ref.oracle.targets import PROBE_LOGPS

    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in PROBE_LOGPS]
    rewards = target.rewards(probe_spec(cfg))(*leaves)
    return any(isinstance(r, torch.Tensor) and r.requires_grad for r in rewards)


# For each advisory check, whether its fixed advice is the cause of the failure seen.
ADVICE_CAUSE: dict[str, Callable] = {
    "logps_neg_inf_unscored": _multiplying_mask,
    "rewards_detached": _rewards_carry_graph,
}


def verify_loss(
    target: LossTarget, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None
) -> Report:
    """All loss-level checks on a normalised target."""
    report = Report(target.name, "loss", cfg.variant, settings=settings_for(cfg, "loss"))
    selected = select(LOSS_CHECKS, only, "loss")
    spec = probe_spec(cfg)
    call = CheckResult("call", PASSED, "accepts (pc, pr, rc, rr, beta=...) and returns losses (B,) or a scalar")
    try:
        reduction = guarded(lambda: target.detect_reduction(spec))
    except Exception as err:
        return _basic_call_failed(
            report,
            call,
            err,
            selected,
            [
                target.import_src,
                *_probe_lines(),
                f"print({target.call_src(spec)})",
            ],
            progress,
        )
    _reduction_verdict(report, call, reduction, cfg.reduction)
    if target.reward_access:
        report.detected["rewards"] = "returned: out{} and out{}".format(*target.reward_access)
    if target.mapping_note:
        report.notes.append(target.mapping_note)
    _emit(report, call, progress)
    if cfg.variant == "ipo-mean":
        report.notes.append(
            "at the loss level ipo and ipo-mean are the same function; they differ in the log-probs fed"
        )
    skip = {}
    if target.reduction == "per-example":
        skip["reduction"] = "returns per-example losses"
    if target.reward_access is None:
        skip["rewards"] = skip["rewards_detached"] = "returns no implicit rewards"
    _run_all(report, selected, target, cfg, progress, skip)
    if _worth_diagnosing(report, VALUE_CHECKS) and not report.diagnosis:
        report.diagnosis += diagnosis.diagnose_loss(target.per_example, cfg.loss_variant, cfg.beta, cfg.label_smoothing)
    return report


def family_probe(cfg: Config) -> dict:
    """Coefficients for the `call` probe and the diagnosis: the fixed ones, else the variant's defaults."""
    import inspect

    from dpo_ref.family import LOSS_FAMILY

    variant = LOSS_FAMILY[cfg.family]
    defaults = {n: p.default for n, p in inspect.signature(variant.fn).parameters.items() if n in variant.coefficients}
    return {**defaults, **dict(cfg.coefficients)}


def verify_family_loss(
    target: FamilyTarget, cfg: Config, only: Iterable[str] | None = None, progress: Progress = None
) -> Report:
    """All loss-level checks of a family variant (`dpo_ref.oracle.family_checks`) on a normalised target."""
    from dpo_ref.oracle.family_checks import MEAN_ONLY_SKIPS

    report = Report(target.name, "loss", cfg.variant, settings=family_settings(cfg))
    selected = select(loss_checks(cfg.variant), only, "loss", cfg.variant)
    coefficients = family_probe(cfg)
    call = CheckResult("call", PASSED, "accepts (pc, pr, rc, rr, <coefficients>[, lengths]) and returns losses")
    try:
        reduction = guarded(lambda: target.detect_reduction(coefficients))
    except Exception as err:
        return _basic_call_failed(
            report,
            call,
            err,
            selected,
            [
                target.import_src,
                *_probe_lines(),
                "nc, nr = torch.tensor([2, 5, 1]), torch.tensor([3, 1, 4])",
                f"print({target.call_src(coefficients)})",
            ],
            progress,
        )
    _reduction_verdict(report, call, reduction, cfg.reduction)
    if target.mapping_note:
        report.notes.append(target.mapping_note)
    _emit(report, call, progress)
    skip = dict(MEAN_ONLY_SKIPS) if reduction != "per-example" and not _per_example(cfg) else {}
    _run_all(report, selected, target, cfg, progress, skip)
    if _worth_diagnosing(report, FAMILY_VALUE_CHECKS) and not report.diagnosis:
        report.diagnosis += diagnosis.diagnose_family(target, cfg.family, coefficients)
    return report


FAMILY_VALUE_CHECKS = {"values", "values_float32", "gradients", "hinge_margin", "robust_unbiased", "optimum"}


def _per_example(cfg: Config) -> bool:
    from dpo_ref.family import LOSS_FAMILY

    return LOSS_FAMILY[cfg.family].per_example


def family_settings(cfg: Config) -> dict:
    from dpo_ref.family import LOSS_FAMILY
    from dpo_ref.oracle.family_checks import FAMILY_BATCH

    fixed = dict(cfg.coefficients)
    variant = LOSS_FAMILY[cfg.family]
    out = {"max_examples per check": cfg.max_examples, "formula": f"dpo_ref.family {cfg.family} ({variant.paper})"}
    for c in variant.coefficients:
        out[c] = fixed.get(c, "drawn from its valid range")
    if variant.needs_lengths:
        out["lengths"] = "chosen_lengths=, rejected_lengths= (int64 scored-token counts, drawn from 1 to 64)"
    out["batch"] = f"up to {FAMILY_BATCH} pairs"
    out["reduction"] = {"auto": "per-example or batch mean"}.get(cfg.reduction, f"declared: {cfg.reduction}")
    unit = "eps_dtype (--strict)" if cfg.strict else "max(eps_dtype, eps_float32)"
    out["tolerance"] = f"{TOLERANCE_K:g} u (G (S + C_h) + |L| + C_L + 1) (dpo_ref.checks.family_properties), u = {unit}"
    return out


def _reduction_verdict(report: Report, call: CheckResult, reduction: str, declared: str) -> None:
    """Record the detected reduction; a batch sum (undeclared) or a reduction other than the declared one fails."""
    report.detected["reduction"] = {
        "per-example": "per-example losses (B,)",
        "mean": "mean over the batch (scalar)",
        "sum": "sum over the batch (scalar)",
        "unknown": "a scalar that is neither the mean nor the sum of the expected losses",
    }[reduction]
    if declared not in ("auto", {"per-example": "none"}.get(reduction, reduction)) and reduction != "unknown":
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
    selected = select(LOGPS_CHECKS, only, "logps")
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
    _run_all(report, selected, target, cfg, progress, {})
    if _worth_diagnosing(report, LOGPS_VALUE_CHECKS):
        report.diagnosis += diagnosis.diagnose_logps(target, cfg.average)
    return report
