"""The properties that identify each member of the loss family, as checks on any implementation.

Like `dpo_ref.checks.properties`: each `check_*(fn, spec, ...)` takes a per-example loss function
`fn(pc, pr, rc, rr, chosen_lengths, rejected_lengths) -> (B,)` (coefficients bound, e.g.
`LOSS_FAMILY[name].bind(beta=...)`; a loss that needs no lengths ignores them), a `FamilySpec` naming
the variant and its coefficients, and concrete inputs; it returns None or raises `PropertyViolation`.

Expected values are computed independently of `dpo_ref.family`: each variant's formula is written out
again in the registry (`dpo_ref.variants`, each record's `reference`) from its paper, evaluated in mpmath at
30 significant digits on the exact float64 inputs; gradients are mpmath derivatives of that formula
(`mpmath.diff`), not autograd.

Tolerance (eps_d the machine epsilon of the implementation's dtype, K = 16 as in `dpo_ref.checks.properties`).
An implementation computing in dtype d rounds each input and each intermediate once (relative eps_d).
Every loss here is a function of differences of the inputs, so its argument moves by at most
~eps_d (S + C_h) with S = sum of |inputs| of the row and C_h the size of any constant it is compared
with in log-prob units (1/(2 tau) for IPO, 1/(2 beta) for SPPO); the loss then moves by G times that,
G = max_k |dL/dx_k|, plus its own rounding ~eps_d (|L| + C_L), C_L the size of constants added in loss
units (|log eps| for EXO, gamma for SimPO, |delta| for BCO). So

    |L - L_ref| <= K eps_d (G (S + C_h) + |L_ref| + C_L + 1).

For gradients the same argument with H = max_k |d^2 L/dx_k^2| (mpmath, at the row) in place of G, and
T the size of the terms the chain rule adds up (beta; DiscoPOP beta (1 + 1/tau)(|L| + 1); EXO
beta (|log eps| + 1); robust beta/(1 - 2 eps)), each rounded once:

    |g - g_ref| <= K eps_d (|g_ref| + T + H (S + C_h) + 1e-3).

Verdict and grade. Under `oracle_tolerance` (the oracle), eps_d is `dpo_ref.checks.properties.verdict_eps`:
max(eps_dtype, eps_float32), so an implementation that computes in float32 whatever its inputs (a `.float()`
cast, a fused kernel) passes, as it does for DPO/cDPO/IPO; with `strict` eps_d is the dtype's own, and float64
inputs demand float64-exact results. Beside the verdict, `check_values` / `check_mean_value` return the
precision reached (`dpo_ref.checks.properties.Precision`): the worst |L - L_ref| in units of the float64 bound
K eps_float64 (G (S + C_h) + |L_ref| + C_L + 1), the same conditioning as the tolerance. <= 1 is float64-exact,
<= eps_float32 / eps_float64 = 2^29 float32-level, beyond that worse than float32; the oracle reports the worst
over its value checks on float64 inputs as the grade. A formula error (a constant off by 1e-3 relative, a lost
reference) misses by far more than 2^29 float64 bounds, so it fails with or without strict.

Where the gradient jumps within that distance (the hinge's kink at beta h = 1, two sorted keys of AOT
closer than the rounding) the pointwise gradient is not determined by the inputs: hinge rows that close
to the kink are skipped, and AOT gradients are compared as sums over groups of near-tied keys (the
derivative along the group is well defined).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import mpmath as mp
import torch

from dpo_ref import variants as V
from dpo_ref.checks.properties import (
    TOLERANCE_K,
    Precision,
    PropertyViolation,
    grad_leaves,
    measure,
    strictness,
    verdict_eps,
    without_grad_note,
)

mp.mp.dps = 30
SMALL_BATCH = 4  # up to this batch size a batch-coupled loss's G is its exact mpmath derivative (the drawn batches)
FamilyFn = Callable[..., torch.Tensor]
Row = tuple  # (pc, pr, rc, rr, nc, nr) as mpf


# --- the independent reference (mpmath): each variant's `reference` in the registry (`dpo_ref.variants`) -------

_logsig, _sig, _h = V.logsig, V.sig, V.margin


@dataclass(frozen=True)
class FamilySpec:
    """Which family member an implementation claims to compute, and its coefficients."""

    variant: str
    coefficients: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in V.LOSS_FAMILY:
            raise ValueError(f"variant must be one of {sorted(V.LOSS_FAMILY)}, got {self.variant!r}")

    @property
    def record(self) -> V.Variant:
        """The registry's record of this variant (by family key)."""
        return V.LOSS_FAMILY[self.variant]

    @property
    def c(self) -> dict:
        return {k: mp.mpf(v) for k, v in self.coefficients.items()}

    def describe(self) -> str:
        return self.variant + "(" + ", ".join(f"{k}={v!r}" for k, v in self.coefficients.items()) + ")"

    def constants(self) -> tuple[float, float]:
        """(C_h, C_L) of the module docstring: constants compared with the margin, and added to the loss."""
        return self.record.constants(self.coefficients)

    def gradient_terms(self, loss: float) -> float:
        """T of the module docstring: the size of the terms autograd adds up into dL/dx (the chain rule
        through beta; DiscoPOP's 1/tau branch and its exp term; EXO's log eps; robust's 1/(1 - 2 eps))."""
        return self.record.gradient_terms(self.coefficients, loss)

    # reference values and derivatives ------------------------------------------------------------

    def losses(self, rows: list[Row]) -> list:
        return self.record.reference(rows, self.c)

    def directional(self, rows: list[Row], direction: list[tuple], order: int = 1, which: int | None = None):
        """d^order/dt^order of sum_i L_i (or of L_which) at rows + t * direction (direction per row, 6 entries)."""

        if not self.record.batch_coupled:  # per-example: only the rows the direction touches matter
            touched = [i for i, d in enumerate(direction) if any(d)] if which is None else [which]
            rows, direction = [rows[i] for i in touched], [direction[i] for i in touched]
            which = None

        def f(t):
            moved = [tuple(x + t * d for x, d in zip(r, dr)) for r, dr in zip(rows, direction)]
            out = self.losses(moved)
            return out[which] if which is not None else mp.fsum(out)

        return mp.diff(f, 0, order)


def _rows(batch: tuple[torch.Tensor, ...], lengths) -> list[Row]:
    cols = [t.detach().double().tolist() for t in batch]
    if lengths is None:
        ones = [1.0] * len(cols[0])
        lengths = (ones, ones)
    else:
        lengths = [t.detach().double().tolist() for t in lengths]
    return [tuple(mp.mpf(v) for v in vals) for vals in zip(*cols, *lengths)]


def _unit(B: int, i: int, k: int) -> list[tuple]:
    return [tuple(1 if (j == i and m == k) else 0 for m in range(6)) for j in range(B)]


_ORACLE: contextvars.ContextVar[bool] = contextvars.ContextVar("dpo_ref_family_oracle", default=False)


@contextlib.contextmanager
def oracle_tolerance(strict: bool = False):
    """Within the block, eps_d is the rounding unit the oracle's verdict allows
    (`dpo_ref.checks.properties.verdict_eps`: float32 arithmetic on float64 inputs passes, unless `strict`); outside
    it, the input dtype's own eps (the suite's own checks of dpo_ref.family demand float64 exactness)."""
    token = _ORACLE.set(True)
    try:
        with strictness(strict):
            yield
    finally:
        _ORACLE.reset(token)


def _eps(dtype: torch.dtype) -> float:
    return verdict_eps(dtype) if _ORACLE.get() else torch.finfo(dtype).eps


def _as_vector(out: object, size: int, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise PropertyViolation(f"{what}: expected a tensor of per-example losses, got {type(out).__name__}")
    if out.shape != (size,):
        raise PropertyViolation(f"{what}: expected losses of shape ({size},), got {tuple(out.shape)}")
    return out


def _fail_at(what: str, i: int, got: float, want: float, tol: float) -> None:
    diff = abs(got - want)
    disagreement = diff / max(abs(want), tol) if math.isfinite(diff) else math.inf
    raise PropertyViolation(
        f"{what}: at index {i} got {got!r}, expected {want!r} (|diff| {diff:.3g} > tolerance {tol:.3g})", disagreement
    )


def _compare(got: list[float], want: list[float], tol: list[float], what: str) -> None:
    for i, (g, w, t) in enumerate(zip(got, want, tol)):
        if not abs(g - w) <= t:  # NaN fails
            _fail_at(what, i, g, w, t)


def _scales(spec: FamilySpec, rows: list[Row]) -> tuple[list[float], list[float]]:
    """Per row: S (sum of |log-probs|) and G (max |dL_i/dx_k|), batch maxima for a batch-coupled loss."""
    B = len(rows)
    S = [float(sum(abs(x) for x in r[:4])) for r in rows]
    G = []
    coupled = spec.record.batch_coupled
    if coupled and spec.record.slope is not None and B > SMALL_BATCH:
        # 4 B mpmath derivatives of the whole batch's loss would cost seconds: the record's bound on them instead
        return [max(S)] * B, [spec.record.slope(rows, spec.coefficients)] * B
    for i in range(B):
        G.append(max(float(abs(spec.directional(rows, _unit(B, i, k), 1, None if coupled else i)))
                     for k in range(4)))  # fmt: skip
    if coupled:
        S, G = [max(S)] * B, [max(G)] * B
    return S, G


def value_scale(spec: FamilySpec, rows: list[Row], expected: list) -> list[float]:
    """Per row: G (S + C_h) + |L_ref| + C_L + 1, the size of the rounding a correct implementation may make in
    units of its rounding unit (module docstring)."""
    S, G = _scales(spec, rows)
    c_h, c_l = spec.constants()
    return [g * (s + c_h) + abs(float(e)) + c_l + 1.0 for s, g, e in zip(S, G, expected)]


def value_tolerance(spec: FamilySpec, rows: list[Row], expected: list, dtype: torch.dtype) -> list[float]:
    return [TOLERANCE_K * _eps(dtype) * x for x in value_scale(spec, rows, expected)]


def _call(fn: FamilyFn, batch, lengths, what: str) -> torch.Tensor:
    args = tuple(batch) + (tuple(lengths) if lengths is not None else (None, None))
    return _as_vector(fn(*args), batch[0].shape[0], what)


# --- checks ---------------------------------------------------------------------------------------


def _precision(out: list[float], expected: list[float], scale: list[float]) -> Precision:
    """The `Precision` of `out` against the reference, in units of the float64 bound K eps_float64 scale."""
    return measure(torch.tensor(out, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                   torch.tensor(scale, dtype=torch.float64))  # fmt: skip


def check_values(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> Precision:
    """L_i equals the variant's formula (mpmath at 30 digits), within the dtype's tolerance; returns the
    precision reached (graded by the oracle on float64 inputs)."""
    dtype = batch[0].dtype
    out = _call(fn, batch, lengths, f"{spec.describe()} values").detach().double().tolist()
    rows = _rows(batch, lengths)
    expected = [float(e) for e in spec.losses(rows)]
    scale = value_scale(spec, rows, expected)
    tol = [TOLERANCE_K * _eps(dtype) * x for x in scale]
    _compare(out, expected, tol, f"{spec.describe()} loss value")
    return _precision(out, expected, scale)


def check_mean_value(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> Precision:
    """A target returning the batch mean (a batch-coupled loss cannot be called one example at a time): each
    entry of `fn`'s output is the mean, and it equals the mean of the formula's losses; returns the precision."""
    dtype = batch[0].dtype
    out = _call(fn, batch, lengths, f"{spec.describe()} batch mean").detach().double().tolist()
    rows = _rows(batch, lengths)
    expected = spec.losses(rows)
    mean = float(mp.fsum(expected) / len(expected))
    scale = max(value_scale(spec, rows, expected))
    tol = TOLERANCE_K * _eps(dtype) * scale
    _compare(out, [mean] * len(out), [tol] * len(out), f"{spec.describe()} batch-mean loss")
    return _precision(out, [mean] * len(out), [scale] * len(out))


def _grads(
    fn: FamilyFn, batch, lengths, what: str, references_require_grad: bool = True
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    leaves = grad_leaves(batch, references_require_grad)
    out = _call(fn, leaves, lengths, what)
    if not out.requires_grad:
        raise PropertyViolation(f"{what}: the losses do not depend differentiably on the log-probs")
    wrt = [t for t in leaves if t.requires_grad]
    found = iter(torch.autograd.grad(out.sum(), wrt, allow_unused=True))
    grads = tuple((next(found) if t.requires_grad else None) for t in leaves)
    return out, tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves))


def _groups(keys: list[float], tol: float) -> list[list[int]]:
    """Indices grouped by near-equal key (chains of neighbours closer than `tol` after sorting)."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    groups = [[order[0]]]
    for a, b in zip(order, order[1:]):
        if abs(keys[b] - keys[a]) <= tol:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def check_gradients(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> None:
    """Autograd gradients of sum_i L_i equal the mpmath derivatives of the formula.

    Policy log-probs always; reference log-probs when the implementation lets a gradient through them.
    """
    for with_grad in (True, False):  # references requiring grad, then as trainers pass them
        what = without_grad_note(f"{spec.describe()} gradients", with_grad)
        _, grads = _grads(fn, batch, lengths, what, with_grad)
        _check_gradients(spec, batch, lengths, grads, what)


def _check_gradients(spec: FamilySpec, batch, lengths, grads, what: str) -> None:
    dtype = batch[0].dtype
    rows = _rows(batch, lengths)
    B = len(rows)
    S = [float(sum(abs(x) for x in r[:4])) for r in rows]
    losses = spec.losses(rows)
    c_h, _ = spec.constants()
    eps = _eps(dtype)
    names = ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")
    for k, (g, name) in enumerate(zip(grads, names)):
        if k >= 2 and not bool(g.abs().sum() > 0):
            continue  # a reference without grad support may legitimately give none
        g = g.double().tolist()
        quantile_key = spec.record.quantile_key
        if quantile_key is not None:
            if k >= 2:
                continue
            keys = [quantile_key(r, k) for r in rows]
            groups = _groups(keys, 4 * TOLERANCE_K * eps * max(S))
        else:
            groups = [[i] for i in range(B)]
        for group in groups:
            direction = [tuple(1 if (j in group and m == k) else 0 for m in range(6)) for j in range(B)]
            want = float(spec.directional(rows, direction))
            if spec.record.batch_coupled:
                curv = spec.coefficients.get("beta", 0.0) ** 2 / 4 * len(group)
            else:
                curv = float(abs(spec.directional(rows, direction, 2, group[0])))
            i = group[0]
            if spec.record.kink is not None:
                distance, scale = spec.record.kink(rows[i], spec.coefficients)
                if abs(distance) <= TOLERANCE_K * eps * scale * (S[i] + c_h):
                    continue  # at the kink within rounding: the pointwise gradient is not determined
            got = sum(g[j] for j in group)
            terms = spec.gradient_terms(float(losses[i]))
            tol = TOLERANCE_K * eps * (abs(want) + terms + curv * (max(S[j] for j in group) + c_h) + 1e-3)
            if not abs(got - want) <= tol:
                label = f"rows {group}" if len(group) > 1 else f"index {i}"
                raise PropertyViolation(
                    f"{what}: dL/d{name}_logps at {label} got {got!r}, expected {want!r} (tolerance {tol:.3g})",
                    abs(got - want) / max(abs(want), tol) if math.isfinite(got) else math.inf,
                )


def check_shift(fn: FamilyFn, spec: FamilySpec, shift_invariant: str, batch, lengths, shift: torch.Tensor) -> None:
    """Adding f(x) to both policy log-probs: unchanged where the variant is invariant, otherwise moved to
    exactly the formula's value at the shifted inputs.

    `shift_invariant` is the registry's claim ("yes", "no", "equal_lengths", "batch_constant"); the check
    knows from the inputs whether invariance applies (equal lengths, one f for the whole batch).
    """
    pc, pr, rc, rr = batch
    moved = (pc + shift.to(pc.dtype), pr + shift.to(pr.dtype), rc, rr)
    base = _call(fn, batch, lengths, f"{spec.describe()} shift").detach().double()
    after = _call(fn, moved, lengths, f"{spec.describe()} shift").detach().double()
    rows, rows_moved = _rows(batch, lengths), _rows(moved, lengths)
    expected = spec.losses(rows_moved)
    tol = [
        a + b
        for a, b in zip(
            value_tolerance(spec, rows_moved, expected, pc.dtype),
            value_tolerance(spec, rows, spec.losses(rows), pc.dtype),
        )
    ]
    applies = {
        "yes": True,
        "no": False,
        "equal_lengths": lengths is None or torch.equal(lengths[0].double(), lengths[1].double()),
        "batch_constant": bool((shift == shift[0]).all()),
    }[shift_invariant]
    what = f"{spec.describe()} loss after adding f(x) to both policy log-probs"
    if applies:
        _compare(after.tolist(), base.tolist(), tol, what + " (invariant: must not change)")
    _compare(after.tolist(), [float(e) for e in expected], tol, what)


def check_not_invariant(fn: FamilyFn, spec: FamilySpec, shift_invariant: str) -> None:
    """A witness that the loss is NOT invariant where the variant is not: the change under f(x) is the
    formula's and larger than the tolerance (an implementation of the margin-only form would not move).

    The witness is a fact about the formula, so it must be visible at every coefficient: log-ratios and the
    shift in units of 1/beta keep sigma's arguments O(1), but at large beta the tolerance's G S term (G ~ beta,
    S the log-probs' size) or its absolute 1 (SPPO's losses are ~1/beta^2) can swamp the change. The first of
    a few scales (log-ratio unit 1/beta or 1; log-probs of size 1 or 1/beta) on which the formula moves by more
    than 100 tolerances is used; none is a failure of the witness."""
    if shift_invariant == "yes":
        return
    beta = spec.coefficients.get("beta", spec.coefficients.get("tau", 1.0))
    lengths = (torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64), torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64))
    change = 0.0
    for unit, size in ((1 / beta, 1.0), (1 / beta, min(1.0, 1 / beta)), (1.0, 1.0), (1.0, min(1.0, 1 / beta))):
        pc = torch.tensor([-2.0, -3.0, -1.0], dtype=torch.float64) * size
        pr = torch.tensor([-2.5, -2.0, -4.0], dtype=torch.float64) * size
        rc = pc - torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) * unit  # rho_w = (0, 1, 2) unit
        rr = (
            pr - torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64) * unit
        )  # rho_l: sorted pairing differs once shifted
        shift = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) * unit
        rows = _rows((pc, pr, rc, rr), lengths)
        moved = _rows((pc + shift, pr + shift, rc, rr), lengths)
        change = max(abs(float(a - b)) for a, b in zip(spec.losses(moved), spec.losses(rows)))
        tol = max(value_tolerance(spec, moved, spec.losses(moved), torch.float64))
        if change > 100 * tol:
            check_shift(fn, spec, shift_invariant, (pc, pr, rc, rr), lengths, shift)
            return
    raise PropertyViolation(f"{spec.describe()}: the witness of non-invariance moves the loss by only {change!r}")


def _at(fn, spec, reference, lengths, r_w, r_l):
    """Losses and (dL/dpc, dL/dpr) at log-ratios (rho_w, rho_l) over the given reference log-probs."""
    rc, rr = (t.double() for t in reference)
    pc = (rc + r_w).requires_grad_(True)
    pr = (rr + r_l).requires_grad_(True)
    out = _call(fn, (pc, pr, rc, rr), lengths, f"{spec.describe()} optimum")
    gpc, gpr = torch.autograd.grad(out.sum(), (pc, pr))
    return out.detach(), gpc, gpr


def check_optimum(fn: FamilyFn, spec: FamilySpec, optimum: dict | None, reference, lengths, delta: float) -> None:
    """At the registry's optimum the gradient vanishes and the loss is a strict minimum at +-delta.

    "margin" (h, or h_bar for a length-normalised loss) and "chosen_logratio"/"rejected_logratio" (the
    log-ratio each is pushed to; a rejected side without a finite optimum must keep a positive gradient)."""
    if not optimum or "margin_at_least" in optimum:
        return
    rc, rr = reference
    B = rc.shape[0]
    ones = torch.ones(B, dtype=torch.float64)
    nc = lengths[0].double() if lengths is not None and spec.record.length_normalised else ones
    if "margin" in optimum:
        w_star, l_star, free_l = optimum["margin"] * nc, 0.0 * ones, False
        move_w, move_l = nc, 0.0 * ones
    else:
        w_star = optimum["chosen_logratio"] * ones
        free_l = "rejected_logratio" not in optimum
        # a free rejected side sits at beta rho_l = -1, where its push (beta sigma(beta rho_l)/2) is visible
        l_star = (-1.0 / spec.coefficients.get("beta", 1.0) if free_l else optimum["rejected_logratio"]) * ones
        move_w, move_l = ones, (0.0 if free_l else 1.0) * ones
    out_star, gpc, gpr = _at(fn, spec, reference, lengths, w_star, l_star)
    scale = rc.abs().double() + rr.abs().double() + w_star.abs() + l_star.abs() + 1.0
    tol = TOLERANCE_K * _eps(torch.float64) * 4.0 * scale * max(1.0, spec.coefficients.get("beta", 1.0)) ** 2
    what = f"{spec.describe()} optimum {optimum}"
    _compare(gpc.tolist(), [0.0] * B, tol.tolist(), what + ": dL/d policy_chosen_logps")
    if free_l:
        if not bool((gpr > 0).all()):
            raise PropertyViolation(f"{what}: the rejected log-prob must keep being pushed down, got dL/dpr = {gpr}")
    else:
        _compare(gpr.tolist(), [0.0] * B, tol.tolist(), what + ": dL/d policy_rejected_logps")
    for sign in (-1.0, 1.0):
        out, _, _ = _at(fn, spec, reference, lengths, w_star + sign * delta * move_w, l_star + sign * delta * move_l)
        if not bool((out > out_star).all()):
            raise PropertyViolation(f"{what}: not a strict minimum, L at {sign * delta:+g} = {out} <= {out_star}")


def check_noisy_ipo_optimum(fn: FamilyFn, spec: FamilySpec, eps: float, reference, lengths, delta: float) -> None:
    """IPO with labels flipped with probability eps: (1 - eps) L(h) + eps L(-h) is minimised at
    h* = (1 - 2 eps)/(2 tau) (zero derivative, strict minimum), evaluated through `fn` at h and at -h."""
    tau = spec.coefficients["tau"]
    rc, rr = (t.double() for t in reference)
    B = rc.shape[0]
    normalised = lengths is not None and spec.record.length_normalised
    nc = lengths[0].double() if normalised else torch.ones(B, dtype=torch.float64)
    nr = lengths[1].double() if normalised else torch.ones(B, dtype=torch.float64)
    swapped = (nr, nc) if lengths is not None else None

    def noisy(h: float) -> tuple[torch.Tensor, torch.Tensor]:
        r_w = (h * nc).requires_grad_(True)  # chosen log-ratio h n_w, rejected 0: h_bar = h
        clean = _call(fn, (rc + r_w, rr.clone(), rc, rr), lengths, "noisy IPO")
        flipped = _call(fn, (rr.clone(), rc + r_w, rr, rc), swapped, "noisy IPO")  # chosen/rejected swapped: -h
        total = (1 - eps) * clean + eps * flipped
        (g,) = torch.autograd.grad(total.sum(), r_w)
        return total.detach(), g * nc  # d/dh

    h_star = (1 - 2 * eps) / (2 * tau)
    at_star, g = noisy(h_star)
    tol = TOLERANCE_K * _eps(torch.float64) * 4 * (rc.abs() + rr.abs() + abs(h_star) * nc + 1.0) * nc
    _compare(g.tolist(), [0.0] * B, tol.tolist(), f"{spec.describe()} d/dh of the eps={eps} flip-noise IPO loss at h*")
    for h in (h_star - delta, h_star + delta):
        if not bool((noisy(h)[0] > at_star).all()):
            raise PropertyViolation(
                f"{spec.describe()}: flip-noise IPO loss at h* = {h_star!r} is not a strict minimum"
            )


def check_hinge_margin(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Hinge: loss and gradient are exactly 0 where beta h >= 1, and the loss is 1 - beta h > 0 with
    dL/dpc = -beta where beta h < 1 (rows within rounding of the kink are not judged)."""
    beta = spec.coefficients["beta"]
    out, grads = _grads(fn, batch, None, f"{spec.describe()} margin")
    rows = _rows(batch, None)
    eps = _eps(batch[0].dtype)
    for i, r in enumerate(rows):
        bh = beta * float(_h(*r[:4]))
        slack = TOLERANCE_K * eps * beta * (float(sum(abs(x) for x in r[:4])) + 1 / beta)
        if bh >= 1 + slack:
            if out[i].item() != 0.0 or any(g[i].item() != 0.0 for g in grads[:2]):
                raise PropertyViolation(
                    f"{spec.describe()}: beta h = {bh!r} >= 1 at index {i}, yet L = {out[i].item()!r}, "
                    f"dL/dpc = {grads[0][i].item()!r} (both must be exactly 0)"
                )
        elif bh <= 1 - slack:
            if not out[i].item() > 0 or not abs(grads[0][i].item() + beta) <= TOLERANCE_K * eps * beta:
                raise PropertyViolation(
                    f"{spec.describe()}: beta h = {bh!r} < 1 at index {i}: L = {out[i].item()!r} must be > 0 and "
                    f"dL/dpc = {grads[0][i].item()!r} must be -beta = {-beta!r}"
                )


def check_robust_unbiased(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], step: float) -> None:
    """Robust DPO: (1 - eps) L(h) + eps L(-h) = -log sigma(beta h) (the clean loss in expectation over flips),
    and L falls strictly in h everywhere (no finite minimiser): L(h + step) < L(h) where visible."""
    pc, pr, rc, rr = batch
    beta, e = spec.coefficients["beta"], spec.coefficients["label_smoothing"]
    clean = _call(fn, batch, None, "robust").detach().double()
    flipped = _call(fn, (pr, pc, rr, rc), None, "robust").detach().double()
    mix = ((1 - e) * clean + e * flipped).tolist()
    rows = _rows(batch, None)
    expected = [-_logsig(beta * _h(*r[:4])) for r in rows]
    tol = value_tolerance(spec, rows, spec.losses(rows), pc.dtype)
    tol = [t * (1 + 2 * e) / (1 - 2 * e) + 2 * TOLERANCE_K * _eps(pc.dtype) for t in tol]
    _compare(
        mix, [float(x) for x in expected], tol, f"{spec.describe()} (1-eps) L(h) + eps L(-h) vs -log sigma(beta h)"
    )
    ahead = _call(fn, (pc + step, pr, rc, rr), None, "robust").detach().double()
    fall = [float(a - b) for a, b in zip(spec.losses(_rows((pc + step, pr, rc, rr), None)), spec.losses(rows))]
    for i, (a, b, f) in enumerate(zip(ahead.tolist(), clean.tolist(), fall)):
        if -f > 4 * tol[i] and not a < b:
            raise PropertyViolation(
                f"{spec.describe()}: L did not fall from h to h + {step!r} at index {i}: {b} -> {a}"
            )


def check_bounds(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> None:
    """The loss stays within the variant's bounds (e.g. 0 <= EXO <= -log eps, 0 <= APO < 2)."""
    low, high = spec.record.bounds(spec.coefficients)
    out = _call(fn, batch, lengths, f"{spec.describe()} bounds").detach().double()
    rows = _rows(batch, lengths)
    tol = value_tolerance(spec, rows, spec.losses(rows), batch[0].dtype)
    for i, v in enumerate(out.tolist()):
        if (low is not None and not v >= low - tol[i]) or (high is not None and not v <= high + tol[i]):
            raise PropertyViolation(f"{spec.describe()}: L = {v!r} at index {i} outside [{low}, {high}]")


def check_finite(fn: FamilyFn, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> None:
    """Losses and gradients are finite wherever the formula is (extreme margins included)."""
    rows = _rows(batch, lengths)
    expected = spec.losses(rows)
    out, grads = _grads(fn, batch, lengths, f"{spec.describe()} finiteness")
    for i, e in enumerate(expected):
        if mp.isfinite(e) and abs(e) < 1e300 and not math.isfinite(out[i].item()):
            raise PropertyViolation(f"{spec.describe()}: L = {out[i].item()!r} at index {i}, expected {float(e)!r}")
    for g in grads[:2]:
        if not bool(torch.isfinite(g).all()):
            raise PropertyViolation(f"{spec.describe()}: non-finite gradient {g.tolist()}")


def check_batch_structure(fn: FamilyFn, spec: FamilySpec, batch, lengths, perm: torch.Tensor) -> None:
    """Per-example variants: permuting the batch permutes the losses. AOT: the quantile losses do not move.
    SFT: every share is rescaled by the same batch mean length (checked by `check_values`)."""
    base = _call(fn, batch, lengths, "batch").detach().double()
    permuted_lengths = tuple(t[perm] for t in lengths) if lengths is not None else None
    out = _call(fn, tuple(t[perm] for t in batch), permuted_lengths, "batch").detach().double()
    quantiles = spec.record.quantile_key is not None  # one loss per quantile: permuting moves nothing
    want = base if quantiles else base[perm]
    rows = _rows(batch, lengths)
    tol = value_tolerance(spec, rows, spec.losses(rows), batch[0].dtype)
    if not quantiles:
        tol = [tol[j] for j in perm.tolist()]
    _compare(out.tolist(), want.tolist(), tol, f"{spec.describe()} losses after permuting the batch by {perm.tolist()}")


def check_rewards(fn: Callable, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> None:
    """Implicit rewards returned beside the loss equal the variant's (the registry's `rewards`: beta (log pi -
    log pi_ref) for chosen and rejected unless the variant defines its own, e.g. SimPO's beta log pi / n).

    `fn(pc, pr, rc, rr, nc, nr) -> (chosen_rewards, rejected_rewards)`. When they differ, the message says what
    they are instead (without the coefficient, policy only, exchanged, not length-normalised)."""
    B = batch[0].shape[0]
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    args = tuple(lengths) if lengths is not None else (None, None)
    chosen, rejected = fn(*leaves, *args)
    x = [t.detach().double() for t in batch]
    n = [t.double() for t in lengths] if lengths is not None else [torch.ones(B, dtype=torch.float64)] * 2
    c = dict(spec.coefficients)
    define = spec.record.rewards[0]  # the variant's own; any of `rewards` is accepted
    expected = torch.stack(define(*x, *n, c))  # (2, B)
    got = []
    for r, name in ((chosen, "chosen_rewards"), (rejected, "rejected_rewards")):
        if not isinstance(r, torch.Tensor) or r.numel() != B:
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise PropertyViolation(f"{name}: expected a tensor of {B} rewards, got {shape}")
        got.append(r.detach().double().reshape(B))
    got = torch.stack(got)  # (2, B)
    k = abs(c.get("beta", c.get("tau", 1.0)))
    size = torch.stack([x[0].abs() + x[2].abs(), x[1].abs() + x[3].abs()])
    tol = TOLERANCE_K * _eps(batch[0].dtype) * (k * size + expected.abs() + 1)
    for accepted in spec.record.rewards:
        if bool(((got - torch.stack(accepted(*x, *n, c))).abs() <= tol).all()):
            return
    bad = ~((got - expected).abs() <= tol)
    key = "beta" if "beta" in c else "tau"
    alternatives = {
        f"without the coefficient ({key} taken as 1)": torch.stack(define(*x, *n, {**c, key: 1.0})),
        f"{key} squared": torch.stack(define(*x, *n, {**c, key: c[key] ** 2})),
        "chosen and rejected exchanged": expected.flip(0),
        "beta (log pi - log pi_ref)": torch.stack(V.scaled_logratios(*x, *n, c)),
        "beta log pi (no reference)": torch.stack([k * x[0], k * x[1]]),
        "beta (log pi - log pi_ref) / n (length-normalised)": torch.stack(V.scaled_logratios(*x, *n, c))
        / torch.stack(n),
        "not length-normalised": torch.stack(define(*x, torch.ones(B), torch.ones(B), c)),
    }
    what = next(
        (name for name, alt in alternatives.items() if bool(((got - alt).abs() <= tol).all())),
        "none of the usual alternatives",
    )
    i_k, i = (int(v) for v in bad.nonzero()[0])
    raise PropertyViolation(
        f"{spec.describe()} {('chosen', 'rejected')[i_k]}_rewards at index {i}: got {got[i_k, i].item()!r}, expected "
        f"{expected[i_k, i].item()!r} = {_reward_formula(define, key)}; the rewards are {what}",
        float((got[i_k, i] - expected[i_k, i]).abs() / max(abs(expected[i_k, i].item()), tol[i_k, i].item())),
        i_k * B + i,
    )


def _reward_formula(define: Callable, key: str) -> str:
    if define is V.simpo_rewards:
        return "beta log pi / n"
    if define is V.normalised_logratios:
        return f"{key} * (log pi - log pi_ref) / n (or TRL's unnormalised {key} * (log pi - log pi_ref))"
    return f"{key} * (log pi - log pi_ref)"


def check_rewards_detached(fn: Callable, spec: FamilySpec, batch: tuple[torch.Tensor, ...], lengths=None) -> None:
    """Returned implicit rewards carry no autograd graph (metrics: logging them must not keep it alive)."""
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    args = tuple(lengths) if lengths is not None else (None, None)
    for r, name in zip(fn(*leaves, *args), ("chosen_rewards", "rejected_rewards")):
        if isinstance(r, torch.Tensor) and r.requires_grad:
            raise PropertyViolation(
                f"{name} carry a gradient: implicit rewards are metrics and should be detached (.detach())"
            )
