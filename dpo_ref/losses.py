"""Per-example DPO, conservative DPO (cDPO) and IPO losses with their implicit rewards.

Every loss here is a function of the preference margin

    h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)),

the difference of the two implicit log-ratios. These are the only definitions of the formulas in the
project: the trainer, the conformance oracle and the tests import them from here.

Output dtype rule: the four log-prob tensors are promoted with `torch.result_type`; a half-precision
result (bfloat16, float16) is promoted once more to float32, so the losses are computed and returned in
float32 for bf16/fp16 inputs and in the promoted dtype (float32 or float64) otherwise. Gradients flow
back to the inputs in their own dtype.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dpo_ref.errors import InputError, InputTypeError
from dpo_ref.logps import accumulation_dtype

LOGPS_NAMES = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "reference_chosen_logps",
    "reference_rejected_logps",
)


class PreferenceLoss(NamedTuple):
    """Per-example losses `(B,)` and the detached implicit rewards `(B,)` of chosen and rejected."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the losses are computed in (see the module docstring)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return accumulation_dtype(dtype)


def real_number(value: object, name: str, expected: str) -> float:
    """`value` as a float if it is a real number: a Python int or float, a numpy scalar, or a one-element
    real tensor (a 0-d tensor such as `torch.tensor(0.1)`); `InputTypeError` naming `name` and `expected`
    otherwise (a bool, a string, a complex number). Every scalar coefficient is read through here."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise InputError(f"{name} must be {expected}, got a tensor of shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise InputTypeError(f"{name} must be {expected}, got a tensor of dtype {value.dtype}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy registers its scalars as Real
        raise InputTypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return float(value)


def check_positive_scalar(value: object, name: str) -> float:
    """`value` as a float; `InputError` naming `name` unless it is a finite real number > 0."""
    value = real_number(value, name, "a positive finite number")
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_label_smoothing(value: object) -> float:
    """`value` as a float; `InputError` unless 0 <= value < 0.5 (0.5 makes the loss ignore preference)."""
    return check_probability(value, "label_smoothing")


def check_probability(value: object, name: str, *, low_inclusive: bool = True, high: float = 0.5) -> float:
    """`value` as a float; `InputError` naming `name` unless it lies in [0, high) (or (0, high) without
    `low_inclusive`). The preference-noise coefficients (cDPO/robust flip rates, EXO's eps) all live here."""
    interval = f"{'[' if low_inclusive else '('}0, {high!r})"
    value = real_number(value, name, f"a number in {interval}")
    if not ((0.0 <= value if low_inclusive else 0.0 < value) and value < high):
        raise InputError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_finite_scalar(value: object, name: str, *, nonnegative: bool = False) -> float:
    """`value` as a float; `InputError` naming `name` unless it is a finite real number (>= 0 if asked)."""
    what = "a non-negative finite number" if nonnegative else "a finite number"
    value = real_number(value, name, what)
    if not math.isfinite(value) or (nonnegative and value < 0):
        raise InputError(f"{name} must be {what}, got {value!r}")
    return value


def check_lengths(lengths: object, name: str, like: torch.Tensor) -> None:
    """Validate a scored-token count tensor: 1-D like `like` (same shape and device), every entry >= 1.

    Counts of 0 are refused rather than clamped: a pair with nothing scored has no per-token average, and
    silently clamping it to 1 is how an off-by-one in a count goes unnoticed. This is the project's one
    count rule: the length-normalised losses (`dpo_ref.family`) and the RPO NLL (`dpo_ref.rpo`) call it.
    """
    if not isinstance(lengths, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of token counts, got {type(lengths).__name__}")
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise InputTypeError(f"{name} must hold integer or floating token counts, got dtype {lengths.dtype}")
    if lengths.shape != like.shape:
        raise InputError(f"{name} has shape {tuple(lengths.shape)} but the log-probs have shape {tuple(like.shape)}")
    if lengths.device != like.device:
        raise InputError(f"{name} is on {lengths.device} but the log-probs are on {like.device}")
    ok = lengths >= 1
    if lengths.is_floating_point():
        ok &= torch.isfinite(lengths)
    bad = ~ok
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise InputError(f"{name} must be >= 1 (scored tokens per completion), got {lengths[i].item()!r} at index {i}")


def check_logps(*logps: torch.Tensor, names: tuple[str, ...] = LOGPS_NAMES, finite: bool = True) -> None:
    """Validate log-prob tensors: floating, 1-D, non-empty, same shape, same device, finite."""
    for t, name in zip(logps, names):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise InputTypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise InputError(f"{name} must be 1-D (one log-prob per example), got shape {tuple(t.shape)}")
    first, first_name = logps[0], names[0]
    for t, name in zip(logps[1:], names[1:]):
        if t.shape != first.shape:
            raise InputError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape {tuple(first.shape)}; they must match"
            )
        if t.device != first.device:
            raise InputError(f"{name} is on {t.device} but {first_name} is on {first.device}; they must match")
    if first.numel() == 0:
        raise InputError(f"{first_name} is an empty batch; at least one example is needed")
    if finite:
        for t, name in zip(logps, names):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).nonzero()[0, 0])
                raise InputError(f"{name} has a non-finite value ({t[bad].item()}) at index {bad}")


def preference_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), shape `(B,)`.

    Grouped as a difference of log-ratios: each log-ratio is small when pi is near pi_ref even if the
    log-probs themselves are large, so this order loses the least precision.

    Proof: `reward-reparam`, `bt-cancellation`, `reward-equivalence`, `dpo-theorem-1`, `dpo-loss`,
    `shift-invariance`. Properties: `properties.check_z_cancellation`, `properties.check_values`.
    """
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def dpo_losses_from_margin(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO / cDPO per-example loss from the margin h.

        L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    eps = 0 is DPO (Rafailov et al. 2023, Eq. 7); eps > 0 is conservative DPO (labels flipped with
    probability eps). `logsigmoid` is evaluated stably (never log(sigmoid(x)), which is -inf in float32
    once beta*h < -104).

    Proof: `bt-cancellation`, `dpo-loss`, `dpo-gradient`, `init-ln2`, `deterministic-preference`, `cdpo`,
    `exo-cdpo`. Properties: `properties.check_values`, `properties.check_gradients`, `properties.check_init`,
    `properties.check_optimum`.
    """
    logits = beta * margin
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses


def ipo_losses_from_margin(margin: torch.Tensor, tau: float) -> torch.Tensor:
    """IPO per-example loss from the margin h: L = (h - 1/(2 tau))^2 (Azar et al. 2023, Eq. 17).

    Proof: `ipo`, `ipo-psi`, `ipo-noise`. Properties: `properties.check_values`, `properties.check_optimum`.
    """
    return (margin - ipo_target_margin(tau)) ** 2


def ipo_target_margin(tau: float) -> float:
    """IPO's per-pair target margin 1/(2 tau): the minimiser of (h - 1/(2 tau))^2 (Azar et al. 2023, Eq. 17).

    Proof: `ipo`. Properties: `properties.check_optimum`.
    """
    return 1.0 / (2.0 * tau)


def _prepare(logps: tuple[torch.Tensor, ...], validate: bool) -> tuple[torch.Tensor, ...]:
    if validate:
        check_logps(*logps)
    dtype = compute_dtype(*logps)
    return tuple(t.to(dtype) for t in logps)


def _check_overflow(result: PreferenceLoss, name: str, value: float) -> PreferenceLoss:
    """`result`, or InputError naming the coefficient when finite log-probs gave a non-finite loss or reward:
    `value` (beta, tau) so large or small that beta * h or 1/(2 tau) leaves the dtype's range (silent inf)."""
    for what, t in zip(("loss", "chosen reward", "rejected reward"), result):
        if not bool(torch.isfinite(t).all()):
            i = int((~torch.isfinite(t)).nonzero()[0, 0])
            raise InputError(
                f"{name}={value!r} makes the {what} overflow {t.dtype} ({t[i].item()} at index {i}); expected a "
                f"{name} whose losses and rewards are representable (e.g. in [1e-3, 1e3])"
            )
    return result


def _rewards(scale: float, pc, pr, rc, rr) -> tuple[torch.Tensor, torch.Tensor]:
    return (scale * (pc - rc)).detach(), (scale * (pr - rr)).detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    validate: bool = True,
) -> PreferenceLoss:
    """Per-example DPO loss (cDPO when `label_smoothing` > 0) and implicit rewards.

    With h the preference margin (`preference_margin`):

        L_DPO  = -log sigma(beta h)                                   (Rafailov et al. 2023, Eq. 7)
        L_cDPO = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    Args are sequence log-probs of shape `(B,)`: log pi(y_w|x), log pi(y_l|x), log pi_ref(y_w|x),
    log pi_ref(y_l|x). `beta` > 0 is the KL coefficient; `label_smoothing` eps in [0, 0.5).
    `validate=False` skips the input checks (and their host synchronisation) on a hot path.

    Returns `PreferenceLoss(losses, chosen_rewards, rejected_rewards)`, each `(B,)`; the rewards are
    beta * (log pi - log pi_ref), detached. Dtype: see the module docstring. Bad input raises
    `ValueError` (or `TypeError` for a wrong type) naming the argument.

    Proof: `optimal-policy`, `reward-reparam`, `reward-equivalence`, `dpo-theorem-1`, `dpo-loss`, `dpo-gradient`,
    `init-ln2`, `implicit-reward-kl`, `cdpo`. Properties: `properties.check_values`, `properties.check_gradients`,
    `properties.check_init`, `properties.check_z_cancellation`, `properties.check_optimum`.
    """
    beta = check_positive_scalar(beta, "beta")
    label_smoothing = check_label_smoothing(label_smoothing)
    pc, pr, rc, rr = _prepare(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps), validate
    )
    losses = dpo_losses_from_margin(preference_margin(pc, pr, rc, rr), beta, label_smoothing)
    result = PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))
    return _check_overflow(result, "beta", beta) if validate else result


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    tau: float = 0.1,
    validate: bool = True,
) -> PreferenceLoss:
    """Per-example IPO loss and implicit rewards.

        L_IPO = (h - 1/(2 tau))^2                                       (Azar et al. 2023, Eq. 17)

    h is the preference margin on the log-probs as given: pass summed sequence log-probs for the
    paper's IPO, length-averaged ones for TRL's variant. `tau` > 0 is the regularisation strength; the
    per-pair minimiser is h* = 1/(2 tau). The rewards are tau * (log pi - log pi_ref), detached (the
    same scaling TRL reports, with its beta standing for tau). Bad input raises `ValueError`/`TypeError`
    naming the argument.

    Proof: `ipo`, `ipo-psi`. Properties: `properties.check_values`, `properties.check_gradients`,
    `properties.check_optimum`.
    """
    tau = check_positive_scalar(tau, "tau")
    pc, pr, rc, rr = _prepare(
        (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps), validate
    )
    losses = ipo_losses_from_margin(preference_margin(pc, pr, rc, rr), tau)
    result = PreferenceLoss(losses, *_rewards(tau, pc, pr, rc, rr))
    return _check_overflow(result, "tau", tau) if validate else result
