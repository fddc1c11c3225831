"""The mathematical properties of DPO / cDPO / IPO as checks on any loss implementation.

Each `check_*` takes a *per-example loss function* `fn(pc, pr, rc, rr) -> (B,)` (coefficients already
bound), a `LossSpec` saying which loss it claims to be, and concrete inputs; it returns None or raises
`PropertyViolation` (an AssertionError) saying what was expected and what came out. The test suite
drives these checks with Hypothesis over `dpo_ref.checks.strategies`; the conformance oracle runs the same
checks on third-party code.

Expected values come from the closed forms in float64 (`LossSpec.losses`, `LossSpec.dloss_dmargin`), written
here again from the papers and evaluated another way than `dpo_ref.losses` does (-log sigma(z) as
logaddexp(0, -z), not logsigmoid), so the suite's checks of dpo_ref's own losses are not circular (the registry's
mpmath references check these closed forms in turn: tests/checks/test_properties.py); gradients are compared with their
closed form, derived in `proofs/` (dL/dh):

    DPO/cDPO  dL/dh = -beta [(1 - eps) sigma(-beta h) - eps sigma(beta h)]
    IPO       dL/dh = 2 (h - 1/(2 tau))

and dL/d log pi(y_w) = dL/dh, dL/d log pi(y_l) = -dL/dh.

Tolerance. The verdict asks "does it compute the stated formula?", not "in which precision?": an
implementation may legitimately compute in float32 even when handed float64 (a fused LM head, a
`.float()` cast), so the rounding unit allowed is u = max(eps_dtype, eps_float32), and eps_dtype alone
under `strictness(True)` (the oracle's --strict). From first principles, with S = sum of the |inputs|:
  - rounding the four inputs and forming h costs at most ~4 u S in h, hence |dL/dh| 4 u S in L;
  - the loss's own rounding costs u |L|, plus an absolute u for values near 0;
  - exact rewritings that form the two implicit rewards beta (log pi - log pi_ref) and then combine
    them (two-class cross-entropy, logaddexp, BCE with soft targets 1 - eps) lose u times their size,
    beta (|pc - rc| + |pr - rr|), which also bounds eps's conditioning |dL/d eps| = beta |h|;
  - standard approximations stay inside: F.softplus's threshold 20 errs by < e^-20 |L| / 20.
We allow
    |L - L_expected| <= K u (|dL/dh| S + |L_expected| + 1 + beta (|pc - rc| + |pr - rr|)),   K = 16
(the reward term is absent for IPO), which a formula error (a missing beta, a wrong sign, a lost
reference, half-precision margins) exceeds. How close to float64 an implementation actually is gets
measured separately (`Precision`): the worst error in units of the float64 bound (K eps_float64 times
the same scale), reported by the oracle as a grade.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dpo_ref.logps import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TOLERANCE_K = 16.0
EPS_FLOAT32 = torch.finfo(torch.float32).eps
EPS_FLOAT64 = torch.finfo(torch.float64).eps
_STRICT: contextvars.ContextVar[bool] = contextvars.ContextVar("dpo_ref_strict", default=False)


@contextlib.contextmanager
def strictness(strict: bool) -> Iterator[None]:
    """Within the block, tolerances use the input dtype's own eps (float64-exact arithmetic demanded)."""
    token = _STRICT.set(bool(strict))
    try:
        yield
    finally:
        _STRICT.reset(token)


def verdict_eps(dtype: torch.dtype) -> float:
    """The rounding unit a conforming implementation may work at (see the module docstring)."""
    eps = torch.finfo(dtype).eps
    return eps if _STRICT.get() else max(eps, EPS_FLOAT32)


@dataclass(frozen=True)
class Precision:
    """How far from the closed form an implementation was, measured on float64 inputs.

    `units`: the worst |L - L_expected| in units of the float64 bound K eps_float64 (scale); <= 1 is
    float64-exact, <= eps_float32 / eps_float64 (2^29) is float32-level. `relative`: the worst
    |L - L_expected| / max(|L_expected|, 1) (absolute for values below 1, where a relative error means little).
    """

    units: float = 0.0
    relative: float = 0.0

    def worst(self, other: Precision | None) -> Precision:
        if other is None:
            return self
        return Precision(max(self.units, other.units), max(self.relative, other.relative))

    @property
    def grade(self) -> str:
        if self.units <= 1.0:
            return "float64-exact"
        if self.units <= EPS_FLOAT32 / EPS_FLOAT64:
            return "float32-level"
        return "worse than float32"


def measure(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> Precision:
    """The `Precision` of `actual` against float64 `expected`, given the per-example tolerance scale."""
    diff = (actual.detach().double() - expected).abs()
    diff = torch.where(actual.detach().double() == expected, torch.zeros_like(diff), diff)  # equal infinities
    units = diff / (TOLERANCE_K * EPS_FLOAT64 * scale)
    relative = diff / expected.abs().clamp_min(1.0)
    return Precision(float(units.max()), float(relative.max()))


class PropertyViolation(AssertionError):
    """A loss implementation broke a property; the message says which and how.

    `disagreement` is the relative size of a numeric miss, |got - expected| / max(|expected|, tolerance)
    (infinite for a wrong sign, shape, NaN or other qualitative failure): the oracle uses it to prefer
    a reproduction on which the disagreement is plain to see.
    """

    def __init__(self, message: str, disagreement: float = math.inf, index: int | None = None, tol: float = 0.0):
        super().__init__(message)
        self.disagreement = disagreement
        self.index = index  # the failing example (or row), when one is singled out
        self.tol = tol  # the tolerance it missed, for a reproduction's own assertion


def preference_margin(pc, pr, rc, rr):
    """h = (pc - rc) - (pr - rr): the checks' own margin (float64 when given float64)."""
    return (pc - rc) - (pr - rr)


def _neg_logsigmoid(z: torch.Tensor) -> torch.Tensor:
    """-log sigma(z) = log(1 + e^-z), as logaddexp(0, -z) (dpo_ref.losses uses logsigmoid: another evaluation)."""
    return torch.logaddexp(torch.zeros_like(z), -z)


@dataclass(frozen=True)
class LossSpec:
    """Which loss an implementation claims to compute: `variant` in {dpo, cdpo, ipo} and its coefficients."""

    variant: str
    beta: float = 0.1  # KL coefficient (dpo, cdpo)
    label_smoothing: float = 0.0  # eps (cdpo)
    tau: float = 0.1  # IPO regularisation

    def __post_init__(self) -> None:
        if self.variant not in ("dpo", "cdpo", "ipo"):
            raise ValueError(f"variant must be one of dpo, cdpo, ipo, got {self.variant!r}")

    @property
    def coefficient(self) -> float:
        """The scale of the margin inside the loss: beta, or tau for IPO (the `beta` argument of most APIs)."""
        return self.tau if self.variant == "ipo" else self.beta

    @property
    def coefficients(self) -> dict[str, float]:
        """The coefficients by name, as the registry (`dpo_ref.variants`) and a target's keywords name them."""
        if self.variant == "ipo":
            return {"tau": self.tau}
        if self.variant == "cdpo":
            return {"beta": self.beta, "label_smoothing": self.label_smoothing}
        return {"beta": self.beta}

    @property
    def eps(self) -> float:
        return self.label_smoothing if self.variant == "cdpo" else 0.0

    def losses(self, margin: torch.Tensor) -> torch.Tensor:
        """Expected per-example loss as a function of the margin h (float64)."""
        margin = margin.double()
        if self.variant == "ipo":
            return (margin - self.target_margin) ** 2  # Azar et al. 2023, Eq. 17
        z = self.beta * margin  # Rafailov et al. 2023, Eq. 7; cDPO's labels flipped with probability eps
        return (1.0 - self.eps) * _neg_logsigmoid(z) + self.eps * _neg_logsigmoid(-z)

    @property
    def target_margin(self) -> float:
        """IPO's per-pair target 1/(2 tau)."""
        return 1.0 / (2.0 * self.tau)

    def dloss_dmargin(self, margin: torch.Tensor) -> torch.Tensor:
        """Closed-form dL/dh (float64)."""
        margin = margin.double()
        if self.variant == "ipo":
            return 2.0 * (margin - self.target_margin)
        b, e = self.beta, self.eps
        return -b * ((1.0 - e) * torch.sigmoid(-b * margin) - e * torch.sigmoid(b * margin))

    def dloss_dmargin_scale(self, margin: torch.Tensor) -> torch.Tensor:
        """The size of the terms dL/dh is computed from (float64): where they cancel (cDPO near h*, IPO near
        1/(2 tau)) a correct implementation's error is relative to these, not to dL/dh itself."""
        margin = margin.double()
        if self.variant == "ipo":
            return 2.0 * (margin.abs() + self.target_margin)
        b, e = self.beta, self.eps
        return b * ((1.0 - e) * torch.sigmoid(-b * margin) + e * torch.sigmoid(b * margin))

    def optimum(self) -> float | None:
        """The finite per-pair minimiser h*, or None for DPO (L decreases to 0 as h -> inf)."""
        if self.variant == "ipo":
            return self.target_margin
        if self.variant == "cdpo" and self.eps > 0:
            return math.log((1.0 - self.eps) / self.eps) / self.beta
        return None

    def value_at_init(self) -> float:
        """L at pi = pi_ref (h = 0): ln 2 for DPO and cDPO, 1/(4 tau^2) for IPO."""
        return 1.0 / (4.0 * self.tau**2) if self.variant == "ipo" else math.log(2.0)

    def describe(self) -> str:
        if self.variant == "ipo":
            return f"ipo(tau={self.tau!r})"
        if self.variant == "cdpo":
            return f"cdpo(beta={self.beta!r}, label_smoothing={self.label_smoothing!r})"
        return f"dpo(beta={self.beta!r})"


def tolerance_scale(spec: LossSpec, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-example scale of the rounding error a correct implementation may make (module docstring), (B,)."""
    x = [t.detach().double() for t in inputs]
    total = sum(t.abs() for t in x)  # (B,)
    margin = preference_margin(*x)
    scale = spec.dloss_dmargin(margin).abs() * total + spec.losses(margin).abs() + 1.0
    if spec.variant != "ipo":
        pc, pr, rc, rr = x
        scale = scale + spec.beta * ((pc - rc).abs() + (pr - rr).abs())
    return scale


def tolerance(spec: LossSpec, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """Per-example absolute tolerance for an implementation handed `dtype` inputs (see module docstring)."""
    return TOLERANCE_K * verdict_eps(dtype) * tolerance_scale(spec, inputs)


def _as_vector(out: object, size: int, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise PropertyViolation(f"{what}: expected a tensor of per-example losses, got {type(out).__name__}")
    if out.shape != (size,):
        raise PropertyViolation(f"{what}: expected per-example losses of shape ({size},), got {tuple(out.shape)}")
    return out


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    actual = actual.detach().double()
    bad = ~((actual == expected) | ((actual - expected).abs() <= tol))  # equal infinities agree; NaN is bad
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        got, want, t = actual[i].item(), expected[i].item(), tol[i].item()
        diff = abs(got - want)
        disagreement = diff / max(abs(want), t) if math.isfinite(diff) else math.inf
        raise PropertyViolation(
            f"{what}: at index {i} got {got!r}, expected {want!r} (|diff| {diff:.3g} > tolerance {t:.3g})",
            disagreement,
            i,
            t,
        )


def grad_leaves(inputs: tuple[torch.Tensor, ...], references_require_grad: bool) -> tuple[torch.Tensor, ...]:
    """Fresh leaves for (pc, pr, rc, rr[, ...]): the policy log-probs require grad; the references only when
    asked. Trainers pass references that do not (computed under `torch.no_grad()` or precomputed), so a loss
    must be right both ways; the gradient checks call it both ways."""
    return tuple(
        t.detach().clone().requires_grad_(k < 2 or references_require_grad) if k < 4 else t
        for k, t in enumerate(inputs)
    )


def without_grad_note(what: str, references_require_grad: bool) -> str:
    return what if references_require_grad else f"{what} (references without grad, as trainers pass them)"


def _losses_and_grads(
    fn: LossFn, inputs: tuple[torch.Tensor, ...], what: str, references_require_grad: bool = True
) -> tuple[torch.Tensor, ...]:
    """Per-example losses and d(sum of losses)/d(each input) (zeros where an input does not require grad)."""
    leaves = grad_leaves(inputs, references_require_grad)
    out = _as_vector(fn(*leaves), leaves[0].shape[0], what)
    if not out.requires_grad:
        raise PropertyViolation(f"{what}: the losses do not depend differentiably on the policy log-probs")
    wrt = [t for t in leaves if t.requires_grad]
    found = iter(torch.autograd.grad(out.sum(), wrt, allow_unused=True))
    grads = tuple((next(found) if t.requires_grad else None) for t in leaves)
    grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves))
    return (out, *grads)


def check_values(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> Precision:
    """L_i equals the closed form of the margin h_i, within the dtype's tolerance; returns the precision seen."""
    dtype = batch[0].dtype
    out = _as_vector(fn(*batch), batch[0].shape[0], f"{spec.describe()} values")
    margin = preference_margin(*(t.double() for t in batch))
    expected = spec.losses(margin)
    _close(out, expected, tolerance(spec, batch, dtype), f"{spec.describe()} loss value")
    return measure(out, expected, tolerance_scale(spec, batch))


def check_gradients(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Autograd gradients equal the closed form: dL/dpc = dL/dh = -dL/dpr = -dL/drc = dL/drr."""
    dtype = batch[0].dtype
    margin = preference_margin(*(t.double() for t in batch))
    slope = spec.dloss_dmargin(margin)
    curvature = spec.beta**2 / 4 if spec.variant != "ipo" else 2.0
    tol = (
        TOLERANCE_K
        * verdict_eps(dtype)
        * (spec.dloss_dmargin_scale(margin) + curvature * sum(t.detach().double().abs() for t in batch) + 1e-3)
    )
    for with_grad in (True, False):
        what = without_grad_note(f"{spec.describe()} gradients", with_grad)
        _, gpc, gpr, grc, grr = _losses_and_grads(fn, batch, what, with_grad)
        for grad, sign, name in ((gpc, 1, "policy_chosen"), (gpr, -1, "policy_rejected")):
            _close(grad, sign * slope, tol, without_grad_note(f"{spec.describe()} dL/d{name}_logps", with_grad))
        for grad, sign, name in ((grc, -1, "reference_chosen"), (grr, 1, "reference_rejected")):
            if grad.abs().sum() > 0:  # a reference passed without grad support may legitimately give None
                _close(grad, sign * slope, tol, f"{spec.describe()} dL/d{name}_logps")


def check_gradient_signs(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """DPO: dL/d log pi(y_w) < 0 < dL/d log pi(y_l), equal in size, = beta sigma(-beta h) / B for the mean."""
    B = batch[0].shape[0]
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    out = _as_vector(fn(*leaves), B, f"{spec.describe()} gradient signs")
    gpc, gpr = torch.autograd.grad(out.mean(), leaves[:2])
    margin = preference_margin(*(t.double() for t in batch))
    expected = spec.beta * torch.sigmoid(-spec.beta * margin) / B  # (B,)
    tol = (
        TOLERANCE_K * verdict_eps(batch[0].dtype) * (expected + spec.beta**2 * sum(t.double().abs() for t in batch) / B)
    )
    visible = expected > tol  # sigma(-beta h) underflows for large beta h: the sign is then unobservable
    if bool((gpc.double()[visible] >= 0).any()) or bool((gpr.double()[visible] <= 0).any()):
        i = int((visible & ((gpc.double() >= 0) | (gpr.double() <= 0))).nonzero()[0, 0])
        raise PropertyViolation(
            f"{spec.describe()} gradient signs: at index {i} dL/d policy_chosen = {gpc[i].item()!r} "
            f"(must be < 0) and dL/d policy_rejected = {gpr[i].item()!r} (must be > 0)"
        )
    _close(-gpc, expected, tol, f"{spec.describe()} -dL/d policy_chosen_logps under mean reduction")
    _close(gpr, expected, tol, f"{spec.describe()} dL/d policy_rejected_logps under mean reduction")


def check_z_cancellation(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...], shift: torch.Tensor) -> None:
    """Adding a per-prompt constant f(x) to both rewards (both policy log-probs) changes nothing.

    r(x, y) and r(x, y) + f(x) induce the same Bradley-Terry preferences, so Z(x) (and any f(x))
    must cancel: losses and gradients at (pc + f, pr + f, rc, rr) equal those at (pc, pr, rc, rr).
    """
    pc, pr, rc, rr = batch
    shifted = (pc + shift.to(pc.dtype), pr + shift.to(pr.dtype), rc, rr)
    base = _losses_and_grads(fn, batch, f"{spec.describe()} Z(x) cancellation")
    moved = _losses_and_grads(fn, shifted, f"{spec.describe()} Z(x) cancellation")
    for t, name in zip(base, ("loss", "dL/d policy_chosen_logps", "dL/d policy_rejected_logps")):
        if not bool(torch.isfinite(t).all()):  # compared with itself, a NaN would read "got nan, expected nan"
            i = int((~torch.isfinite(t)).nonzero()[0, 0])
            raise PropertyViolation(f"{spec.describe()} {name} is not finite at index {i} even before adding f(x)")
    dtype = batch[0].dtype
    tol = tolerance(spec, shifted, dtype) + tolerance(spec, batch, dtype)
    _close(moved[0], base[0].detach().double(), tol, f"{spec.describe()} loss after adding f(x) to both rewards")
    gtol = (
        TOLERANCE_K
        * verdict_eps(dtype)
        * (
            spec.dloss_dmargin_scale(preference_margin(*(t.double() for t in batch)))
            + (spec.beta**2 if spec.variant != "ipo" else 2.0) * sum(t.double().abs() for t in shifted)
            + 1e-3
        )
    )
    for k, name in ((1, "policy_chosen"), (2, "policy_rejected")):
        _close(moved[k], base[k].double(), gtol, f"{spec.describe()} dL/d{name}_logps after adding f(x)")


def check_init(fn: LossFn, spec: LossSpec, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> None:
    """At pi = pi_ref: L = ln 2 (DPO, cDPO) or 1/(4 tau^2) (IPO), and dL/dh = -beta/2 (DPO)."""
    batch = (policy_chosen, policy_rejected, policy_chosen.clone(), policy_rejected.clone())
    out, gpc, gpr, *_ = _losses_and_grads(fn, batch, f"{spec.describe()} at initialisation")
    dtype = policy_chosen.dtype
    expected = torch.full_like(out.detach().double(), spec.value_at_init())
    tol = TOLERANCE_K * verdict_eps(dtype) * (expected + 1.0)
    _close(out, expected, tol, f"{spec.describe()} loss at pi = pi_ref")
    slope = torch.full_like(expected, float(spec.dloss_dmargin(torch.zeros(1))[0]))
    stol = TOLERANCE_K * verdict_eps(dtype) * (spec.dloss_dmargin_scale(torch.zeros_like(expected)) + 1e-3)
    _close(gpc, slope, stol, f"{spec.describe()} dL/dh at pi = pi_ref")
    _close(-gpr, slope, stol, f"{spec.describe()} -dL/d policy_rejected at pi = pi_ref")


def check_swap(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Swapping chosen and rejected maps h to -h: L(swapped) equals the closed form at -h."""
    pc, pr, rc, rr = batch
    out = _as_vector(fn(pr, pc, rr, rc), pc.shape[0], f"{spec.describe()} swap")
    margin = preference_margin(*(t.double() for t in batch))
    _close(
        out,
        spec.losses(-margin),
        tolerance(spec, (pr, pc, rr, rc), pc.dtype),  # at the swapped point: the slope there sets the error
        f"{spec.describe()} loss with chosen/rejected swapped",
    )


def check_monotone(fn: LossFn, spec: LossSpec, margins: torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
    """DPO: the loss does not increase as h grows, and strictly falls where the closed form visibly does."""
    h = torch.sort(margins.double()).values
    zeros = torch.zeros_like(h)
    out = _as_vector(fn(h.to(dtype), zeros.to(dtype), zeros.to(dtype), zeros.to(dtype)), h.shape[0], "monotone")
    out = out.detach().double()
    expected = spec.losses(h)
    tol = TOLERANCE_K * verdict_eps(dtype) * (spec.dloss_dmargin(h).abs() * h.abs() + expected + 1.0)
    for i in range(h.shape[0] - 1):
        if out[i + 1] > out[i] + tol[i] + tol[i + 1]:
            raise PropertyViolation(
                f"{spec.describe()} loss increased with the margin: L(h={h[i].item()!r}) = {out[i].item()!r} "
                f"< L(h={h[i + 1].item()!r}) = {out[i + 1].item()!r}",
                index=i,
                tol=float(tol[i] + tol[i + 1]),
            )
        if expected[i] - expected[i + 1] > 2 * (tol[i] + tol[i + 1]) and not out[i + 1] < out[i]:
            raise PropertyViolation(
                f"{spec.describe()} loss did not fall from h={h[i].item()!r} to h={h[i + 1].item()!r}: "
                f"{out[i].item()!r} -> {out[i + 1].item()!r}",
                index=i,
                tol=float(tol[i] + tol[i + 1]),
            )


def check_optimum(fn: LossFn, spec: LossSpec, reference: tuple[torch.Tensor, torch.Tensor], delta: float) -> None:
    """IPO / cDPO: at h = h* the gradient vanishes, and no L(h* +- delta) is below L(h*) by more than rounding."""
    h_star = spec.optimum()
    if h_star is None:
        return
    rc, rr = (t.double() for t in reference)
    B = rc.shape[0]

    def at(h: float) -> tuple[torch.Tensor, torch.Tensor]:
        pc = (rc + h).requires_grad_(True)  # policy_rejected = reference_rejected, so margin = h
        out = _as_vector(fn(pc, rr.clone(), rc, rr), B, f"{spec.describe()} optimum")
        (g,) = torch.autograd.grad(out.sum(), pc)
        return out.detach(), g

    out_star, g_star = at(h_star)
    gtol = (
        TOLERANCE_K
        * verdict_eps(torch.float64)
        * (1.0 + (spec.beta**2 if spec.variant != "ipo" else 2.0))
        * (rc.abs() + rr.abs() + abs(h_star) + 1.0)
    )
    _close(g_star, torch.zeros(B, dtype=torch.float64), gtol, f"{spec.describe()} dL/dh at h* = {h_star!r}")
    # A neighbour counts against h* only if it is lower by more than the rounding both values may carry: a
    # float32 implementation fed log-probs of size 1e4 resolves h only to ~1e-3, so L(h*) and L(h* - delta) can
    # round to the same float there (a wrong optimum shows in the gradient at h*, checked above).
    tol_star = tolerance(spec, (rc + h_star, rr, rc, rr), torch.float64)
    for h in (h_star - delta, h_star + delta):
        out_h, _ = at(h)
        lower = out_h < out_star - (tol_star + tolerance(spec, (rc + h, rr, rc, rr), torch.float64))
        if bool(lower.any()):
            i = int(lower.nonzero()[0, 0])
            raise PropertyViolation(
                f"{spec.describe()}: h* = {h_star!r} is not a strict minimum: L(h*) = {out_star[i].item()!r} "
                f"but L({h!r}) = {out_h[i].item()!r} at index {i}"
            )


def check_permutation(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...], perm: torch.Tensor) -> None:
    """Permuting the batch permutes the per-example losses the same way."""
    out = _as_vector(fn(*batch), batch[0].shape[0], f"{spec.describe()} permutation")
    permuted = _as_vector(fn(*(t[perm] for t in batch)), batch[0].shape[0], f"{spec.describe()} permutation")
    tol = tolerance(spec, batch, batch[0].dtype)[perm]
    _close(permuted, out.detach().double()[perm], 2 * tol, f"{spec.describe()} loss of the permuted batch")


def check_independence(
    fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...], other: tuple[torch.Tensor, ...], index: int
) -> None:
    """Changing example `index` leaves every other example's loss unchanged."""
    out = _as_vector(fn(*batch), batch[0].shape[0], f"{spec.describe()} independence")
    changed = tuple(t.clone() for t in batch)
    for t, o in zip(changed, other):
        t[index] = o[index % o.shape[0]].to(t.dtype)
    out2 = _as_vector(fn(*changed), batch[0].shape[0], f"{spec.describe()} independence").detach().double()
    keep = torch.ones(batch[0].shape[0], dtype=torch.bool)
    keep[index] = False
    tol = 2 * tolerance(spec, batch, batch[0].dtype)
    _close(
        out2[keep], out.detach().double()[keep], tol[keep], f"{spec.describe()} loss of other examples when one changes"
    )


def check_finite(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Values and gradients are finite wherever the inputs are (no log(sigmoid(x)) underflow)."""
    out, *grads = _losses_and_grads(fn, batch, f"{spec.describe()} finiteness")
    for t, name in zip((out, *grads), ("loss", "dL/dpc", "dL/dpr", "dL/drc", "dL/drr")):
        if not bool(torch.isfinite(t).all()):
            i = int((~torch.isfinite(t)).nonzero()[0, 0])
            raise PropertyViolation(
                f"{spec.describe()} {name} is not finite at index {i}: {t[i].item()!r} "
                f"(margin h = {preference_margin(*(x.double() for x in batch))[i].item()!r})"
            )


def check_inputs_unmodified(fn: LossFn, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """The implementation does not write into its inputs."""
    copies = tuple(t.detach().clone() for t in batch)
    fn(*batch)
    for t, c, name in zip(
        batch, copies, ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected")
    ):
        if not torch.equal(t.detach(), c):
            raise PropertyViolation(f"{spec.describe()} modified its input {name}_logps in place")


# ---------------------------------------------------------------------------------------------------
# Log-prob level: fn(logits (B, T, V), labels (B, T)) -> (B,)

LogpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loop_sequence_logps(rows: list[tuple[torch.Tensor, torch.Tensor]], average: bool = False) -> torch.Tensor:
    """Independent float64 reference: a plain loop over the unpadded rows and their scored tokens.

    For each row (labels (L,), logits (L, V)) sum, over t >= 1 with labels[t] scored, of
    logits[t-1, labels[t]] - log(sum_v exp(logits[t-1, v])), with the log-sum-exp done by `math`.
    """
    out = []
    for labels, logits in rows:
        total, count = 0.0, 0
        for t in range(1, labels.shape[0]):
            y = int(labels[t])
            if y == IGNORE_INDEX:
                continue
            z = [float(v) for v in logits[t - 1]]
            m = max(z)
            total += z[y] - (m + math.log(sum(math.exp(v - m) for v in z)))
            count += 1
        out.append(total / count if average else total)
    return torch.tensor(out, dtype=torch.float64)


def logps_tolerance_scale(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-row error scale of a correct scorer: 4 n (max |logit| + 1) + 1 for n scored tokens, (B,).

    Each token's log-softmax rounds at the size of the logits (x - logsumexp(x): a few roundings of
    max |logit| + log V, bounded by 4 (max |logit| + 1) for the vocabularies drawn), and the sum of n of
    them adds n such errors; an average divides value and error alike, so the same bound holds.
    """
    scale = []
    for labels, logits in rows:
        scored = int((labels[1:] != IGNORE_INDEX).sum())
        scale.append(scored * (float(logits.abs().max()) + 1.0) * 4 + 1.0)
    return torch.tensor(scale, dtype=torch.float64)


def logps_tolerance(rows: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """Per-row tolerance: K u (4 n (max |logit| + 1) + 1), u as for the losses (float32 unless strict)."""
    return TOLERANCE_K * verdict_eps(dtype) * logps_tolerance_scale(rows)


def check_logps_values(fn: LogpsFn, batch, average: bool = False, dtype: torch.dtype = torch.float64) -> Precision:
    """fn(logits, labels) equals the loop reference (shift by one, prompt and padding masked)."""
    logits, labels = batch.padded(dtype=dtype)
    out = _as_vector(fn(logits, labels), logits.shape[0], "sequence log-probs")
    rows = [(lab, lg.to(dtype).double()) for lab, lg in batch.rows]
    expected = loop_sequence_logps(rows, average)
    _close(out, expected, logps_tolerance(rows, dtype), "sequence log-prob")
    return measure(out, expected, logps_tolerance_scale(rows))


def check_logps_padding(fn: LogpsFn, batch, dtype: torch.dtype = torch.float64) -> None:
    """Left padding, right padding and extra padding all give the same log-probs."""
    results = {}
    for side in ("left", "right"):
        for extra in (0, 2):
            logits, labels = batch.padded(side, extra, dtype=dtype)
            results[(side, extra)] = _as_vector(fn(logits, labels), logits.shape[0], "sequence log-probs")
    base = results[("right", 0)].detach().double()
    tol = 2 * logps_tolerance(batch.rows, dtype)
    for (side, extra), out in results.items():
        _close(out, base, tol, f"sequence log-prob with {side} padding and {extra} extra pad positions vs right/0")


def check_logps_gradients(fn: LogpsFn, batch, average: bool = False) -> None:
    """d logps[b] / d logits[b, t, v] = [v == y_{t+1}] - softmax(logits[b, t])_v on scored positions, else 0.

    With `average`, divided by the row's number of scored tokens.
    """
    logits, labels = batch.padded()
    logits = logits.requires_grad_(True)
    out = _as_vector(fn(logits, labels), logits.shape[0], "sequence log-prob gradients")
    if not out.requires_grad:
        raise PropertyViolation("sequence log-probs do not depend differentiably on the logits")
    (grad,) = torch.autograd.grad(out.sum(), logits, allow_unused=True)
    grad = torch.zeros_like(logits) if grad is None else grad
    expected = torch.zeros_like(logits, dtype=torch.float64)
    probs = torch.softmax(logits.detach().double(), dim=-1)
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y != IGNORE_INDEX:
                expected[b, t] = -probs[b, t]
                expected[b, t, y] += 1.0
        if average:
            expected[b] /= max(1, int((labels[b, 1:] != IGNORE_INDEX).sum()))
    # softmax(x)_v = exp(x_v - logsumexp(x)) rounds at the size of its exponent: relative u (max|x| + 1)
    tol = TOLERANCE_K * verdict_eps(logits.dtype) * (logits.detach().double().abs().amax(dim=(1, 2)) + 1.0)  # (B,)
    diff = (grad.double() - expected).abs().amax(dim=(1, 2))  # (B,)
    bad = ~(diff <= tol)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise PropertyViolation(
            f"sequence log-prob gradient of row {b} differs from one-hot minus softmax by {diff[b].item():.3g} "
            f"(tolerance {tol[b].item():.3g})",
            diff[b].item() / max(float(expected[b].abs().max()), tol[b].item()),
        )


def check_reduction(
    fn: Callable[..., torch.Tensor], spec: LossSpec, batch: tuple[torch.Tensor, ...], reduction: str
) -> None:
    """A loss reduced to a scalar equals the mean (or sum) of the closed-form per-example losses, with the
    gradients of that mean (slope / B) or sum (slope); `fn(pc, pr, rc, rr)` returns the scalar."""
    B = batch[0].shape[0]
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    out = fn(*leaves)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PropertyViolation(f"{spec.describe()} {reduction} reduction: expected a scalar, got {shape}")
    scale = 1.0 / B if reduction == "mean" else 1.0
    margin = preference_margin(*(t.double() for t in batch))
    expected = spec.losses(margin).sum().reshape(1) * scale
    tol = tolerance(spec, batch, batch[0].dtype).sum().reshape(1) * scale
    _close(out.reshape(1), expected, tol, f"{spec.describe()} {reduction} of the per-example losses over the batch")
    if not out.requires_grad:
        raise PropertyViolation(f"{spec.describe()}: the reduced loss does not depend differentiably on the inputs")
    gpc, gpr = (
        torch.zeros_like(t) if g is None else g
        for g, t in zip(torch.autograd.grad(out.reshape(()), leaves[:2], allow_unused=True), leaves[:2])
    )
    slope = spec.dloss_dmargin(margin) * scale
    curvature = spec.beta**2 / 4 if spec.variant != "ipo" else 2.0
    gtol = (
        TOLERANCE_K
        * verdict_eps(batch[0].dtype)
        * (
            spec.dloss_dmargin_scale(margin) * scale
            + scale * curvature * sum(t.double().abs() for t in batch)
            + 1e-3 * scale
        )
    )
    _close(gpc, slope, gtol, f"{spec.describe()} d({reduction} loss)/d policy_chosen_logps")
    _close(gpr, -slope, gtol, f"{spec.describe()} d({reduction} loss)/d policy_rejected_logps")


def check_rewards(fn: Callable, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Implicit rewards returned beside the loss: c (log pi - log pi_ref) for chosen and rejected.

    `fn(pc, pr, rc, rr) -> (chosen_rewards, rejected_rewards)`; c is beta (tau for IPO, as TRL reports).
    When they differ, the message says what they are instead (no coefficient, policy only, swapped).
    """
    B = batch[0].shape[0]
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    chosen, rejected = fn(*leaves)
    x = [t.detach().double() for t in batch]
    c = spec.coefficient
    expected = torch.stack([c * (x[0] - x[2]), c * (x[1] - x[3])])  # (2, B)
    got = []
    for r, name in ((chosen, "chosen_rewards"), (rejected, "rejected_rewards")):
        if not isinstance(r, torch.Tensor) or r.numel() != B:
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise PropertyViolation(f"{name}: expected a tensor of {B} rewards, got {shape}")
        got.append(r.detach().double().reshape(B))
    got = torch.stack(got)  # (2, B)
    tol = (
        TOLERANCE_K
        * verdict_eps(batch[0].dtype)
        * (c * torch.stack([x[0].abs() + x[2].abs(), x[1].abs() + x[3].abs()]) + 1)
    )
    bad = ~((got - expected).abs() <= tol)
    if bool(bad.any()):
        alternatives = {
            "log pi - log pi_ref without the coefficient": expected / c,
            "coefficient * log pi (no reference)": torch.stack([c * x[0], c * x[1]]),
            "chosen and rejected exchanged": expected.flip(0),
        }
        what = next(
            (name for name, alt in alternatives.items() if bool(((got - alt).abs() <= tol).all())),
            "none of the usual alternatives",
        )
        k, i = (int(v) for v in bad.nonzero()[0])
        raise PropertyViolation(
            f"{('chosen', 'rejected')[k]}_rewards at index {i}: got {got[k, i].item()!r}, expected "
            f"{expected[k, i].item()!r} = {c!r} * (log pi - log pi_ref); the rewards are {what}",
            float((got[k, i] - expected[k, i]).abs() / max(abs(expected[k, i].item()), tol[k, i].item())),
            k * B + i,
            tol[k, i].item(),
        )


def check_rewards_detached(fn: Callable, spec: LossSpec, batch: tuple[torch.Tensor, ...]) -> None:
    """Returned implicit rewards carry no autograd graph (they are metrics: logging them must not keep it alive)."""
    leaves = tuple(t.detach().clone().requires_grad_(True) for t in batch)
    for r, name in zip(fn(*leaves), ("chosen_rewards", "rejected_rewards")):
        if isinstance(r, torch.Tensor) and r.requires_grad:
            raise PropertyViolation(
                f"{name} carry a gradient: implicit rewards are metrics and should be detached (.detach())"
            )


def check_logps_inputs_unmodified(fn: LogpsFn, batch) -> None:
    """The log-prob implementation does not write into `logits` or `labels`."""
    logits, labels = batch.padded()
    copies = (logits.clone(), labels.clone())
    fn(logits, labels)
    for t, c, name in zip((logits, labels), copies, ("logits", "labels")):
        if not torch.equal(t, c):
            raise PropertyViolation(f"sequence log-probs modified its input {name} in place")


def unscored_filled(batch, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch.padded()` with every vocabulary entry but the last set to `fill` wherever nothing is scored."""
    logits, labels = batch.padded()
    logits = logits.clone()
    scored_next = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): position t scores labels[t + 1]
    scored_next[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    row = logits[~scored_next]  # (N, V)
    row[:, :-1] = fill  # keep the last entry finite so each row is still a distribution
    logits[~scored_next] = row
    return logits, labels


UNSCORED_FILL = -1e4  # finite and extreme: an implementation that reads these positions shows it plainly


def check_logps_ignores_unscored(fn: LogpsFn, batch, average: bool = False, fill: float = UNSCORED_FILL) -> None:
    """Logits at positions that score nothing (prompt, padding, the last position) do not change the result.

    Every vocabulary entry of every such position but one is set to `fill`; the result must equal the
    loop reference on the real logits. The default fill is finite: masking by multiplying
    (`(per_token * mask).sum(-1)`) is correct there. With `fill=-inf` (how some models mask vocabulary
    entries) multiplying gives 0 * -inf = NaN: the oracle reports that as advice, not as a failure.
    """
    logits, labels = unscored_filled(batch, fill)
    out = _as_vector(fn(logits, labels), logits.shape[0], "sequence log-probs")
    rows = [(lab, lg.double()) for lab, lg in batch.rows]
    _close(
        out,
        loop_sequence_logps(rows, average),
        logps_tolerance(rows, logits.dtype),
        f"sequence log-prob with {fill!r} logits at the unscored (prompt, padding, last) positions",
    )
