"""The catalogue of conformance checks and the Hypothesis runner that shrinks their failures.

Each `Check` draws one example (a dict of inputs) from a Hypothesis strategy, runs one of the
property checks of `dpo_ref.properties` on the target, and knows how to write its failing example as
a copy-pasteable Python snippet. `run_check` drives it with a fixed, derandomised `settings` (the
same inputs on every run, so reports are reproducible); when the property fails, Hypothesis shrinks
the input to a minimal one and that minimal input is what the reproduction shows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from dpo_ref import properties as P
from dpo_ref import strategies as dst
from dpo_ref.oracle.report import FAILED, PASSED, SKIPPED, CheckResult
from dpo_ref.oracle.targets import LogpsTarget, LossTarget

VARIANTS = ("dpo", "cdpo", "ipo", "ipo-mean")


@dataclass(frozen=True)
class Config:
    """What the target claims to compute and how hard to look."""

    variant: str = "dpo"
    beta: float | None = None  # fixed coefficient (tau under IPO); None draws tiny to large values
    label_smoothing: float | None = None  # cdpo eps; None draws values in (0, 0.49]
    average: bool = False  # log-prob level: length-averaged convention
    max_examples: int = 100

    @property
    def loss_variant(self) -> str:
        return "ipo" if self.variant == "ipo-mean" else self.variant

    def spec(self, coef: float, eps: float) -> P.LossSpec:
        return P.LossSpec(self.loss_variant, beta=coef, label_smoothing=eps, tau=coef)


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    strategy: Callable[[Config], st.SearchStrategy]
    run: Callable  # (target, cfg, example) -> None, raises on violation
    snippet: Callable  # (target, cfg, example) -> str (lines after the inputs)
    variants: tuple[str, ...] = VARIANTS
    inputs: Callable | None = None  # (target, cfg, example) -> str, the input lines; default: the loss batch


# ---------------------------------------------------------------------------------------------------
# Source formatting for reproductions


def _fmt(x) -> str:
    """A Python literal for nested lists of numbers, with inf and nan spelled so they evaluate."""
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    if isinstance(x, float) and not math.isfinite(x):
        return f"float({str(x)!r})"
    return repr(x)


def tensor_src(t: torch.Tensor) -> str:
    return f"torch.tensor({_fmt(t.detach().tolist())}, dtype={t.dtype})"


NAMES = ("pc", "pr", "rc", "rr")


def _loss_inputs(target, cfg: Config, ex: dict) -> str:
    tensors = ex["batch"].tensors(ex.get("dtype", torch.float64))
    lines = [f"{n} = {tensor_src(t)}" for n, t in zip(NAMES, tensors)]
    return "\n".join(lines)


def _expected_src(spec: P.LossSpec, args: str = "pc, pr, rc, rr") -> str:
    if spec.variant == "ipo":
        return f"dpo_ref.ipo_loss({args}, tau={spec.tau!r}).losses"
    return f"dpo_ref.dpo_loss({args}, beta={spec.beta!r}, label_smoothing={spec.eps!r}).losses"


def _spec(cfg: Config, ex: dict) -> P.LossSpec:
    return cfg.spec(ex["coef"], ex["eps"])


def _values_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    lines = [f"print({target.call_src(spec)})  # got"]
    if target.reduction != "per-example":
        lines.append(f"# (the target reduces the batch with: {target.reduction}; per-example values below)")
    lines.append(f"print({_expected_src(spec, 'pc.double(), pr.double(), rc.double(), rr.double()')})  # expected")
    return "\n".join(lines)


def _grad_snippet(reduce: str) -> Callable:
    def snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
        spec = _spec(cfg, ex)
        red = "" if target.reduction != "per-example" else f".{reduce}()"
        expected = _expected_src(spec, "*ref")
        return "\n".join(
            [
                "pc, pr, rc, rr = (t.requires_grad_() for t in (pc, pr, rc, rr))",
                f"out = {target.call_src(spec)}",
                "out = out[0] if isinstance(out, tuple) else out",
                "ref = [t.detach().double().requires_grad_() for t in (pc, pr, rc, rr)]",
                f"{expected}.{reduce}().backward()",
                "print(*(t.grad for t in ref))  # expected (dpo_ref, float64)",
                "if out.requires_grad:",
                f"    out{red}.backward()",
                "    print(pc.grad, pr.grad, rc.grad, rr.grad)  # got",
                "else:",
                "    print('got: no gradient reaches the inputs')",
            ]
        )

    return snippet


def _z_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    f = torch.tensor(ex["shift"], dtype=ex.get("dtype", torch.float64))
    return "\n".join(
        [
            f"f = {tensor_src(f)}  # a per-prompt constant added to both policy log-probs",
            f"print({target.call_src(spec)})",
            f"print({target.call_src(spec, 'pc + f, pr + f, rc, rr')})  # must be the same (Z(x) cancels)",
        ]
    )


def _init_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    return "\n".join(
        [
            "rc, rr = pc.clone(), pr.clone()  # policy = reference",
            f"print({target.call_src(spec)})  # expected {spec.value_at_init()!r} per example",
        ]
    )


def _swap_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    return "\n".join(
        [
            f"print({target.call_src(spec, 'pr, pc, rr, rc')})  # chosen and rejected swapped: got",
            f"print({_expected_src(spec, 'pr.double(), pc.double(), rr.double(), rc.double()')})  # expected",
        ]
    )


def _monotone_inputs(target, cfg: Config, ex: dict) -> str:
    h = torch.sort(torch.tensor(ex["margins"], dtype=torch.float64)).values
    return f"pc = {tensor_src(h)}  # margins h, sorted\npr = rc = rr = torch.zeros_like(pc)"


def _monotone_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    return f"print({target.call_src(_spec(cfg, ex))})  # must not increase along the batch (h increases)"


def _optimum_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    h = spec.optimum()
    return "\n".join(
        [
            f"h_star = {h!r}  # the minimiser of the per-pair loss",
            f"for h in (h_star, h_star - {ex['delta']!r}, h_star + {ex['delta']!r}):",
            "    x = (rc + h).requires_grad_()",
            f"    out = {target.call_src(spec, 'x, rr.clone(), rc, rr')}",
            "    out = out[0] if isinstance(out, tuple) else out",
            "    out.sum().backward()",
            "    print(h, out, x.grad)  # expected: zero gradient and the smallest loss at h_star",
        ]
    )


def _perm_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    return "\n".join(
        [
            f"perm = torch.tensor({list(ex['perm'])!r})",
            f"print({target.call_src(spec)}[perm])",
            f"print({target.call_src(spec, 'pc[perm], pr[perm], rc[perm], rr[perm]')})  # must be the same",
        ]
    )


def _indep_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    i = ex["index"]
    other = ex["other"].tensors(ex.get("dtype", torch.float64))
    j = i % other[0].shape[0]
    lines = [f"print({target.call_src(spec)})"]
    for n, t in zip(NAMES, other):
        lines.append(f"{n} = {n}.clone(); {n}[{i}] = {t[j].item()!r}  # change example {i} only")
    lines.append(f"print({target.call_src(spec)})  # every other example's loss must be unchanged")
    return "\n".join(lines)


def _unmodified_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    return "\n".join(
        [
            "before = [t.clone() for t in (pc, pr, rc, rr)]",
            f"{target.call_src(spec)}",
            "print([torch.equal(a, b) for a, b in zip(before, (pc, pr, rc, rr))])  # expected all True",
        ]
    )


def _reduction_snippet(target: LossTarget, cfg: Config, ex: dict) -> str:
    spec = _spec(cfg, ex)
    red = target.reduction if target.reduction in ("mean", "sum") else "mean"
    return "\n".join(
        [
            f"print({target.call_src(spec)})  # got",
            f"print({_expected_src(spec, 'pc.double(), pr.double(), rc.double(), rr.double()')}.{red}())  # expected",
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Strategies


def _coef(cfg: Config) -> st.SearchStrategy[float]:
    if cfg.beta is not None:
        return st.just(float(cfg.beta))
    return dst.taus() if cfg.loss_variant == "ipo" else dst.betas()


def _eps(cfg: Config) -> st.SearchStrategy[float]:
    if cfg.loss_variant != "cdpo":
        return st.just(0.0)
    return st.just(float(cfg.label_smoothing)) if cfg.label_smoothing is not None else dst.label_smoothings()


def _base(dtype: torch.dtype = torch.float64, **batch_kw) -> Callable[[Config], st.SearchStrategy[dict]]:
    def strategy(cfg: Config) -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries(
            {
                "batch": dst.preference_batches(**batch_kw),
                "coef": _coef(cfg),
                "eps": _eps(cfg),
                "dtype": st.just(dtype),
            }
        )

    return strategy


LARGE_BATCH = 96


def _large(ex: dict) -> dict:
    """The drawn batch tiled to LARGE_BATCH rows: a batch size no test of a few examples reaches."""
    b = ex["batch"]
    reps = -(-LARGE_BATCH // b.size)
    tiled = type(b)(*(t.repeat(reps)[:LARGE_BATCH] for t in b))
    return {**ex, "batch": tiled, "small": b, "reps": reps}


def _large_inputs(target, cfg: Config, ex: dict) -> str:
    small = ex["small"].tensors(ex.get("dtype", torch.float64))
    return "\n".join(f"{n} = {tensor_src(t)}.repeat({ex['reps']})[:{LARGE_BATCH}]" for n, t in zip(NAMES, small))


def _with(base: Callable, extra: Callable[[dict], st.SearchStrategy[dict]]) -> Callable:
    return lambda cfg: base(cfg).flatmap(lambda ex: extra(ex).map(lambda more: {**ex, **more}))


def _size(ex: dict) -> int:
    return ex["batch"].size


def _shift(ex: dict) -> st.SearchStrategy[dict]:
    floats = st.floats(-100.0, 100.0, allow_nan=False)
    return st.lists(floats, min_size=_size(ex), max_size=_size(ex)).map(lambda f: {"shift": f})


def _perm(ex: dict) -> st.SearchStrategy[dict]:
    return st.permutations(list(range(_size(ex)))).map(lambda p: {"perm": p})


def _other(ex: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"other": dst.preference_batches(), "index": st.integers(0, _size(ex) - 1)})


def _monotone_strategy(cfg: Config) -> st.SearchStrategy[dict]:
    margins = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=8)
    return st.fixed_dictionaries({"margins": margins, "coef": _coef(cfg), "eps": _eps(cfg)})


def _optimum_strategy(cfg: Config) -> st.SearchStrategy[dict]:
    def delta(ex):
        scale = 1.0 if cfg.loss_variant == "ipo" else 1.0 / ex["coef"]  # cDPO: in units of 1/beta
        return st.floats(0.05, 5.0).map(lambda d: {"delta": d * scale})

    return _with(_base(), delta)(cfg)


# ---------------------------------------------------------------------------------------------------
# Runners: (target, cfg, example) -> None


def _tensors(ex: dict) -> tuple[torch.Tensor, ...]:
    return ex["batch"].tensors(ex.get("dtype", torch.float64))


def _pe(target: LossTarget, cfg: Config, ex: dict) -> tuple[Callable, P.LossSpec]:
    spec = _spec(cfg, ex)
    return target.per_example(spec), spec


def _run_values(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_values(fn, spec, _tensors(ex))


def _run_gradients(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_gradients(fn, spec, _tensors(ex))


def _run_signs(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_gradient_signs(fn, spec, _tensors(ex))


def _run_z(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_z_cancellation(fn, spec, _tensors(ex), torch.tensor(ex["shift"], dtype=torch.float64))


def _run_init(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    pc, pr, _, _ = _tensors(ex)
    P.check_init(fn, spec, pc, pr)


def _run_swap(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_swap(fn, spec, _tensors(ex))


def _run_monotone(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_monotone(fn, spec, torch.tensor(ex["margins"], dtype=torch.float64))


def _run_optimum(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    _, _, rc, rr = _tensors(ex)
    P.check_optimum(fn, spec, (rc, rr), ex["delta"])


def _run_perm(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_permutation(fn, spec, _tensors(ex), torch.tensor(ex["perm"]))


def _run_indep(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_independence(fn, spec, _tensors(ex), ex["other"].tensors(ex["dtype"]), ex["index"])


def _run_finite(target, cfg, ex):
    fn, spec = _pe(target, cfg, ex)
    P.check_finite(fn, spec, _tensors(ex))


def _run_unmodified(target, cfg, ex):
    spec = _spec(cfg, ex)
    P.check_inputs_unmodified(target.raw(spec), spec, _tensors(ex))


def _run_reduction(target, cfg, ex):
    spec = _spec(cfg, ex)
    reduction = target.reduction if target.reduction in ("mean", "sum") else "mean"
    P.check_reduction(target.raw(spec), spec, _tensors(ex), reduction)


LOSS_CHECKS: tuple[Check, ...] = (
    Check("values", "loss values equal the closed form (float64 inputs)", _base(), _run_values, _values_snippet),
    Check(
        "values_float32",
        "loss values within the float32 tolerance",
        _base(torch.float32),
        _run_values,
        _values_snippet,
    ),
    Check(
        "large_batch",
        f"values and gradients for a batch of {LARGE_BATCH} (float32)",
        lambda cfg: _base(torch.float32)(cfg).map(_large),
        lambda t, cfg, ex: (_run_values(t, cfg, ex), _run_gradients(t, cfg, ex)),
        _grad_snippet("sum"),
        inputs=_large_inputs,
    ),
    Check("gradients", "autograd gradients equal the closed form dL/dh", _base(), _run_gradients, _grad_snippet("sum")),
    Check(
        "gradient_signs",
        "dL/d log pi(y_w) < 0 < dL/d log pi(y_l), beta sigma(-beta h) / B under the mean",
        _base(),
        _run_signs,
        _grad_snippet("mean"),
        variants=("dpo",),
    ),
    Check(
        "z_cancellation",
        "adding f(x) to both policy log-probs changes neither loss nor gradients",
        _with(_base(), _shift),
        _run_z,
        _z_snippet,
    ),
    Check(
        "init", "at pi = pi_ref: L = ln 2 (1/(4 tau^2) for IPO), dL/dh closed form", _base(), _run_init, _init_snippet
    ),
    Check("swap", "swapping chosen and rejected gives the loss at -h", _base(), _run_swap, _swap_snippet),
    Check(
        "monotone",
        "the loss does not increase with the margin",
        _monotone_strategy,
        _run_monotone,
        _monotone_snippet,
        variants=("dpo",),
        inputs=_monotone_inputs,
    ),
    Check(
        "optimum",
        "the gradient vanishes at h* (1/(2 tau); ln((1-eps)/eps)/beta) and h* is a strict minimum",
        _optimum_strategy,
        _run_optimum,
        _optimum_snippet,
        variants=("cdpo", "ipo", "ipo-mean"),
    ),
    Check(
        "permutation",
        "permuting the batch permutes the losses",
        _with(_base(), _perm),
        _run_perm,
        _perm_snippet,
    ),
    Check(
        "batch_independence",
        "changing one example leaves the others' losses unchanged",
        _with(_base(), _other),
        _run_indep,
        _indep_snippet,
    ),
    Check(
        "finite",
        "finite values and gradients for log-probs down to -1e4 (float32)",
        _base(torch.float32),
        _run_finite,
        _grad_snippet("sum"),
    ),
    Check(
        "inputs_unmodified",
        "the four input tensors are not written to",
        _base(),
        _run_unmodified,
        _unmodified_snippet,
    ),
    Check(
        "reduction",
        "a scalar output is the mean (or sum) of the per-example losses, with matching gradients",
        _base(),
        _run_reduction,
        _reduction_snippet,
    ),
)


# ---------------------------------------------------------------------------------------------------
# Log-prob level


def _logps_inputs_from(logits: torch.Tensor, labels: torch.Tensor, note: str = "") -> str:
    return (
        f"logits = {tensor_src(logits)}  # (B, T, V){note}\nlabels = {tensor_src(labels)}  # (B, T), -100 = not scored"
    )


def _logps_inputs(target, cfg: Config, ex: dict) -> str:
    logits, labels = ex["batch"].padded(dtype=ex.get("dtype", torch.float64))
    return _logps_inputs_from(logits, labels)


def _logps_expected(cfg: Config) -> str:
    return f"dpo_ref.sequence_logps(logits.double(), labels, average={cfg.average!r})"


def _logps_values_snippet(target: LogpsTarget, cfg: Config, ex: dict) -> str:
    return f"print({target.call_src()})  # got\nprint({_logps_expected(cfg)})  # expected"


def _logps_padding_snippet(target: LogpsTarget, cfg: Config, ex: dict) -> str:
    b = ex["batch"]
    lines = []
    for side in ("left", "right"):
        for extra in (0, 2):
            logits, labels = b.padded(side, extra)
            lines.append(f"# {side} padding, {extra} extra positions")
            lines.append(_logps_inputs_from(logits, labels))
            lines.append(f"print({target.call_src()})  # must be the same for every padding")
    return "\n".join(lines)


def _logps_grad_snippet(target: LogpsTarget, cfg: Config, ex: dict) -> str:
    return "\n".join(
        [
            "x = logits.clone().requires_grad_()",
            f"out = {target.call_src('x, labels')}",
            "y = logits.clone().requires_grad_()",
            f"dpo_ref.sequence_logps(y, labels, average={cfg.average!r}).sum().backward()",
            "if out.requires_grad:",
            "    out.sum().backward()",
            "    print((x.grad - y.grad).abs().max())  # expected 0 (up to rounding)",
            "else:",
            "    print('got: no gradient reaches the logits')",
        ]
    )


def _logps_unmodified_snippet(target: LogpsTarget, cfg: Config, ex: dict) -> str:
    return "\n".join(
        [
            "before = (logits.clone(), labels.clone())",
            f"{target.call_src()}",
            "print(torch.equal(logits, before[0]), torch.equal(labels, before[1]))  # expected True True",
        ]
    )


def _logps_unscored_inputs(target, cfg: Config, ex: dict) -> str:
    logits, labels = ex["batch"].padded()
    logits = logits.clone()
    scored_next = torch.zeros_like(labels, dtype=torch.bool)
    scored_next[:, :-1] = labels[:, 1:] != -100
    row = logits[~scored_next]
    row[:, :-1] = -math.inf
    logits[~scored_next] = row
    return _logps_inputs_from(logits, labels, note=", -inf where nothing is scored")


def _token_batches(dtype=torch.float64, **kw) -> Callable[[Config], st.SearchStrategy[dict]]:
    return lambda cfg: st.fixed_dictionaries({"batch": dst.token_batches(**kw), "dtype": st.just(dtype)})


def _scaled_token_batches(dtype=torch.float32) -> Callable[[Config], st.SearchStrategy[dict]]:
    """Token batches whose real logits are also scaled up 10x (|logits| in the hundreds: exp overflows float32)."""

    def scale(ex: dict, k: float) -> dict:
        b = ex["batch"]
        return {**ex, "batch": replace(b, rows=[(lab, lg * k) for lab, lg in b.rows])}

    return lambda cfg: st.tuples(_token_batches(dtype)(cfg), st.sampled_from([1.0, 10.0])).map(lambda a: scale(*a))


def _last_position(ex: dict) -> dict:
    return {**ex, "batch": replace(ex["batch"], padding_side="left", extra_padding=0)}


LOGPS_CHECKS: tuple[Check, ...] = (
    Check(
        "logps_values",
        "sum (or mean) of the scored tokens' log-probs, shifted by one, -100 masked (float64)",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_values(t, ex["batch"], cfg.average, torch.float64),
        _logps_values_snippet,
        inputs=_logps_inputs,
    ),
    Check(
        "logps_values_float32",
        "the same within the float32 tolerance (large logits included)",
        _scaled_token_batches(torch.float32),
        lambda t, cfg, ex: P.check_logps_values(t, ex["batch"], cfg.average, torch.float32),
        _logps_values_snippet,
        inputs=_logps_inputs,
    ),
    Check(
        "logps_last_position",
        "responses that reach the last position (left padding, no extra)",
        lambda cfg: _token_batches()(cfg).map(_last_position),
        lambda t, cfg, ex: P.check_logps_values(t, ex["batch"], cfg.average, torch.float64),
        _logps_values_snippet,
        inputs=_logps_inputs,
    ),
    Check(
        "logps_padding",
        "left, right and extra padding give the same log-probs",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_padding(t, ex["batch"]),
        _logps_padding_snippet,
        inputs=lambda t, cfg, ex: "",
    ),
    Check(
        "logps_gradients",
        "d logps / d logits = one-hot minus softmax on the scored positions, 0 elsewhere",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_gradients(t, ex["batch"], cfg.average),
        _logps_grad_snippet,
        inputs=_logps_inputs,
    ),
    Check(
        "logps_unscored_ignored",
        "-inf logits at prompt, padding and last positions do not change the result",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_ignores_unscored(t, ex["batch"], cfg.average),
        _logps_values_snippet,
        inputs=_logps_unscored_inputs,
    ),
    Check(
        "logps_inputs_unmodified",
        "logits and labels are not written to",
        _token_batches(),
        lambda t, cfg, ex: P.check_logps_inputs_unmodified(t, ex["batch"]),
        _logps_unmodified_snippet,
        inputs=_logps_inputs,
    ),
)


# ---------------------------------------------------------------------------------------------------
# The runner


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
    if isinstance(err, AssertionError) and str(err):
        return str(err).splitlines()[0]
    text = str(err).strip().splitlines()
    return f"the target raised {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


SHRINK_SECONDS = 30.0  # per failing check, a safety net (typical shrinking takes well under 2 s); Hypothesis: 300 s


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


def _search(check: Check, target, cfg: Config, min_disagreement: float) -> tuple[int, dict, BaseException | None]:
    """Run the check under Hypothesis, counting as failures only misses of at least `min_disagreement`.

    Returns (examples tried, the last failing example and its error, the error Hypothesis raised).
    """
    count = [0]
    failing: dict = {}

    @hypothesis_settings(cfg.max_examples)
    @given(ex=check.strategy(cfg))
    def prop(ex):
        count[0] += 1
        try:
            check.run(target, cfg, ex)
        except Exception as err:
            if getattr(err, "disagreement", math.inf) < min_disagreement:
                return  # a real but tiny miss: this search looks for a plain one
            failing["ex"], failing["err"] = ex, err  # the last failure is Hypothesis' final, shrunk replay
            raise

    try:
        with _shrink_budget(SHRINK_SECONDS):
            prop()
    except Exception as err:
        return count[0], failing, err
    return count[0], failing, None


def _single_row(check: Check, target, cfg: Config, failing: dict, min_disagreement: float) -> dict:
    """If the failing example is just a batch (no shift, permutation or index tied to its size), try each
    row alone and return the first single-row example that still fails as plainly; else `failing`."""
    ex = failing.get("ex")
    if not isinstance(ex, dict) or set(ex) != {"batch", "coef", "eps", "dtype"} or ex["batch"].size < 2:
        return failing
    for i in range(ex["batch"].size):
        row = {**ex, "batch": type(ex["batch"])(*(t[i : i + 1] for t in ex["batch"]))}
        try:
            check.run(target, cfg, row)
        except Exception as err:
            if getattr(err, "disagreement", math.inf) >= min_disagreement:
                return {"ex": row, "err": err}
    return failing


def run_check(check: Check, target, cfg: Config, header: str) -> CheckResult:
    """Run one check under Hypothesis; on failure return the shrunk example as a reproduction.

    Shrinking minimises the input, which can also minimise the miss (a forgotten beta shows as a 1e-13
    difference near h = 0). When the shrunk miss is that subtle, a second search accepts only misses of
    at least CLEAR_DISAGREEMENT (relative) and, if it finds one, reports that smallest clear example.
    """
    if cfg.variant not in check.variants:
        return CheckResult(check.name, SKIPPED, check.description, f"does not apply to {cfg.variant}")
    count, failing, err = _search(check, target, cfg, 0.0)
    if err is None:
        return CheckResult(check.name, PASSED, check.description, examples=count)
    if getattr(failing.get("err"), "disagreement", math.inf) < CLEAR_DISAGREEMENT:
        more, clear, clear_err = _search(check, target, cfg, CLEAR_DISAGREEMENT)
        count += more
        if clear_err is not None and clear.get("ex") is not None:
            failing, err = _single_row(check, target, cfg, clear, CLEAR_DISAGREEMENT), clear_err
    ex, cause = failing.get("ex"), failing.get("err", err)
    message = describe_error(cause)
    repro = None
    if ex is not None:
        inputs = (check.inputs or _loss_inputs)(target, cfg, ex)
        body = check.snippet(target, cfg, ex)
        repro = "\n".join(
            line
            for line in [header, target.import_src, inputs, body, f"# dpo-ref check {check.name!r}: {message}"]
            if line
        )
    return CheckResult(check.name, FAILED, check.description, message, repro, count)
