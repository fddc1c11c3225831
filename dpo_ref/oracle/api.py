"""`verify(fn, level=..., variant=...)`: run every conformance check on a DPO/IPO implementation.

    import dpo_ref
    report = dpo_ref.verify(my_dpo_loss, level="loss", variant="dpo")
    print(report.to_text())          # one line per check, then each failure with its reproduction
    assert report.passed

Loss level: `fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
reference_rejected_logps, beta=...)` returning per-example losses `(B,)`, their mean or sum, or a
tuple whose first item is one of those (the reduction is detected and reported). Log-prob level:
`fn(logits (B, T, V), labels (B, T)) -> (B,)`, labels aligned with the input ids, -100 not scored,
summed log-probs (or averaged with `average=True`, the default for `ipo-mean`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable

import torch

from dpo_ref.errors import InputError
from dpo_ref.oracle.checks import LOGPS_CHECKS, LOSS_CHECKS, VARIANTS, Config, describe_error, run_check
from dpo_ref.oracle.report import FAILED, PASSED, SKIPPED, XFAILED, XPASSED, CheckResult, Report
from dpo_ref.oracle.targets import ADAPTERS, LogpsTarget, LossTarget, import_source, load_target
from dpo_ref.properties import TOLERANCE_K

LEVELS = ("loss", "logps")
DEFAULT_MAX_EXAMPLES = 100
HEADER = "import torch\nimport dpo_ref"


def check_names(level: str) -> list[str]:
    """The names of the checks run at `level` (what an xfail file may list)."""
    return ["call"] + [c.name for c in (LOSS_CHECKS if level == "loss" else LOGPS_CHECKS)]


def make_config(
    variant: str = "dpo",
    beta: float | None = None,
    label_smoothing: float | None = None,
    average: bool | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> Config:
    """Validated settings; `InputError` naming the bad argument."""
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0):
        raise InputError(f"beta must be a positive number, got {beta!r}")
    if beta is not None and not math.isfinite(beta):
        raise InputError(f"beta must be finite, got {beta!r}")
    if label_smoothing is not None:
        if variant != "cdpo":
            raise InputError(f"label_smoothing applies to variant cdpo only (got variant {variant!r})")
        if not (0.0 < float(label_smoothing) < 0.5):
            raise InputError(f"label_smoothing must be in (0, 0.5), got {label_smoothing!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InputError(f"max_examples must be a positive integer, got {max_examples!r}")
    return Config(
        variant=variant,
        beta=None if beta is None else float(beta),
        label_smoothing=None if label_smoothing is None else float(label_smoothing),
        average=(variant == "ipo-mean") if average is None else bool(average),
        max_examples=max_examples,
    )


def verify(
    fn: Callable | str,
    level: str | None = None,
    variant: str = "dpo",
    *,
    beta: float | None = None,
    label_smoothing: float | None = None,
    average: bool | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    checks: Iterable[str] | None = None,
    xfail: Iterable[str] = (),
    name: str | None = None,
) -> Report:
    """Run the conformance checks on `fn` and return a `Report` (see the module docstring).

    Args:
        fn: the callable, or a target string (`file.py:name`, `pkg.mod:name`, `trl`, `torchtune`).
        level: `loss` (the default for a callable) or `logps`; adapters also `library`, and by default
            run every level they support.
        variant: `dpo`, `cdpo`, `ipo` (summed log-probs) or `ipo-mean` (length-averaged log-probs).
        beta: fixed coefficient (tau under IPO); by default drawn from 1e-3 to 1e3.
        label_smoothing: fixed cDPO eps; by default drawn from (0, 0.49].
        average: log-prob level, the averaged convention (default: True for `ipo-mean`).
        max_examples: Hypothesis examples per check.
        checks: run only these checks (names as in the report).
        xfail: checks expected to fail: their failure is reported as xfailed.
    Raises `InputError` for a bad argument or a target that cannot be imported.
    """
    start = time.perf_counter()
    cfg = make_config(variant, beta, label_smoothing, average, max_examples)
    with _one_thread():
        report = _verify(fn, level, cfg, checks, name)
    apply_xfail(report, xfail)
    report.seconds = time.perf_counter() - start
    return report


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


def _verify(fn, level: str, cfg: Config, checks, name: str | None) -> Report:
    spec_str = fn if isinstance(fn, str) else None
    if isinstance(fn, str):
        fn = load_target(fn)
    if isinstance(fn, str) and fn in ADAPTERS:
        from dpo_ref.oracle import adapters

        report = adapters.run(fn, level, cfg, only=checks)
    else:
        level = level or "loss"
        if level not in LEVELS:
            raise InputError(f"level must be one of {', '.join(LEVELS)} for a callable, got {level!r}")
        if not callable(fn):
            raise InputError(f"the target must be callable, got {type(fn).__name__}")
        target_name = name or spec_str or getattr(fn, "__qualname__", None) or repr(fn)
        import_src = import_source(fn, spec_str)
        if level == "loss":
            report = verify_loss(LossTarget.from_callable(fn, _probe_spec(cfg), target_name, import_src), cfg, checks)
        else:
            report = verify_logps(LogpsTarget(fn, target_name, import_src), cfg, checks)
    return report


def _probe_spec(cfg: Config):
    coef = cfg.beta if cfg.beta is not None else 0.5
    eps = (cfg.label_smoothing or 0.1) if cfg.loss_variant == "cdpo" else 0.0
    return cfg.spec(coef, eps)


def _settings(cfg: Config, level: str) -> dict:
    coef = "tau" if cfg.loss_variant == "ipo" else "beta"
    out = {"max_examples per check": cfg.max_examples}
    if level == "loss":
        out[coef] = cfg.beta if cfg.beta is not None else "drawn from 1e-3 to 1e3"
        if cfg.loss_variant == "cdpo":
            out["label_smoothing"] = cfg.label_smoothing if cfg.label_smoothing is not None else "drawn from (0, 0.49]"
        out["tolerance"] = f"|L - L_ref| <= {TOLERANCE_K:g} eps_dtype (|dL/dh| sum|inputs| + |L_ref| + 1)"
    else:
        out["convention"] = "mean over scored tokens" if cfg.average else "sum over scored tokens"
        out["tolerance"] = f"{TOLERANCE_K:g} eps_dtype (4 n_tokens (max|logit| + 1) + 1)"
    return out


def _select(all_checks, only: Iterable[str] | None, level: str):
    if only is None:
        return list(all_checks)
    only = set(only)
    unknown = only - set(check_names(level))
    if unknown:
        raise InputError(
            f"unknown check(s) {', '.join(sorted(unknown))}; {level} checks: {', '.join(check_names(level))}"
        )
    return [c for c in all_checks if c.name in only]


def verify_loss(target: LossTarget, cfg: Config, only: Iterable[str] | None = None) -> Report:
    """All loss-level checks on a normalised target."""
    report = Report(target.name, "loss", cfg.variant, settings=_settings(cfg, "loss"))
    selected = _select(LOSS_CHECKS, only, "loss")
    spec = _probe_spec(cfg)
    call = CheckResult("call", PASSED, "accepts (pc, pr, rc, rr, beta=...) and returns losses (B,) or a scalar")
    try:
        reduction = target.detect_reduction(spec)
        report.detected["reduction"] = {
            "per-example": "per-example losses (B,)",
            "mean": "mean over the batch (scalar)",
            "sum": "sum over the batch (scalar)",
            "unknown": "a scalar that is neither the mean nor the sum of the expected losses",
        }[reduction]
    except Exception as err:
        return _basic_call_failed(
            report,
            call,
            err,
            selected,
            [
                target.import_src,
                "pc, pr = torch.tensor([-3.0, -10.0, -1.5]), torch.tensor([-5.0, -2.0, -7.0])",
                "rc, rr = torch.tensor([-4.0, -6.0, -2.0]), torch.tensor([-4.5, -3.0, -6.5])",
                f"print({target.call_src(spec)})",
            ],
        )
    report.checks.append(call)
    if cfg.variant == "ipo-mean":
        report.notes.append(
            "at the loss level ipo and ipo-mean are the same function; they differ in the log-probs fed"
        )
    for check in selected:
        if check.name == "reduction" and target.reduction == "per-example":
            report.checks.append(CheckResult(check.name, SKIPPED, check.description, "returns per-example losses"))
            continue
        report.checks.append(run_check(check, target, cfg, HEADER))
    return report


def _basic_call_failed(report: Report, call: CheckResult, err: BaseException, selected, lines: list[str]) -> Report:
    """The target fails on a plain batch: report that with a reproduction and skip every other check."""
    call.status, call.message = FAILED, describe_error(err)
    call.reproduction = "\n".join([HEADER, *lines])
    report.checks.append(call)
    report.checks += [
        CheckResult(c.name, SKIPPED, c.description, "not run: the target fails the basic call") for c in selected
    ]
    return report


def verify_logps(target: LogpsTarget, cfg: Config, only: Iterable[str] | None = None) -> Report:
    """All log-prob-level checks on a target fn(logits, labels) -> (B,)."""
    report = Report(target.name, "logps", cfg.variant, settings=_settings(cfg, "logps"))
    selected = _select(LOGPS_CHECKS, only, "logps")
    call = CheckResult("call", PASSED, "accepts (logits (B, T, V), labels (B, T)) and returns (B,)")
    logits = torch.zeros(2, 4, 3, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 0, 1]])
    try:
        out = target(logits, labels)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise AssertionError(f"returned {shape} for a batch of 2; expected a tensor of shape (2,)")
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
        )
    report.checks.append(call)
    for check in selected:
        report.checks.append(run_check(check, target, cfg, HEADER))
    return report


def apply_xfail(report: Report, xfail: Iterable[str]) -> None:
    """Mark the checks named in `xfail` as expected failures (xfailed if they fail, xpassed if not)."""
    names = set(xfail)
    if not names:
        return
    known = {c.name for c in report.checks}
    unknown = names - known
    if unknown:
        raise InputError(
            f"xfail names unknown check(s) {', '.join(sorted(unknown))}; checks: {', '.join(sorted(known))}"
        )
    for c in report.checks:
        if c.name in names:
            c.status = {FAILED: XFAILED, PASSED: XPASSED}.get(c.status, c.status)


def read_xfail_file(path: str) -> list[str]:
    """Check names, one per line (`#` starts a comment; a TOML-style `name = "reason"` line also works)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise InputError(f"xfail file {path!r} cannot be read: {err.strerror}") from None
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("["):
            continue
        name = line.split("=", 1)[0].strip().strip('"').strip("'")
        if name:
            names.append(name)
    return names
