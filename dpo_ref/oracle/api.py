"""`verify(fn, level=..., variant=...)`: run every conformance check on a DPO/IPO implementation.

    import dpo_ref
    report = dpo_ref.verify(my_dpo_loss, level="loss", variant="dpo")
    print(report.to_text())          # one line per check, then each failure with its reproduction
    assert report.passed

Loss level: `fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps, beta=...)` returning per-example losses `(B,)` or their mean (a sum only if
declared with `reduction="sum"`), or a tuple / named tuple / dict holding them, with the implicit rewards
beside them if it returns those (they are checked too). Parameters named after the four log-probs are
passed by name whatever their order. Log-prob level: `fn(logits (B, T, V), labels (B, T)) -> (B,)`,
labels aligned with the input ids, -100 not scored, summed log-probs (or averaged with `average=True`,
the default for `ipo-mean`); `dpo_ref.oracle.adapters` wraps functions of other shapes.

The verdict asks whether the target computes the stated formula and convention: float32 arithmetic and
exact rewritings pass, and the precision actually reached is reported as a grade beside it;
`strict=True` makes float64 exactness (and the advisory robustness checks) part of the verdict.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterable

import torch

from dpo_ref import variants as V
from dpo_ref.errors import InputError
from dpo_ref.losses import check_positive_scalar, check_probability, real_number
from dpo_ref.oracle import options
from dpo_ref.oracle.catalogue import Config
from dpo_ref.oracle.levels import (
    Progress,
    check_names,
    verify_logps,
    verify_loss,
    verify_packed,
    verify_pipeline,
)
from dpo_ref.oracle.options import REDUCTIONS, read_xfail_file
from dpo_ref.oracle.report import FAILED, PASSED, XFAILED, XPASSED, CheckResult, Report
from dpo_ref.oracle.targets import (
    ADAPTERS,
    LogpsTarget,
    LossTarget,
    TargetImportFailed,
    check_call_signature,
    check_logps_signature,
    import_source,
    load_target,
)
from dpo_ref.variants import ALIASES, FAMILY_MAX_EXAMPLES, FAMILY_VARIANTS, VARIANTS

LEVELS = ("loss", "logps", "packed", "pipeline")
DEFAULT_MAX_EXAMPLES = 100

__all__ = ["DEFAULT_MAX_EXAMPLES", "check_names", "make_config", "read_xfail_file", "verify"]


def make_config(
    variant: str = "dpo",
    beta: float | None = None,
    label_smoothing: float | None = None,
    average: bool | None = None,
    max_examples: int | None = None,
    strict: bool = False,
    reduction: str = "auto",
    coefficients: dict | None = None,
    fail_fast: bool = False,
    convention: str | None = None,
    level: str | None = None,
) -> Config:
    """Validated settings; `InputError` naming the bad argument. A registry alias names its variant."""
    if not isinstance(variant, str) or (variant not in VARIANTS and variant not in ALIASES):
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    variant = V.get(variant).name
    if max_examples is None and level == "pipeline":
        from dpo_ref.oracle.pipeline import MAX_EXAMPLES as max_examples
    if max_examples is None:
        max_examples = DEFAULT_MAX_EXAMPLES if variant not in FAMILY_VARIANTS else FAMILY_MAX_EXAMPLES
    if convention is not None:
        if level != "pipeline":
            raise InputError(f"convention applies to the pipeline level only (got level {level!r})")
        from dpo_ref.oracle.pipeline import Convention

        convention = str(Convention.parse(convention))
    if beta is not None:
        beta = check_positive_scalar(beta, "beta")
    if variant in FAMILY_VARIANTS:
        fixed = family_coefficients(variant, beta, label_smoothing, coefficients)
        beta = label_smoothing = None
    elif coefficients:
        raise InputError(f"coefficients apply to the family variants, not {variant!r}; use beta / label_smoothing")
    else:
        fixed = {}
    if label_smoothing is not None:
        if "label_smoothing" not in V.get(variant).coefficients:
            smoothed = ", ".join(v for v in V.CLASSIC_VARIANTS if "label_smoothing" in V.get(v).coefficients)
            raise InputError(f"label_smoothing applies to variant {smoothed} only (got variant {variant!r})")
        label_smoothing = check_probability(label_smoothing, "label_smoothing", low_inclusive=False)
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InputError(f"max_examples must be a positive integer, got {max_examples!r}")
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return Config(
        variant=variant,
        beta=None if beta is None else float(beta),
        label_smoothing=None if label_smoothing is None else float(label_smoothing),
        average=V.get(variant).average if average is None else bool(average),
        max_examples=max_examples,
        strict=bool(strict),
        reduction=reduction,
        coefficients=tuple(sorted(fixed.items())),
        fail_fast=bool(fail_fast),
        convention=convention,
    )


def family_coefficients(variant: str, beta, label_smoothing, coefficients: dict | None) -> dict:
    """The fixed coefficients of family variant `variant` (beta standing for tau where it has no beta), each
    validated by the family's own function (`InputError` naming it); the others are drawn."""
    from dpo_ref.family import LOSS_FAMILY

    v = LOSS_FAMILY[FAMILY_VARIANTS[variant]]
    fixed = dict(coefficients or {})
    if not all(isinstance(k, str) for k in fixed):
        raise InputError(f"coefficients must be a dict of names to numbers, got {coefficients!r}")
    if beta is not None:
        fixed["beta" if "beta" in v.coefficients or "tau" not in v.coefficients else "tau"] = beta
    if label_smoothing is not None:
        fixed["label_smoothing"] = label_smoothing
    unknown = set(fixed) - set(v.coefficients)
    if unknown:
        takes = ", ".join(v.coefficients) or "none"
        raise InputError(f"variant {variant} takes coefficients {takes}; got {', '.join(sorted(unknown))}")
    fixed = {k: real_number(value, k, "a number") for k, value in fixed.items()}
    x = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    n = torch.tensor([1, 2])
    lengths = {"chosen_lengths": n, "rejected_lengths": n} if v.needs_lengths else {}
    v.fn(x, x, x, x, **lengths, **fixed)  # InputError naming a coefficient out of its range
    return fixed


def _names(value: Iterable[str] | str | None, what: str) -> list[str] | None:
    """A list of check names; a single string is one name (not its characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    names = list(value)
    if not all(isinstance(n, str) for n in names):
        raise InputError(f"{what} must be check names (strings), got {names!r}")
    return names


def verify(
    fn: Callable | str,
    level: str | None = None,
    variant: str = "dpo",
    *,
    name: str | None = None,
    progress: Progress = None,
    **settings,
) -> Report:
    """Run the conformance checks on `fn` and return a `Report` (see the module docstring).

    Args:
        fn: the callable, or a target string (`file.py:name`, `pkg.mod:name`, `trl`, `torchtune`).
        level: `loss` (the default for a callable) or `logps`; adapters also `library`, and by default
            run every level they support.
        variant: a name or alias from the registry (`dpo_ref.variants`, listed in docs/variants.md): the
            classic ones (`dpo_ref.variants.CLASSIC_VARIANTS`) at both levels, the others at the loss level,
            called with their coefficients and, if length-normalised, `chosen_lengths=`, `rejected_lengths=`
            (`dpo_ref.oracle.targets`).
        beta: fixed coefficient (tau under IPO); by default drawn from 1e-3 to 1e3.
        label_smoothing: fixed cDPO eps; by default drawn from (0, 0.49].
        average: log-prob level, the averaged convention (default: the record's `average`, True for `ipo-mean`).
        max_examples: Hypothesis examples per check (default 100; 25 for a family variant).
        checks: run only these checks (names as in the report; one name may be given as a string).
        xfail: checks expected to fail: their failure is reported as xfailed.
        strict: float64 inputs must give float64-exact results, and advisory checks count in the verdict.
        reduction: what the loss returns: `auto` (per-example losses or the batch mean), `none`, `mean`,
            or `sum` (a batch sum fails unless declared: its gradient grows with the batch size).
        coefficients: family variants: fixed coefficients by name (e.g. {"gamma": 0.5}); others are drawn.
        fail_fast: stop at the first failing check (the others are reported as skipped, not run): the verdict
            sooner, with one shrunk reproduction instead of one per failing check. The diagnosis still runs.
        progress: called with each `CheckResult` as soon as the check has run.
    Raises `InputError` for a bad argument, a target that cannot be imported, or a signature that cannot
    be called the way the level needs (with a hint).
    """
    start = time.perf_counter()
    options.check_keywords(settings)  # the keywords are generated from dpo_ref.oracle.options.OPTIONS
    settings = {**options.api_keywords(), **settings, "level": level, "variant": variant}
    config_keys = inspect.signature(make_config).parameters
    cfg = make_config(**{k: v for k, v in settings.items() if k in config_keys})
    checks, xfail = _names(settings["checks"], "checks"), _names(settings["xfail"], "xfail") or []
    expected_to_fail = set(xfail)

    def each(result) -> None:  # expected failures are marked before anyone sees the result
        if result.name in expected_to_fail:
            result.status = {FAILED: XFAILED, PASSED: XPASSED}.get(result.status, result.status)
        if progress is not None:
            progress(result)

    with _one_thread():
        report = _verify(fn, level, cfg, checks, name, each)
    apply_xfail(report, xfail)
    report.seconds = time.perf_counter() - start
    return report


verify.__signature__ = options.api_signature(("fn",), {"name": None, "progress": None})


@contextlib.contextmanager
def _one_thread():
    """The checks use tiny tensors: intra-op threads only add overhead (torch 2.13's CPU logsigmoid takes
    ~10 ms per call on a 5-element tensor with 2 threads and ~1 us with 1), so run them on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _verify(fn, level: str, cfg: Config, checks, name: str | None, progress: Progress) -> Report:
    spec_str = fn if isinstance(fn, str) else None
    if isinstance(fn, str):
        try:
            fn = load_target(fn)
        except TargetImportFailed as err:
            report = Report(spec_str, level or "loss", cfg.variant)
            report.checks.append(CheckResult("call", FAILED, "the target can be imported", f"{err}: it cannot pass"))
            return report
    if isinstance(fn, str) and fn in ADAPTERS:
        from dpo_ref.oracle import adapters

        return adapters.run(fn, level, cfg, only=checks)
    level = level or "loss"
    if level not in LEVELS:
        raise InputError(f"level must be one of {', '.join(LEVELS)} for a callable, got {level!r}")
    if not callable(fn):
        raise InputError(f"the target must be callable, got {type(fn).__name__}")
    target_name = name or spec_str or getattr(fn, "__qualname__", None) or repr(fn)
    import_src = import_source(fn, spec_str)
    if level == "loss":
        target = LossTarget.from_callable(fn, cfg.variant, target_name, import_src)
        return verify_loss(target, cfg, checks, progress)
    if level == "packed":
        from dpo_ref.oracle.packed import CALL_ARGS, PACKED_HINT, PackedTarget

        check_call_signature(fn, target_name, CALL_ARGS, PACKED_HINT)
        return verify_packed(PackedTarget(fn, target_name, import_src), cfg, checks, progress)
    if level == "pipeline":
        from dpo_ref.oracle.pipeline import CALL_ARGS, PIPELINE_HINT, PipelineTarget

        check_call_signature(fn, target_name, CALL_ARGS, PIPELINE_HINT)
        return verify_pipeline(PipelineTarget(fn, target_name, import_src), cfg, checks, progress)
    check_logps_signature(fn, target_name)
    return verify_logps(LogpsTarget(fn, target_name, import_src), cfg, checks, progress)


def apply_xfail(report: Report, xfail: Iterable[str]) -> None:
    """Mark the checks named in `xfail` as expected failures (xfailed if they fail, xpassed if not)."""
    names = set(xfail)
    if not names:
        return
    known = {c.name for c in report.checks}
    if report.level in LEVELS:  # a check left out by `checks=` is still a known name, not a typo
        known |= set(check_names(report.level, report.variant))
    unknown = names - known
    if unknown:
        raise InputError(
            f"xfail names unknown check(s) {', '.join(sorted(unknown))}; checks: {', '.join(sorted(known))}"
        )
    for c in report.checks:
        if c.name in names:  # (a status already marked by `verify`'s progress hook stays as it is)
            c.status = {FAILED: XFAILED, PASSED: XPASSED}.get(c.status, c.status)
