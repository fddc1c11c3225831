"""The preference-loss family: every loss type of TRL 1.16, robust DPO and SimPO, one definition each.

Notation (all per example, shape `(B,)`): the implicit log-ratios

    rho_w = log pi(y_w|x) - log pi_ref(y_w|x),    rho_l = log pi(y_l|x) - log pi_ref(y_l|x),

the preference margin h = rho_w - rho_l (`dpo_ref.losses.preference_margin`), the scored-token counts
n_w, n_l of the two completions, and the length-normalised margin h_bar = rho_w / n_w - rho_l / n_l.
sigma is the logistic function; every log sigma is evaluated with `logsigmoid` (never log(sigmoid)).

DPO (`sigmoid`), cDPO and paper IPO keep their one definition in `dpo_ref.losses`; this module adds the
rest; the registry that names them all is `dpo_ref.variants`
(re-exported here as `LOSS_FAMILY`, keyed by family name). Every function takes the four sequence
log-probs (summed over the scored tokens, as the trainer has them), the token counts where the loss
needs them (`chosen_lengths`, `rejected_lengths`: the number of *scored* completion tokens, >= 1), its
coefficients (validated like beta), and returns `PreferenceLoss(losses, chosen_rewards,
rejected_rewards)`. Dtype: as in `dpo_ref.losses` (half precision is computed in float32).

Three losses couple the batch (TRL defines them so): `aot` and `aot_unpaired` sort the batch and return
one loss per *quantile*, not per example; `sft` returns each example's share of the batch's token-mean
NLL. `LOSS_FAMILY[key].batch_coupled` says which.

TRL references are to trl/trainer/dpo_trainer.py of TRL 1.16.0 (`DPOTrainer._compute_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dpo_ref.errors import InputError
from dpo_ref.losses import (
    PreferenceLoss,
    _prepare,
    _rewards,
    check_finite_scalar,
    check_lengths,
    check_positive_scalar,
    check_probability,
    dpo_losses_from_margin,
    ipo_losses_from_margin,
    preference_margin,
)
from dpo_ref.variants import LOSS_FAMILY, TRL_LOSS_TYPES  # noqa: F401  (the registry, by family key)

LossFn = Callable[..., PreferenceLoss]


# --- inputs ------------------------------------------------------------------------------------------


def _logps(pc, pr, rc, rr, validate: bool) -> tuple[torch.Tensor, ...]:
    return _prepare((pc, pr, rc, rr), validate)


def _lengths(chosen_lengths, rejected_lengths, like: torch.Tensor, validate: bool, name: str):
    """The token counts in the compute dtype; both are required by a length-normalised loss."""
    out = []
    for lengths, arg in ((chosen_lengths, "chosen_lengths"), (rejected_lengths, "rejected_lengths")):
        if lengths is None:
            raise InputError(f"{name} needs {arg} (the number of scored completion tokens per example)")
        if validate:
            check_lengths(lengths, arg, like)
        out.append(lengths.to(like.dtype))
    return out


def logratios(pc, pr, rc, rr) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho_w, rho_l) = (log pi(y_w) - log pi_ref(y_w), log pi(y_l) - log pi_ref(y_l)).

    Proof: none yet. Properties: `family_properties.check_values`.
    """
    return pc - rc, pr - rr


def normalised_margin(pc, pr, rc, rr, chosen_lengths, rejected_lengths) -> torch.Tensor:
    """h_bar = rho_w / n_w - rho_l / n_l: the margin of the per-token average log-ratios.

    Proof: none yet. Properties: `family_properties.check_values`, `family_properties.check_shift`.
    """
    r_w, r_l = logratios(pc, pr, rc, rr)
    return r_w / chosen_lengths - r_l / rejected_lengths


# --- margin losses -----------------------------------------------------------------------------------


def hinge_loss(pc, pr, rc, rr, *, beta: float = 0.1, validate: bool = True) -> PreferenceLoss:
    """Hinge loss on the normalised likelihood (RSO, Liu et al. 2023, hinge-norm; SLiC's hinge).

        L = max(0, 1 - beta h)

    1/beta is the margin: loss and gradient are exactly zero once beta h >= 1. TRL: dpo_trainer.py:1390-1391.
    Rewards: beta rho_w, beta rho_l.

    Proof: `hinge`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_hinge_margin`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    losses = torch.relu(1.0 - beta * preference_margin(pc, pr, rc, rr))
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def ipo_norm_loss(
    pc, pr, rc, rr, *, chosen_lengths, rejected_lengths, tau: float = 0.1, validate: bool = True
) -> PreferenceLoss:
    """IPO on per-token average log-ratios (TRL's `loss_type="ipo"`, beta standing for tau).

        L = (h_bar - 1/(2 tau))^2                      (Azar et al. 2023, Eq. 17, on h_bar instead of h)

    The paper's IPO uses the sequence margin h (`dpo_ref.losses.ipo_loss`); TRL divides each log-ratio by
    the completion's token count (dpo_trainer.py:1393-1404, citing the authors). Minimiser h_bar* = 1/(2 tau).
    Rewards: tau rho_w / n_w, tau rho_l / n_l.

    Proof: `ipo-noise`. Properties: `family_properties.check_values`, `family_properties.check_optimum`,
    `family_properties.check_noisy_ipo_optimum`.
    """
    tau = check_positive_scalar(tau, "tau")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    nc, nr = _lengths(chosen_lengths, rejected_lengths, pc, validate, "ipo (length-normalised)")
    losses = ipo_losses_from_margin(normalised_margin(pc, pr, rc, rr, nc, nr), tau)
    rw, rl = _rewards(tau, pc, pr, rc, rr)
    return PreferenceLoss(losses, rw / nc, rl / nr)


def exo_pair_loss(pc, pr, rc, rr, *, beta: float = 0.1, label_smoothing: float = 1e-3, validate: bool = True):
    """Pairwise EXO: the reverse KL from the model's pair distribution to the smoothed label (Ji et al. 2024, Eq. 16).

        q = sigma(beta h),  p = 1 - eps
        L = KL(Bern(q) || Bern(p)) = q (log q - log(1 - eps)) + (1 - q) (log(1 - q) - log eps)

    eps in (0, 0.5) (the paper recommends 1e-3). L >= 0, with equality exactly at sigma(beta h*) = 1 - eps,
    the same fixed point as cDPO; L <= -log eps. TRL: dpo_trainer.py:1406-1417. Rewards: beta rho_w, beta rho_l.

    Proof: `exo-cdpo`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_optimum`, `family_properties.check_bounds`.
    """
    beta = check_positive_scalar(beta, "beta")
    eps = check_probability(label_smoothing, "label_smoothing", low_inclusive=False)
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    z = beta * preference_margin(pc, pr, rc, rr)
    log_q, log_q_l = F.logsigmoid(z), F.logsigmoid(-z)
    losses = torch.sigmoid(z) * (log_q - math.log1p(-eps)) + torch.sigmoid(-z) * (log_q_l - math.log(eps))
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def robust_loss(pc, pr, rc, rr, *, beta: float = 0.1, label_smoothing: float = 0.1, validate: bool = True):
    """Robust DPO: the unbiased loss under preference flips with probability eps (Chowdhury et al. 2024, the rDPO loss).

        l(h) = -log sigma(beta h)
        L(h) = [(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps)

    so that (1 - eps) L(h) + eps L(-h) = l(h): in expectation over the flips it is the clean DPO loss. It
    falls strictly in h and, for eps > 0, without bound (no finite minimiser). eps in [0, 0.5); eps = 0
    is DPO. Not cDPO (`dpo_ref.losses.dpo_loss` with label_smoothing), which *adds* eps l(-h).
    TRL: dpo_trainer.py:1428-1431 (`loss_type="robust"`). Rewards: beta rho_w, beta rho_l.

    Proof: `robust-dpo`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_robust_unbiased`.
    """
    beta = check_positive_scalar(beta, "beta")
    eps = check_probability(label_smoothing, "label_smoothing")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    z = beta * preference_margin(pc, pr, rc, rr)
    losses = ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def discopop_loss(pc, pr, rc, rr, *, beta: float = 0.1, tau: float = 0.05, validate: bool = True):
    """DiscoPOP, the log-ratio modulated loss (Lu et al. 2024, Eq. 5), with u = beta h:

        L = (1 - sigma(u / tau)) (-log sigma(u)) + sigma(u / tau) exp(-u)

    tau > 0 (the paper uses 0.05). The second term is evaluated as exp(log sigma(u/tau) - u), which
    stays finite where sigma(u/tau) underflows to 0 and exp(-u) overflows (0 * inf would be NaN);
    TRL multiplies the two factors (dpo_trainer.py:1483-1493). Rewards: beta rho_w, beta rho_l.

    Proof: `discopop`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_finite`.
    """
    beta = check_positive_scalar(beta, "beta")
    tau = check_positive_scalar(tau, "tau")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    u = beta * preference_margin(pc, pr, rc, rr)
    losses = torch.sigmoid(-u / tau) * -F.logsigmoid(u) + torch.exp(F.logsigmoid(u / tau) - u)
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def sigmoid_norm_loss(pc, pr, rc, rr, *, chosen_lengths, rejected_lengths, beta: float = 0.1, validate: bool = True):
    """Length-normalised DPO: L = -log sigma(beta h_bar) (DPO's Eq. 7 on per-token average log-ratios).

    TRL's `loss_type="sigmoid_norm"` (dpo_trainer.py:1504-1510; TRL cites no paper, the form is Tulu 3's
    length-normalised DPO). Rewards: beta rho_w / n_w, beta rho_l / n_l.

    Proof: none yet. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_shift`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    nc, nr = _lengths(chosen_lengths, rejected_lengths, pc, validate, "sigmoid_norm")
    losses = dpo_losses_from_margin(normalised_margin(pc, pr, rc, rr, nc, nr), beta)
    rw, rl = _rewards(beta, pc, pr, rc, rr)
    return PreferenceLoss(losses, rw / nc, rl / nr)


def simpo_loss(
    pc, pr, rc, rr, *, chosen_lengths, rejected_lengths, beta: float = 2.0, gamma: float = 0.5, validate: bool = True
) -> PreferenceLoss:
    """SimPO, reference-free and length-normalised (Meng et al. 2024, Eq. 6):

        L = -log sigma(beta log pi(y_w)/n_w - beta log pi(y_l)/n_l - gamma)

    The reference log-probs are accepted (and validated) for a uniform signature but do not enter.
    beta > 0, target reward margin gamma >= 0. Rewards: beta log pi(y)/n (the paper's Eq. 4).

    Proof: `simpo-sft-aot`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_shift`.
    """
    beta = check_positive_scalar(beta, "beta")
    gamma = check_finite_scalar(gamma, "gamma", nonnegative=True)
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    nc, nr = _lengths(chosen_lengths, rejected_lengths, pc, validate, "simpo")
    chosen, rejected = beta * pc / nc, beta * pr / nr
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLoss(losses, chosen.detach(), rejected.detach())


# --- losses on the two log-ratios separately (not invariant under adding f(x)) -----------------------


def nca_pair_loss(pc, pr, rc, rr, *, beta: float = 0.1, validate: bool = True) -> PreferenceLoss:
    """Pairwise NCA (Chen et al. 2024, noise contrastive alignment, K = 2 responses):

        L = -log sigma(beta rho_w) - 1/2 log sigma(-beta rho_w) - 1/2 log sigma(-beta rho_l)

    Each log-ratio is scored on its own, so adding f(x) to both policy log-probs changes L. The chosen
    term is stationary at sigma(beta rho_w) = 2/3, i.e. rho_w* = ln 2 / beta; the rejected term falls as
    rho_l -> -inf. TRL: dpo_trainer.py:1419-1426. Rewards: beta rho_w, beta rho_l.

    Proof: `shift-invariance`, `bounded-losses`. Properties: `family_properties.check_values`,
    `family_properties.check_optimum`, `family_properties.check_not_invariant`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, r_l = logratios(pc, pr, rc, rr)
    losses = -F.logsigmoid(beta * r_w) - 0.5 * F.logsigmoid(-beta * r_w) - 0.5 * F.logsigmoid(-beta * r_l)
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def bco_pair_loss(pc, pr, rc, rr, *, beta: float = 0.1, delta: float = 0.0, validate: bool = True):
    """Pairwise BCO, a binary classifier on the implicit rewards (Jung et al. 2024, BCO with paired data):

        L = -log sigma(beta rho_w - delta) - log sigma(-(beta rho_l - delta))

    delta is the paper's reward shift, a running mean of the rewards beta rho over past batches, kept by the
    caller and passed in (it is a constant for the gradient). TRL 1.16 sets delta = 0: dpo_trainer.py:1433-1436
    has no running mean. Rewards: beta rho_w, beta rho_l.

    Proof: `shift-invariance`. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_not_invariant`.
    """
    beta = check_positive_scalar(beta, "beta")
    delta = check_finite_scalar(delta, "delta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, r_l = logratios(pc, pr, rc, rr)
    losses = -F.logsigmoid(beta * r_w - delta) - F.logsigmoid(-(beta * r_l - delta))
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def sppo_hard_loss(pc, pr, rc, rr, *, beta: float = 0.1, validate: bool = True) -> PreferenceLoss:
    """SPPO with hard win probabilities (Wu et al. 2024, Eq. 4.7 with P(y_w > pi) = 1, P(y_l > pi) = 0, eta = 1/beta):

        L = (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2

    minimised exactly at rho_w = 1/(2 beta), rho_l = -1/(2 beta). TRL: dpo_trainer.py:1438-1445.
    Rewards: beta rho_w, beta rho_l (so the optimum has rewards +-1/2).

    Proof: `sppo-hard`. Properties: `family_properties.check_values`, `family_properties.check_optimum`,
    `family_properties.check_not_invariant`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, r_l = logratios(pc, pr, rc, rr)
    target = 0.5 / beta
    losses = (r_w - target) ** 2 + (r_l + target) ** 2
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def apo_zero_loss(pc, pr, rc, rr, *, beta: float = 0.1, validate: bool = True) -> PreferenceLoss:
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7): raise the chosen, lower the rejected likelihood.

        L = 1 - sigma(beta rho_w) + sigma(beta rho_l),   0 < L < 2

    TRL: dpo_trainer.py:1467-1473 (the paper's form plus the constant 1). Rewards: beta rho_w, beta rho_l.

    Proof: `shift-invariance`, `bounded-losses`. Properties: `family_properties.check_values`,
    `family_properties.check_bounds`, `family_properties.check_not_invariant`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, r_l = logratios(pc, pr, rc, rr)
    losses = 1.0 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l)
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def apo_down_loss(pc, pr, rc, rr, *, beta: float = 0.1, validate: bool = True) -> PreferenceLoss:
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8): lower both likelihoods, the rejected one more.

        L = sigma(beta rho_w) + 1 - sigma(beta h),   0 < L < 2

    TRL: dpo_trainer.py:1475-1481. Rewards: beta rho_w, beta rho_l.

    Proof: `shift-invariance`, `bounded-losses`. Properties: `family_properties.check_values`,
    `family_properties.check_bounds`, `family_properties.check_not_invariant`.
    """
    beta = check_positive_scalar(beta, "beta")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, _ = logratios(pc, pr, rc, rr)
    losses = torch.sigmoid(beta * r_w) + 1.0 - torch.sigmoid(beta * preference_margin(pc, pr, rc, rr))
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


def dpop_loss(pc, pr, rc, rr, *, beta: float = 0.1, dpop_lambda: float = 50.0, validate: bool = True) -> PreferenceLoss:
    """DPO-Positive (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    Eq. 3): DPO with a penalty whenever the chosen response's likelihood falls below the reference's.

        L = -log sigma(beta (h - lambda max(0, log pi_ref(y_w) - log pi(y_w))))

    lambda >= 0 (the paper uses 50). Where log pi(y_w) >= log pi_ref(y_w) it is DPO; below, every nat the chosen
    log-prob loses costs lambda more, so the optimiser cannot lower both likelihoods to widen the margin.
    Adding f(x) to both policy log-probs changes the penalty: not invariant. Rewards: beta rho_w, beta rho_l.

    Proof: none yet. Properties: `family_properties.check_values`, `family_properties.check_gradients`,
    `family_properties.check_shift`.
    """
    beta = check_positive_scalar(beta, "beta")
    dpop_lambda = check_finite_scalar(dpop_lambda, "dpop_lambda", nonnegative=True)
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    penalty = torch.relu(rc - pc)  # (B,) max(0, log pi_ref(y_w) - log pi(y_w))
    losses = -F.logsigmoid(beta * (preference_margin(pc, pr, rc, rr) - dpop_lambda * penalty))
    return PreferenceLoss(losses, *_rewards(beta, pc, pr, rc, rr))


# --- batch-coupled losses ----------------------------------------------------------------------------


def aot_loss(pc, pr, rc, rr, *, beta: float = 0.1, label_smoothing: float = 0.0, validate: bool = True):
    """AOT, paired (Melnyk et al. 2024): the policy's log-likelihood ratios should dominate the reference's.

        u = sort(log pi(y_w) - log pi(y_l)),  v = sort(log pi_ref(y_w) - log pi_ref(y_l))   (over the batch)
        L_i = -(1 - eps) log sigma(beta (u_i - v_i)) - eps log sigma(-beta (u_i - v_i))

    One loss per quantile i (not per example); permuting the batch leaves them unchanged. eps in [0, 0.5)
    (TRL applies `label_smoothing` here although its documentation names only robust and EXO).
    TRL: dpo_trainer.py:1447-1456. Rewards: beta rho_w, beta rho_l per example.

    Proof: `simpo-sft-aot`. Properties: `family_properties.check_values`, `family_properties.check_batch_structure`.
    """
    beta = check_positive_scalar(beta, "beta")
    eps = check_probability(label_smoothing, "label_smoothing")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    u = torch.sort(pc - pr).values  # (B,) policy log-likelihood ratios, ascending
    v = torch.sort(rc - rr).values  # (B,) reference ones
    return PreferenceLoss(dpo_losses_from_margin(u - v, beta, eps), *_rewards(beta, pc, pr, rc, rr))


def aot_unpaired_loss(pc, pr, rc, rr, *, beta: float = 0.1, label_smoothing: float = 0.0, validate: bool = True):
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratio distribution should dominate the rejected one.

        L_i = -(1 - eps) log sigma(beta (sort(rho_w)_i - sort(rho_l)_i)) - eps log sigma(-beta (...))

    One loss per quantile. Adding f(x) to both policy log-probs changes the sorted pairing unless f is the
    same for the whole batch. TRL: dpo_trainer.py:1458-1465. Rewards: beta rho_w, beta rho_l per example.

    Proof: `simpo-sft-aot`. Properties: `family_properties.check_values`, `family_properties.check_batch_structure`,
    `family_properties.check_shift`.
    """
    beta = check_positive_scalar(beta, "beta")
    eps = check_probability(label_smoothing, "label_smoothing")
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    r_w, r_l = logratios(pc, pr, rc, rr)
    delta = torch.sort(r_w).values - torch.sort(r_l).values  # (B,) quantile differences
    return PreferenceLoss(dpo_losses_from_margin(delta, beta, eps), *_rewards(beta, pc, pr, rc, rr))


def sft_loss(pc, pr, rc, rr, *, chosen_lengths, rejected_lengths=None, validate: bool = True) -> PreferenceLoss:
    """SFT term: the token-mean negative log-likelihood of the chosen completions over the batch.

        L_i = -log pi(y_w^i) / n_bar,   n_bar = (1/B) sum_j n_w^j,   so  mean_i L_i = -sum_i log pi(y_w^i) / sum_i n_w^i

    TRL (dpo_trainer.py:1495-1502) takes the mean of the per-token log-probs over every chosen token in
    the batch and copies that scalar to every row; these per-example shares have the same mean and the
    same gradient. Neither the rejected completion nor the reference enters (`rejected_lengths` unused).
    No implicit reward: the policy sequence log-probs are returned in its place.

    Proof: `simpo-sft-aot`. Properties: `family_properties.check_values`, `family_properties.check_gradients`.
    """
    pc, pr, rc, rr = _logps(pc, pr, rc, rr, validate)
    if chosen_lengths is None:
        raise InputError("sft needs chosen_lengths (the number of scored completion tokens per example)")
    if validate:
        check_lengths(chosen_lengths, "chosen_lengths", pc)
    n_bar = chosen_lengths.to(pc.dtype).mean()
    return PreferenceLoss(-pc / n_bar, pc.detach(), pr.detach())
