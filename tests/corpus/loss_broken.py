"""Broken loss-level DPO / cDPO / IPO implementations: one realistic mistake each.

Written as third-party code would be (not importing dpo_ref). The index in `__init__.py` gives, for each,
the variant it claims and the diagnosis the oracle must name (the known alternative it computes instead),
or None when the mistake has no named alternative. h = (pc - rc) - (pr - rr) throughout.
"""

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------- cDPO claimed, something else computed


def cdpo_ignores_eps(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """plain-dpo: accepts label_smoothing, never uses it."""
    logits = (pc - pr) - (rc - rr)
    return -F.logsigmoid(beta * logits)


def cdpo_hard_bce_targets(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """plain-dpo: BCE-with-logits against hard targets 1; the smoothing was meant to go into the target."""
    z = beta * ((pc - rc) - (pr - rr))
    targets = torch.ones_like(z)  # TODO: smooth the targets with label_smoothing
    return F.binary_cross_entropy_with_logits(z, targets, reduction="none")


def cdpo_is_robust(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """robust-dpo: the rDPO estimator of Chowdhury et al. 2024, with its 1/(1 - 2 eps) normalisation."""
    logits = (pc - pr) - (rc - rr)
    eps = label_smoothing
    return (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)


def cdpo_is_robust_softplus(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """robust-dpo: rDPO in softplus form, ((1 - eps) softplus(-z) - eps softplus(z)) / (1 - 2 eps)."""
    z = beta * ((pc - rc) - (pr - rr))
    e = label_smoothing
    return ((1 - e) * F.softplus(-z) - e * F.softplus(z)) / (1 - 2 * e)


def cdpo_weights_exchanged(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """cdpo-weights-exchanged: eps on the chosen-wins term and 1 - eps on the flipped one."""
    z = beta * ((pc - rc) - (pr - rr))
    return -label_smoothing * F.logsigmoid(z) - (1 - label_smoothing) * F.logsigmoid(-z)


def cdpo_bce_target_eps(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """cdpo-weights-exchanged: BCE-with-logits against the soft target eps where 1 - eps was meant."""
    z = beta * ((pc - rc) - (pr - rr))
    return F.binary_cross_entropy_with_logits(z, torch.full_like(z, label_smoothing), reduction="none")


# ------------------------------------------------------------------------- IPO mistakes


def ipo_target_one_over_tau(pc, pr, rc, rr, beta=0.1):
    """ipo-target-1/tau: regresses h onto 1/tau, dropping the 2 in 1/(2 tau)."""
    h = (pc - rc) - (pr - rr)
    return (h - 1 / beta) ** 2


def ipo_target_one_over_tau_scaled(pc, pr, rc, rr, tau=0.1):
    """ipo-target-1/tau: (tau h - 1)^2 / tau^2 = (h - 1/tau)^2, batch mean."""
    z = tau * ((pc - pr) - (rc - rr))
    return torch.mean((z - 1) ** 2) / tau**2


def ipo_precedence(pc, pr, rc, rr, beta=0.1):
    """None: `1/2*tau` parses as tau/2, so the target is tau/2 (no named alternative)."""
    h = (pc - rc) - (pr - rr)
    return (h - 1 / 2 * beta) ** 2


def ipo_swapped(pc, pr, rc, rr, beta=0.1):
    """chosen-rejected-swapped: IPO on the rejected-minus-chosen margin."""
    h = (pr - rr) - (pc - rc)
    return (h - 1 / (2 * beta)) ** 2


# ------------------------------------------------------------------------- DPO mistakes


def swapped_chosen_rejected(pc, pr, rc, rr, beta=0.1):
    """chosen-rejected-swapped: pi_logratios = rejected - chosen."""
    pi_logratios = pr - pc
    ref_logratios = rr - rc
    return -F.logsigmoid(beta * (pi_logratios - ref_logratios))


def swapped_bce_target_zero(pc, pr, rc, rr, beta=0.1):
    """chosen-rejected-swapped: BCE-with-logits with target 0 (the rejected one labelled the winner)."""
    z = beta * ((pc - rc) - (pr - rr))
    return F.binary_cross_entropy_with_logits(z, torch.zeros_like(z), reduction="none")


def beta_ignored(pc, pr, rc, rr, beta=0.1):
    """beta-ignored: beta accepted and never used (the loss is softplus(-h))."""
    return F.softplus(-((pc - rc) - (pr - rr)))


def beta_ignored_shadowed(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """beta-ignored: a local `beta = 1.0` left over from debugging shadows the argument (cDPO claimed)."""
    beta = 1.0  # the argument is overwritten: that is the bug
    z = beta * ((pc - rc) - (pr - rr))
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def beta_squared(pc, pr, rc, rr, beta=0.1):
    """beta-squared: beta applied to the rewards and again to their difference."""
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    return -F.logsigmoid(beta * (chosen_rewards - rejected_rewards))


def beta_squared_cdpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """beta-squared: cDPO on beta * (chosen_rewards - rejected_rewards), the rewards already scaled by beta."""
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    z = beta * (chosen_rewards - rejected_rewards)
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def no_reference(pc, pr, rc, rr, beta=0.1):
    """no-reference: the reference log-probs are accepted and never used."""
    return -F.logsigmoid(beta * (pc - pr))


def reference_free_default(pc, pr, rc, rr, beta=0.1, reference_free=True):
    """no-reference: a `reference_free=True` default left on (the reference log-ratio taken as 0)."""
    pi_logratios = pc - pr
    ref_logratios = torch.zeros_like(pi_logratios) if reference_free else rc - rr
    return -F.logsigmoid(beta * (pi_logratios - ref_logratios))


def batch_sum(pc, pr, rc, rr, beta=0.1):
    """batch-sum: `.sum()` where the mean was meant (the gradient grows with the batch size)."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum()


def batch_sum_in_dict(pc, pr, rc, rr, beta=0.1):
    """batch-sum: a dict whose "loss" is the batch sum, rewards correct."""
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    losses = F.softplus(rejected_rewards - chosen_rewards)
    return {
        "loss": losses.sum(),
        "chosen_rewards": chosen_rewards.detach(),
        "rejected_rewards": rejected_rewards.detach(),
    }


def ipo_default_loss_type(pc, pr, rc, rr, beta=0.1, loss_type="ipo"):
    """ipo-not-dpo: a `loss_type` switch whose default is "ipo", called for DPO (tau = beta)."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits)
    return (logits - 1 / (2 * beta)) ** 2


def dpo_default_loss_type(pc, pr, rc, rr, tau=0.1, loss_type="sigmoid"):
    """dpo-not-ipo: the same switch with default "sigmoid", called for IPO (beta = tau)."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "ipo":
        return (logits - 1 / (2 * tau)) ** 2
    return -F.logsigmoid(tau * logits)


def reference_sign(pc, pr, rc, rr, beta=0.1):
    """reference-sign: pi_logratios + ref_logratios (the reference log-ratio added, not subtracted)."""
    pi_logratios = pc - pr
    ref_logratios = rc - rr
    return -F.logsigmoid(beta * (pi_logratios + ref_logratios))


def reference_sign_product(pc, pr, rc, rr, beta=0.1):
    """reference-sign: log(pi * pi_ref) for each response (a + where the ratio needed a -), mean."""
    chosen = pc + rc
    rejected = pr + rr
    return F.softplus(-beta * (chosen - rejected)).mean()


# ------------------------------------------------------------------------- no named alternative (diagnosis None)


def half_precision_margin(pc, pr, rc, rr, beta=0.1):
    """None: the log-probs cast to float16 before the margin (~1e-3 relative rounding of each log-prob)."""
    h = (pc.half() - rc.half()) - (pr.half() - rr.half())
    return -F.logsigmoid(beta * h.to(pc.dtype))


def beta_floored(pc, pr, rc, rr, beta=0.1):
    """None: beta clamped to at least 0.01 "for stability", wrong for every beta < 0.01."""
    beta = max(beta, 0.01)
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def nan_on_ties(pc, pr, rc, rr, beta=0.1):
    """None: a hand-made stable softplus taking the sign as z / |z|: NaN when h = 0 (ties)."""
    z = beta * ((pc - rc) - (pr - rr))
    sign = z / z.abs()
    return F.relu(-z) + torch.log1p(torch.exp(-z * sign))


def inplace_inputs(pc, pr, rc, rr, beta=0.1):
    """None: subtracts the reference in place, overwriting the caller's policy log-probs (values right)."""
    pc -= rc
    pr -= rr
    return -F.logsigmoid(beta * (pc - pr))


def detached_policy(pc, pr, rc, rr, beta=0.1):
    """None: .detach() on the policy log-probs (values right, no gradient reaches the policy)."""
    pc, pr = pc.detach(), pr.detach()
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def batch_centred_margin(pc, pr, rc, rr, beta=0.1):
    """None: subtracts the batch-mean margin "to reduce variance": each loss depends on the rest of the batch."""
    h = (pc - rc) - (pr - rr)
    return -F.logsigmoid(beta * (h - h.mean()))


def naive_log_sigmoid(pc, pr, rc, rr, beta=0.1):
    """None: log(sigmoid(z)): sigmoid underflows to 0 for very negative z (z < -745 in float64), loss inf."""
    z = beta * ((pc - rc) - (pr - rr))
    return -torch.log(torch.sigmoid(z))


def rewards_not_detached(pc, pr, rc, rr, beta=0.1):
    """None: the returned rewards are not detached (logging them keeps the graph; summing them trains them)."""
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def rewards_without_beta(pc, pr, rc, rr, beta=0.1):
    """None: loss right, but the reported rewards are the raw log-ratios, without beta."""
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, chosen_logratios.detach(), rejected_logratios.detach()


# ==================================================================================== the suite's own set
# Written with the oracle's checks in mind (not by the outside session): each broken one has the checks it must
# fail in the index (`fails`), together covering every check of the catalogue.


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def wrong_sign(pc, pr, rc, rr, beta=0.1):
    """Prefers the rejected response."""
    return -F.logsigmoid(-beta * _h(pc, pr, rc, rr))


def reference_unused(pc, pr, rc, rr, beta=0.1):
    """Forgets the reference model."""
    return -F.logsigmoid(beta * (pc - pr))


def beta_outside(pc, pr, rc, rr, beta=0.1):
    """Multiplies the loss, not the margin, by beta."""
    return -beta * F.logsigmoid(_h(pc, pr, rc, rr))


def beta_divides(pc, pr, rc, rr, beta=0.1):
    """Treats beta as a temperature that divides the margin."""
    return -F.logsigmoid(_h(pc, pr, rc, rr) / beta)


def reference_added(pc, pr, rc, rr, beta=0.1):
    """Adds the reference log-ratio instead of subtracting it."""
    return -F.logsigmoid(beta * ((pc - pr) + (rc - rr)))


def log_of_sigmoid(pc, pr, rc, rr, beta=0.1):
    """log(sigmoid(x)): -inf (and NaN gradients) once sigmoid underflows."""
    return -torch.log(torch.sigmoid(beta * _h(pc, pr, rc, rr)))


def clamped_logits(pc, pr, rc, rr, beta=0.1):
    """Clamps beta*h to [-50, 50] 'for stability': wrong values for strongly mis-ordered pairs."""
    return -F.logsigmoid(torch.clamp(beta * _h(pc, pr, rc, rr), -50.0, 50.0))


def margin_in_float16(pc, pr, rc, rr, beta=0.1):
    """Computes the margin in float16 to save memory: overflow and large rounding errors."""
    return -F.logsigmoid(beta * _h(pc.half(), pr.half(), rc.half(), rr.half()).to(pc.dtype))


def detached_policy_plus_zero(pc, pr, rc, rr, beta=0.1):
    """Detaches the policy log-probs: the loss has the right value but trains nothing."""
    return -F.logsigmoid(beta * _h(pc.detach(), pr.detach(), rc, rr)) + 0.0 * pc


class _SigmoidLossWrongBackward(torch.autograd.Function):
    """-log sigma(beta h) with a hand-written backward that forgets the factor beta."""

    @staticmethod
    def forward(ctx, h, beta):
        ctx.save_for_backward(h)
        ctx.beta = beta
        return -F.logsigmoid(beta * h)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return -grad * torch.sigmoid(-ctx.beta * h), None  # should be -beta * sigma(-beta h)


def wrong_custom_backward(pc, pr, rc, rr, beta=0.1):
    """Right forward, wrong custom backward."""
    return _SigmoidLossWrongBackward.apply(_h(pc, pr, rc, rr), beta)


def inplace_mutation(pc, pr, rc, rr, beta=0.1):
    """Writes the log-ratios into its inputs to save memory."""
    with torch.no_grad():
        pc.sub_(rc)
        pr.sub_(rr)
    return -F.logsigmoid(beta * (pc - pr))


def batch_centered(pc, pr, rc, rr, beta=0.1):
    """Subtracts the batch-mean margin as a 'baseline': each loss depends on the other examples."""
    h = _h(pc, pr, rc, rr)
    return -F.logsigmoid(beta * (h - h.mean()))


def divides_by_fixed_batch(pc, pr, rc, rr, beta=0.1):
    """Reduces with sum / 8 (a configured batch size) instead of the mean."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)).sum() / 8


def cdpo_eps_swapped(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """cDPO with eps and 1 - eps exchanged."""
    z = beta * _h(pc, pr, rc, rr)
    return -label_smoothing * F.logsigmoid(z) - (1 - label_smoothing) * F.logsigmoid(-z)


def ipo_target_inverse_tau(pc, pr, rc, rr, beta=0.1):
    """IPO with the target margin 1/tau instead of 1/(2 tau)."""
    return (_h(pc, pr, rc, rr) - 1 / beta) ** 2


def ipo_absolute(pc, pr, rc, rr, beta=0.1):
    """IPO with an absolute instead of a squared error."""
    return (_h(pc, pr, rc, rr) - 1 / (2 * beta)).abs()


def chunked_off_by_chunk(pc, pr, rc, rr, beta=0.1):
    """Processes the batch in chunks of 64 but indexes the reference of every chunk from the start."""
    h = []
    for start in range(0, pc.shape[0], 64):
        n = min(64, pc.shape[0] - start)
        h.append((pc[start : start + n] - rc[:n]) - (pr[start : start + n] - rr[:n]))
    return -F.logsigmoid(beta * torch.cat(h))


def raises_always(pc, pr, rc, rr, beta=0.1):
    """Cannot be called at all."""
    raise NotImplementedError("todo")


def wrong_shape(pc, pr, rc, rr, beta=0.1):
    """Returns (B, 1)."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)).unsqueeze(-1)


def beta_unused(pc, pr, rc, rr, beta=0.1):
    """Accepts beta and never uses it."""
    return -F.logsigmoid(_h(pc, pr, rc, rr))


def only_chosen_reward(pc, pr, rc, rr, beta=0.1):
    """Drops the rejected reward: the loss of beta (log pi(y_w) - log pi_ref(y_w)) alone."""
    return -F.logsigmoid(beta * (pc - rc))


def batch_sorted(pc, pr, rc, rr, beta=0.1):
    """Returns the per-example losses sorted (for a 'top-k' log), not in batch order."""
    return torch.sort(-F.logsigmoid(beta * _h(pc, pr, rc, rr))).values


def absolute_margin(pc, pr, rc, rr, beta=0.1):
    """Uses |h|: any large margin, right or wrong, is rewarded."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr).abs())


def ipo_tau_as_beta(pc, pr, rc, rr, beta=0.1):
    """IPO written as (tau h - 1/2)^2: the right minimiser, but tau^2 times the loss and its gradient."""
    return (beta * _h(pc, pr, rc, rr) - 0.5) ** 2


def raw_log_ratios_as_rewards(pc, pr, rc, rr, beta=0.1):
    """Right loss; the returned rewards are the raw log-ratios, without beta."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)), (pc - rc).detach(), (pr - rr).detach()


def rewards_with_graph(pc, pr, rc, rr, beta=0.1):
    """Right loss and rewards, but the rewards keep the autograd graph (advice; a failure under strict)."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)), beta * (pc - rc), beta * (pr - rr)


_calls = [0]


def wrong_now_and_then(pc, pr, rc, rr, beta=0.1):
    """Right, except on one call in 40 (a cache, a race, a rarely taken branch), where it is 1 % off."""
    _calls[0] += 1
    out = -F.logsigmoid(beta * _h(pc, pr, rc, rr))
    return out * 1.01 if _calls[0] % 40 == 0 else out
