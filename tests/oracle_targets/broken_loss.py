"""Broken DPO / cDPO / IPO losses, one realistic mistake each: the oracle must reject every one.

`EXPECTED` maps each to (variant, a check that must fail), so the meta-tests also show *which*
check catches it.
"""

import torch
import torch.nn.functional as F


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def wrong_sign(pc, pr, rc, rr, beta=0.1):
    """Prefers the rejected response."""
    return -F.logsigmoid(-beta * _h(pc, pr, rc, rr))


def no_reference(pc, pr, rc, rr, beta=0.1):
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


def naive_log_sigmoid(pc, pr, rc, rr, beta=0.1):
    """log(sigmoid(x)): -inf (and NaN gradients) once sigmoid underflows."""
    return -torch.log(torch.sigmoid(beta * _h(pc, pr, rc, rr)))


def clamped_logits(pc, pr, rc, rr, beta=0.1):
    """Clamps beta*h to [-50, 50] 'for stability': wrong values for strongly mis-ordered pairs."""
    return -F.logsigmoid(torch.clamp(beta * _h(pc, pr, rc, rr), -50.0, 50.0))


def half_precision_margin(pc, pr, rc, rr, beta=0.1):
    """Computes the margin in float16 to save memory: overflow and large rounding errors."""
    return -F.logsigmoid(beta * _h(pc.half(), pr.half(), rc.half(), rr.half()).to(pc.dtype))


def detached_policy(pc, pr, rc, rr, beta=0.1):
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


def ipo_target_one_over_tau(pc, pr, rc, rr, beta=0.1):
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


def beta_ignored(pc, pr, rc, rr, beta=0.1):
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


def rewards_without_beta(pc, pr, rc, rr, beta=0.1):
    """Right loss; the returned rewards are the raw log-ratios, without beta."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)), (pc - rc).detach(), (pr - rr).detach()


def rewards_with_graph(pc, pr, rc, rr, beta=0.1):
    """Right loss and rewards, but the rewards keep the autograd graph (advice; a failure under strict)."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr)), beta * (pc - rc), beta * (pr - rr)


# name -> (variant, the checks that must fail); every check of the catalogue is in some entry (meta-tested)

_calls = [0]


def wrong_now_and_then(pc, pr, rc, rr, beta=0.1):
    """Right, except on one call in 40 (a cache, a race, a rarely taken branch), where it is 1 % off."""
    _calls[0] += 1
    out = -F.logsigmoid(beta * _h(pc, pr, rc, rr))
    return out * 1.01 if _calls[0] % 40 == 0 else out


EXPECTED = {
    "wrong_now_and_then": ("dpo", ("repeatable",)),
    "wrong_sign": ("dpo", ("values", "gradient_signs", "swap", "monotone")),
    "no_reference": ("dpo", ("values", "init")),
    "beta_outside": ("dpo", ("values", "gradients")),
    "beta_divides": ("dpo", ("values",)),
    "beta_ignored": ("dpo", ("values", "gradients")),
    "reference_added": ("dpo", ("values",)),
    "naive_log_sigmoid": ("dpo", ("finite",)),
    "clamped_logits": ("dpo", ("values",)),
    "half_precision_margin": ("dpo", ("values_float32",)),
    "detached_policy": ("dpo", ("gradients",)),
    "wrong_custom_backward": ("dpo", ("gradients",)),
    "inplace_mutation": ("dpo", ("inputs_unmodified",)),
    "batch_centered": ("dpo", ("batch_independence",)),
    "batch_sorted": ("dpo", ("permutation",)),
    "only_chosen_reward": ("dpo", ("z_cancellation",)),
    "absolute_margin": ("dpo", ("swap", "monotone")),
    "divides_by_fixed_batch": ("dpo", ("reduction",)),
    "cdpo_eps_swapped": ("cdpo", ("values", "optimum")),
    "ipo_target_one_over_tau": ("ipo", ("values", "optimum")),
    "ipo_tau_as_beta": ("ipo", ("values", "gradients")),
    "ipo_absolute": ("ipo", ("gradients",)),
    "chunked_off_by_chunk": ("dpo", ("large_batch",)),
    "raises_always": ("dpo", ("call",)),
    "wrong_shape": ("dpo", ("call",)),
    "rewards_without_beta": ("dpo", ("rewards",)),
}
# advisory checks: fail only under strict
STRICT_EXPECTED = {
    "rewards_with_graph": ("dpo", ("rewards_detached",)),
}
