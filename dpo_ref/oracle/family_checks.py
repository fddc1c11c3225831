"""The oracle's checks against the mpmath reference: every registry variant whose record says `oracle="mpmath"`.

Each check draws a batch of up to FAMILY_BATCH pairs, the variant's coefficients (fixed ones from the
`Config`, the others from their valid ranges: `dpo_ref.checks.strategies.family_coefficients`) and scored-token
counts, and runs one property of `dpo_ref.checks.family_properties` (values and gradients against an mpmath
reference, invariance under f(x) or its absence, batch structure, bounds, optima, the variant's own
identities) on the target through `LossTarget` (`dpo_ref.oracle.targets`). The runner, reports,
diagnoses and interfaces are the classic variants' (`dpo_ref.oracle.runner`, `levels`, `diagnosis`).

Tolerance: `family_properties`' first-principles bound with eps_d the verdict's rounding unit
(`family_properties.oracle_tolerance`: float32 arithmetic passes unless strict, where float64 inputs demand
float64-exact results). The `values` check (float64 inputs) returns the precision reached, which the report
grades as for DPO/cDPO/IPO: float64-exact, float32-level or worse than float32, with the worst relative error.

A reproduction re-runs the failing property on the shrunk input through the same `LossTarget`; the
property raises the `PropertyViolation` the report shows, so running it shows the disagreement.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from dpo_ref.checks import family_properties as FP
from dpo_ref.checks import properties as P
from dpo_ref.checks import strategies as dst
from dpo_ref.oracle.catalogue import Check, Config
from dpo_ref.oracle.snippets import tensor_src
from dpo_ref.variants import MPMATH

FAMILY_BATCH = 4  # pairs per drawn batch: the mpmath reference costs ~10 ms a row
# Batch-coupled losses (one loss per quantile or per batch) are also called on these fixed batch sizes: a loss
# sorted, paired or averaged per chunk of up to FAMILY_BATCH rows is exact on every drawn batch.
COUPLED_SIZES = (5, 17, 96)


def _coefficients(cfg: Config) -> st.SearchStrategy[dict]:
    fixed = dict(cfg.coefficients)
    return dst.family_coefficients(cfg.family).map(lambda c: {**c, **{k: v for k, v in fixed.items() if k in c}})


def _base(dtype: torch.dtype = torch.float64, **batch_kw):
    def strategy(cfg: Config) -> st.SearchStrategy[dict]:
        ex = st.fixed_dictionaries(
            {
                "batch": dst.preference_batches(max_size=FAMILY_BATCH, **batch_kw),
                "coefficients": _coefficients(cfg),
                "dtype": st.just(dtype),
            }
        )
        return ex.flatmap(lambda e: dst.scored_token_counts(e["batch"].size).map(lambda n: {**e, "lengths": n}))

    return strategy


def _with(base, extra):
    return lambda cfg: base(cfg).flatmap(lambda ex: extra(ex).map(lambda more: {**ex, **more}))


def _shift(ex: dict) -> st.SearchStrategy[dict]:
    n = ex["batch"].size
    values = st.lists(st.floats(-50.0, 50.0), min_size=n, max_size=n)
    return st.tuples(values, st.booleans()).map(lambda a: {"shift": [a[0][0]] * n if a[1] else a[0], "same": a[1]})


def _perm(ex: dict) -> st.SearchStrategy[dict]:
    return st.permutations(list(range(ex["batch"].size))).map(lambda p: {"perm": p})


def _step(ex: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"rel": st.floats(0.05, 1.0), "flip": st.floats(0.0, 0.45)})


# ---------------------------------------------------------------------------------------------------
# Runners: (target, cfg, example) -> None, raising PropertyViolation


def _oracle(run):
    """The runner within the verdict's tolerance (float32 arithmetic allowed unless strict); what it returns (a
    value check's `Precision`) is passed on to the runner, which grades it."""

    def wrapped(target, cfg: Config, ex: dict):
        with FP.oracle_tolerance(cfg.strict):
            return run(target, cfg, ex)

    return wrapped


def _inputs(ex: dict):
    batch = ex["batch"].tensors(ex["dtype"])
    lengths = tuple(t.long() for t in ex["lengths"])  # (B,) int64 scored-token counts, as targets receive them
    if ex.get("same"):
        lengths = (lengths[0], lengths[0].clone())
    return batch, lengths


def _mean_only(target, cfg: Config) -> bool:
    return target.reduction != "per-example" and not cfg.record.per_example


def _setup(target, cfg: Config, ex: dict):
    spec = FP.FamilySpec(cfg.family, ex["coefficients"])
    return target.per_example(ex["coefficients"]), spec, *_inputs(ex)


def coupled_batch(size: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor]]:
    """The fixed batch of `size` pairs of the `large_batch` check: float64 log-probs in [-40, 0] (seed `size`) and
    int64 scored-token counts in [1, 64]."""
    batch = dst.fixed_preference_batch(size, seed=size).tensors()
    gen = torch.Generator().manual_seed(size)
    lengths = (torch.randint(1, 65, (size,), generator=gen), torch.randint(1, 65, (size,), generator=gen))
    return batch, lengths


def _fixed_coefficients(cfg: Config) -> st.SearchStrategy[dict]:
    """One example: the fixed coefficients, the others at the record's defaults."""
    c = {**cfg.record.defaults(), **dict(cfg.coefficients)}
    return st.just({"coefficients": c, "sizes": COUPLED_SIZES})


def _run_large(target, cfg, ex):
    spec = FP.FamilySpec(cfg.family, ex["coefficients"])
    fn = target.per_example(ex["coefficients"])
    check = FP.check_mean_value if _mean_only(target, cfg) else FP.check_values
    for size in ex["sizes"]:
        batch, lengths = coupled_batch(size)
        try:
            check(fn, spec, batch, lengths)
        except P.PropertyViolation as err:
            raise P.PropertyViolation(f"batch of {size} pairs: {err}", err.disagreement, err.index, err.tol) from None


def _large_inputs(target, cfg: Config, ex: dict) -> str:
    return "from dpo_ref.oracle.family_checks import coupled_batch  # fixed batches (seeded): log-probs, counts"


def _large_snippet(target, cfg: Config, ex: dict, err) -> str:
    c = ex["coefficients"]
    values = "check_mean_value" if _mean_only(target, cfg) else "check_values"
    message = str(err).splitlines()[0] if err is not None else ""
    return "\n".join(
        [
            "from dpo_ref.checks import family_properties as FP",
            "from dpo_ref.oracle.targets import LossTarget",
            f"target = LossTarget.from_callable(fn, {cfg.variant!r}, 'fn', '')",
            f"target.detect_reduction({c!r})",
            f"per_example = target.per_example({c!r})",
            f"spec = FP.FamilySpec({cfg.family!r}, {c!r})",
            f"with FP.oracle_tolerance(strict={cfg.strict!r}):",
            f"    for size in {tuple(ex['sizes'])!r}:",
            "        (pc, pr, rc, rr), (nc, nr) = coupled_batch(size)",
            f"        FP.{values}(per_example, spec, (pc, pr, rc, rr), (nc, nr))",
            f"# raises: {message}",
        ]
    )


def _run_values(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    precision = (FP.check_mean_value if _mean_only(target, cfg) else FP.check_values)(fn, spec, batch, lengths)
    return precision if ex["dtype"] == torch.float64 else None  # graded on float64 inputs


def _run_gradients(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_gradients(fn, spec, batch, lengths)


def _run_shift(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    claim = cfg.record.shift_invariant
    FP.check_shift(fn, spec, claim, batch, lengths, torch.tensor(ex["shift"], dtype=torch.float64))
    FP.check_not_invariant(fn, spec, claim)


def _run_batch(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_batch_structure(fn, spec, batch, lengths, torch.tensor(ex["perm"]))


def _run_bounds(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_bounds(fn, spec, batch, lengths)
    FP.check_finite(fn, spec, batch, lengths)


def _scale(ex: dict) -> float:
    c = ex["coefficients"]
    return c.get("beta", c.get("tau", 1.0))


def _run_optimum(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    optimum = cfg.record.optimum(**ex["coefficients"])
    FP.check_optimum(fn, spec, optimum, batch[2:], lengths, ex["rel"] / _scale(ex))


def _run_hinge(target, cfg, ex):
    fn, spec, batch, _ = _setup(target, cfg, ex)
    FP.check_hinge_margin(fn, spec, batch)


def _run_robust(target, cfg, ex):
    fn, spec, batch, _ = _setup(target, cfg, ex)
    FP.check_robust_unbiased(fn, spec, batch, ex["rel"] / _scale(ex))


def _run_flip_noise(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_noisy_ipo_optimum(fn, spec, ex["flip"], batch[2:], lengths, ex["rel"] / _scale(ex))


def _run_rewards(target, cfg, ex):
    _, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_rewards(target.rewards(ex["coefficients"]), spec, batch, lengths)


def _run_rewards_detached(target, cfg, ex):
    _, spec, batch, lengths = _setup(target, cfg, ex)
    FP.check_rewards_detached(target.rewards(ex["coefficients"]), spec, batch, lengths)


def _skip_no_rewards(target, cfg: Config) -> str | None:
    return "returns no implicit rewards" if target.reward_access is None else None


def _rewards_carry_graph(target, cfg: Config) -> bool:
    """The advice to detach applies when the rewards returned on the probe batch (leaves requiring grad) are
    tensors carrying the graph, not when reading them raised."""
    from dpo_ref.oracle.targets import PROBE_LENGTHS, PROBE_LOGPS

    leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in PROBE_LOGPS]
    rewards = target.rewards({**cfg.record.defaults(), **dict(cfg.coefficients)})(
        *leaves, *(n.clone() for n in PROBE_LENGTHS)
    )
    return any(isinstance(r, torch.Tensor) and r.requires_grad for r in rewards)


def _run_unmodified(target, cfg, ex):
    fn, spec, batch, lengths = _setup(target, cfg, ex)
    P.check_inputs_unmodified(lambda *x: fn(*x, *lengths), spec, batch)


# ---------------------------------------------------------------------------------------------------
# Reproductions: the inputs, then the failing property re-run on the target


def family_inputs(target, cfg: Config, ex: dict) -> str:
    batch, lengths = _inputs(ex)
    lines = [f"{n} = {tensor_src(t)}" for n, t in zip(("pc", "pr", "rc", "rr"), batch)]
    lines.append(f"nc, nr = {tensor_src(lengths[0])}, {tensor_src(lengths[1])}  # scored-token counts")
    return "\n".join(lines)


def _snippet(call: str, module: str = "FP.", rewards: bool = False):
    """Lines that rebuild the target as the oracle called it and re-run `call` (FP.<check>(...)) on it."""

    def body(target, cfg: Config, ex: dict, err) -> str:
        c = ex["coefficients"]
        extra = {"shift": "shift", "perm": "perm"}
        lines = [f"{name} = {ex[key]!r}" for key, name in extra.items() if key in ex]
        message = str(err).splitlines()[0] if err is not None else ""
        return "\n".join(
            lines
            + [
                "from dpo_ref.checks import family_properties as FP",
                "from dpo_ref.oracle.targets import LossTarget",
                f"target = LossTarget.from_callable(fn, {cfg.variant!r}, 'fn', '')",
                f"target.detect_reduction({c!r})",
                f"per_example = target.per_example({c!r})  # fn(pc, pr, rc, rr, nc, nr) -> (B,)",
                *(
                    [f"rewards = target.rewards({c!r})  # fn(pc, pr, rc, rr, nc, nr) -> (chosen, rejected)"]
                    if rewards
                    else []
                ),
                f"spec = FP.FamilySpec({cfg.family!r}, {c!r})",
                f"with FP.oracle_tolerance(strict={cfg.strict!r}):",
                f"    {module}{call.format(**_format_args(target, cfg, ex))}",
                f"# raises: {message}",
            ]
        )

    return body


def _format_args(target, cfg: Config, ex: dict) -> dict:
    c = ex["coefficients"]
    return {
        "claim": repr(cfg.record.shift_invariant),
        "optimum": repr(cfg.record.optimum(**c)),
        "delta": repr(ex.get("rel", 0.0) / _scale(ex)),
        "flip": repr(ex.get("flip", 0.0)),
        "values": "check_mean_value" if _mean_only(target, cfg) else "check_values",
    }


def _skip_mean_only(target, cfg: Config) -> str | None:
    """A reducing target of a batch-coupled loss returns only the mean: per-example values at moved inputs (the
    shift property) cannot be observed on it."""
    if target.reduction != "per-example" and cfg.record.batch_coupled:
        return "the target returns the batch mean of a batch-coupled loss: its values are checked on the mean"
    return None


GENERAL_CHECKS: tuple[Check, ...] = (
    Check(
        "values",
        "loss values equal the variant's formula (mpmath reference; float64 inputs)",
        _base(),
        _oracle(_run_values),
        _snippet("{values}(per_example, spec, (pc, pr, rc, rr), (nc, nr))"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "values_float32",
        "loss values within the float32 tolerance (float32 inputs)",
        _base(torch.float32),
        _oracle(_run_values),
        _snippet("{values}(per_example, spec, (pc, pr, rc, rr), (nc, nr))"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "large_batch",
        "loss values on fixed batches of " + ", ".join(map(str, COUPLED_SIZES)) + " pairs (batch-coupled losses: "
        f"sorted, paired or averaged over the whole batch, not per chunk of {FAMILY_BATCH})",
        _fixed_coefficients,
        _oracle(_run_large),
        _large_snippet,
        MPMATH,
        _large_inputs,
        value=True,
    ),
    Check(
        "gradients",
        "autograd gradients equal the formula's derivatives (mpmath)",
        _base(),
        _oracle(_run_gradients),
        _snippet("check_gradients(per_example, spec, (pc, pr, rc, rr), (nc, nr))"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "shift",
        "adding f(x) to both policy log-probs: unchanged where the variant is invariant, else the formula's move",
        _with(_base(min_value=-100.0), _shift),
        _oracle(_run_shift),
        _snippet(
            "check_shift(per_example, spec, {claim}, (pc, pr, rc, rr), (nc, nr), torch.tensor(shift, "
            "dtype=torch.float64)); FP.check_not_invariant(per_example, spec, {claim})"
        ),
        MPMATH,
        family_inputs,
        skip_when=_skip_mean_only,
    ),
    Check(
        "batch_structure",
        "permuting the batch permutes per-example losses (AOT: quantile losses unchanged)",
        _with(_base(), _perm),
        _oracle(_run_batch),
        _snippet("check_batch_structure(per_example, spec, (pc, pr, rc, rr), (nc, nr), torch.tensor(perm))"),
        MPMATH,
        family_inputs,
    ),
    Check(
        "bounds_finite",
        "within the variant's bounds, finite values and gradients (float32, log-probs down to -1e4)",
        _base(torch.float32),
        _oracle(_run_bounds),
        _snippet(
            "check_bounds(per_example, spec, (pc, pr, rc, rr), (nc, nr)); "
            "FP.check_finite(per_example, spec, (pc, pr, rc, rr), (nc, nr))"
        ),
        MPMATH,
        family_inputs,
    ),
    Check(
        "optimum",
        "zero gradient and a strict minimum at the variant's optimum (EXO, IPO, SPPO, NCA)",
        _with(_base(min_value=-100.0), _step),
        _oracle(_run_optimum),
        _snippet("check_optimum(per_example, spec, {optimum}, (rc, rr), (nc, nr), {delta})"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "hinge_margin",
        "loss and gradient exactly 0 where beta h >= 1, L = 1 - beta h and dL/dpc = -beta below",
        _base(),
        _oracle(_run_hinge),
        _snippet("check_hinge_margin(per_example, spec, (pc, pr, rc, rr))"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "robust_unbiased",
        "(1 - eps) L(h) + eps L(-h) = -log sigma(beta h); L falls strictly in h",
        _with(_base(min_value=-100.0), _step),
        _oracle(_run_robust),
        _snippet("check_robust_unbiased(per_example, spec, (pc, pr, rc, rr), {delta})"),
        MPMATH,
        family_inputs,
        value=True,
    ),
    Check(
        "flip_noise_optimum",
        "with flip noise eps the expected loss is minimised at h_bar* = (1 - 2 eps)/(2 tau)",
        _with(_base(min_value=-100.0), _step),
        _oracle(_run_flip_noise),
        _snippet("check_noisy_ipo_optimum(per_example, spec, {flip}, (rc, rr), (nc, nr), {delta})"),
        MPMATH,
        family_inputs,
    ),
    Check(
        "rewards",
        "returned implicit rewards are the variant's: beta (log pi - log pi_ref), or its own (SimPO: beta log pi / n)",
        _base(),
        _oracle(_run_rewards),
        _snippet("check_rewards(rewards, spec, (pc, pr, rc, rr), (nc, nr))", rewards=True),
        MPMATH,
        family_inputs,
        skip_when=_skip_no_rewards,
    ),
    Check(
        "rewards_detached",
        "returned implicit rewards carry no autograd graph",
        _base(),
        _oracle(_run_rewards_detached),
        _snippet("check_rewards_detached(rewards, spec, (pc, pr, rc, rr), (nc, nr))", rewards=True),
        MPMATH,
        family_inputs,
        advisory=True,
        advice="returns implicit rewards that carry the autograd graph: detach them (.detach()) so logging them "
        "does not keep the graph alive",
        cause=_rewards_carry_graph,
        skip_when=_skip_no_rewards,
    ),
    Check(
        "inputs_unmodified",
        "the four input tensors are not written to",
        _base(),
        _oracle(_run_unmodified),
        _snippet(
            "check_inputs_unmodified(lambda *x: per_example(*x, nc, nr), spec, (pc, pr, rc, rr))",
            "dpo_ref.checks.properties.",
        ),
        MPMATH,
        family_inputs,
    ),
)
