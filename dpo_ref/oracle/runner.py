"""Run one catalogue check under Hypothesis and turn its outcome into a `CheckResult`.

`run_check` drives a `Check` with fixed, derandomised settings (the same inputs on every run, so reports
are reproducible); when the property fails, Hypothesis shrinks the input to a minimal one, and that
minimal input becomes the reproduction. Whatever the target raises, `SystemExit` and other
`BaseException`s included, is a failure of that check; only the user's `KeyboardInterrupt` stops the run.
"""

from __future__ import annotations

import contextlib
import math
import warnings

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import HypothesisWarning

from dpo_ref.checks import properties as P
from dpo_ref.oracle.catalogue import Check, Config
from dpo_ref.oracle.report import ADVICE, FAILED, PASSED, SKIPPED, CheckResult
from dpo_ref.oracle.snippets import HEADER, loss_inputs


class TargetRaised(Exception):
    """The target raised a `BaseException` that is not an `Exception` (`SystemExit`, `GeneratorExit`, ...)."""

    def __init__(self, err: BaseException):
        code = f"({err.code!r})" if isinstance(err, SystemExit) else ""
        super().__init__(f"the target raised {type(err).__name__}{code}: a check cannot pass by ending the process")
        self.original = err


def guarded(call):
    """`call()`, with a non-`Exception` `BaseException` from the target re-raised as `TargetRaised`."""
    try:
        return call()
    except KeyboardInterrupt:
        raise
    except Exception:
        raise
    except BaseException as err:  # SystemExit, GeneratorExit, custom BaseException subclasses
        raise TargetRaised(err) from None


def hypothesis_settings(max_examples: int) -> settings:
    """Deterministic settings: the same examples on every run, shrinking on, nothing stored or printed."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )


def describe_error(err: BaseException) -> str:
    if isinstance(err, TargetRaised):  # its message already says what the target raised
        return str(err)
    if isinstance(err, AssertionError) and str(err):
        return str(err).splitlines()[0]
    text = str(err).strip().splitlines()
    return f"the target raised {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


SHRINK_SECONDS = 10.0  # per failing check, a safety net (typical shrinking takes well under 2 s); Hypothesis: 300 s


@contextlib.contextmanager
def _shrink_budget(seconds: float):
    """Cap the time Hypothesis spends shrinking one failure (its documented, monkeypatchable
    `MAX_SHRINKING_SECONDS`). Shrinking normally ends long before the cap, so reproductions are the same
    on every run; if the cap is hit the reproduction is less minimal, never wrong (it is replayed)."""
    from hypothesis.internal.conjecture import engine

    saved = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = saved


CLEAR_DISAGREEMENT = 1e-3  # relative miss above which a reproduction speaks for itself


def _search(
    check: Check, target, cfg: Config, min_disagreement: float
) -> tuple[int, dict, BaseException | None, P.Precision | None]:
    """Run the check under Hypothesis, counting as failures only misses of at least `min_disagreement`.

    Returns (examples tried, the last failing example and its error, the error Hypothesis raised, the
    worst precision measured on the examples that passed).
    """
    count = [0]
    failing: dict = {}
    worst: list[P.Precision | None] = [None]

    @hypothesis_settings(cfg.max_examples)
    @given(ex=check.strategy(cfg))
    def prop(ex):
        count[0] += 1
        try:
            measured = guarded(lambda: check.run(target, cfg, ex))
        except Exception as err:
            if getattr(err, "disagreement", math.inf) < min_disagreement:
                return  # a real but tiny miss: this search looks for a plain one
            failing["ex"], failing["err"] = ex, err  # the last failure is Hypothesis' final, shrunk replay
            raise
        if isinstance(measured, P.Precision):
            worst[0] = measured.worst(worst[0])

    try:
        with _shrink_budget(SHRINK_SECONDS), P.strictness(cfg.strict), warnings.catch_warnings():
            # the large fixed samples make Hypothesis warn that their repr is long: the report never shows it
            warnings.filterwarnings("ignore", message="Generating overly large repr", category=HypothesisWarning)
            prop()
    except Exception as err:
        return count[0], failing, err, worst[0]
    return count[0], failing, None, worst[0]


def _single_row(check: Check, target, cfg: Config, failing: dict, min_disagreement: float) -> dict:
    """If the failing example is just a batch (no shift, permutation or index tied to its size), try each
    row alone and return the first single-row example that still fails as plainly; else `failing`."""
    ex = failing.get("ex")
    if not isinstance(ex, dict) or set(ex) != {"batch", "coef", "eps", "dtype"} or ex["batch"].size < 2:
        return failing
    for i in range(ex["batch"].size):
        row = {**ex, "batch": type(ex["batch"])(*(t[i : i + 1] for t in ex["batch"]))}
        try:
            with P.strictness(cfg.strict):
                guarded(lambda row=row: check.run(target, cfg, row))
        except Exception as err:
            if getattr(err, "disagreement", math.inf) >= min_disagreement:
                return {"ex": row, "err": err}
    return failing


def run_check(check: Check, target, cfg: Config) -> CheckResult:
    """Run one check under Hypothesis; on failure return the shrunk example as a reproduction.

    Shrinking minimises the input, which can also minimise the miss (a forgotten beta shows as a 1e-13
    difference near h = 0). When the shrunk miss is that subtle, a second search accepts only misses of
    at least CLEAR_DISAGREEMENT (relative) and, if it finds one, reports that smallest clear example.
    An advisory check that fails is reported as advice (a failure only under `cfg.strict`).
    """
    if not check.applies(cfg.variant):
        return CheckResult(check.name, SKIPPED, check.description, f"does not apply to {cfg.variant}")
    count, failing, err, precision = _search(check, target, cfg, 0.0)
    if err is None:
        return CheckResult(check.name, PASSED, check.description, examples=count, precision=precision)
    threshold = 0.0
    if getattr(failing.get("err"), "disagreement", math.inf) < CLEAR_DISAGREEMENT:
        more, clear, clear_err, _ = _search(check, target, cfg, CLEAR_DISAGREEMENT)
        count += more
        if clear_err is not None and clear.get("ex") is not None:
            failing, err, threshold = clear, clear_err, CLEAR_DISAGREEMENT
    failing = _single_row(check, target, cfg, failing, threshold)
    ex, cause = failing.get("ex"), failing.get("err", err)
    message = describe_error(cause)
    repro = None
    if ex is not None:
        inputs = (check.inputs or loss_inputs)(target, cfg, ex)
        body = check.snippet(target, cfg, ex, cause)
        repro = "\n".join(
            line
            for line in [HEADER, target.import_src, inputs, body, f"# dpo-ref check {check.name!r}: {message}"]
            if line
        )
    status = ADVICE if check.advisory and not cfg.strict else FAILED
    return CheckResult(check.name, status, check.description, message, repro, count)
