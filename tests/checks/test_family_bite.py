"""Each family property rejects a deliberately wrong implementation, and every bug here is caught.

A broken implementation is `impl(**coefficients) -> fn(pc, pr, rc, rr, chosen_lengths, rejected_lengths)`,
written independently of `dpo_ref.family` with one mistake each (the kind met in real trainers).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, settings

from tests.reference import test_family
from tests.reference.test_family import PROPERTIES

ls = F.logsigmoid


def _h(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def _hbar(pc, pr, rc, rr, nc, nr):
    return (pc - rc) / nc - (pr - rr) / nr


BROKEN = {
    # hinge: beta dropped; a soft hinge that is never exactly zero
    "hinge_beta_ignored": lambda beta: lambda pc, pr, rc, rr, nc, nr: torch.relu(1 - _h(pc, pr, rc, rr)),
    "hinge_softplus": lambda beta: lambda pc, pr, rc, rr, nc, nr: F.softplus(1 - beta * _h(pc, pr, rc, rr)),
    # IPO: TRL's loss_type without the length normalisation; target 1/tau instead of 1/(2 tau)
    "ipo_norm_on_sums": lambda tau: lambda pc, pr, rc, rr, nc, nr: (_h(pc, pr, rc, rr) - 1 / (2 * tau)) ** 2,
    "ipo_target_one_over_tau": lambda tau: (
        lambda pc, pr, rc, rr, nc, nr: (_hbar(pc, pr, rc, rr, nc, nr) - 1 / tau) ** 2
    ),
    # EXO with eps and 1 - eps swapped in the target distribution
    "exo_eps_swapped": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            torch.sigmoid(beta * _h(pc, pr, rc, rr)) * (ls(beta * _h(pc, pr, rc, rr)) - math.log(label_smoothing))
            + torch.sigmoid(-beta * _h(pc, pr, rc, rr))
            * (ls(-beta * _h(pc, pr, rc, rr)) - math.log1p(-label_smoothing))
        )
    ),
    # NCA written on the margin (so invariant under f(x)); NCA with weight 1 on the chosen negative term
    "nca_on_margin": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: (
            -ls(beta * _h(pc, pr, rc, rr)) - 0.5 * ls(-beta * _h(pc, pr, rc, rr)) - 0.5 * math.log(0.5)
        )
    ),
    "nca_chosen_weight_one": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: -ls(beta * (pc - rc)) - ls(-beta * (pc - rc)) - 0.5 * ls(-beta * (pr - rr))
    ),
    # robust DPO computed as cDPO; robust DPO without the 1/(1 - 2 eps)
    "robust_as_cdpo": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            -(1 - label_smoothing) * ls(beta * _h(pc, pr, rc, rr)) - label_smoothing * ls(-beta * _h(pc, pr, rc, rr))
        )
    ),
    "robust_no_normaliser": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            -(1 - label_smoothing) * ls(beta * _h(pc, pr, rc, rr)) + label_smoothing * ls(-beta * _h(pc, pr, rc, rr))
        )
    ),
    # BCO without its reward shift delta (TRL 1.16's form)
    "bco_delta_ignored": lambda beta, delta: (
        lambda pc, pr, rc, rr, nc, nr: -ls(beta * (pc - rc)) - ls(-beta * (pr - rr))
    ),
    # hard SPPO with targets +-beta/2 instead of +-1/(2 beta)
    "sppo_targets_beta_over_two": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: (pc - rc - beta / 2) ** 2 + (pr - rr + beta / 2) ** 2
    ),
    # AOT without the sorting; unpaired AOT computed as the paired one
    "aot_unsorted": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            -(1 - label_smoothing) * ls(beta * _h(pc, pr, rc, rr)) - label_smoothing * ls(-beta * _h(pc, pr, rc, rr))
        )
    ),
    "aot_unpaired_as_paired": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            -(1 - label_smoothing) * ls(beta * (torch.sort(pc - pr).values - torch.sort(rc - rr).values))
            - label_smoothing * ls(-beta * (torch.sort(pc - pr).values - torch.sort(rc - rr).values))
        )
    ),
    # APO-zero with the rejected sign flipped; APO-down computed as APO-zero
    "apo_zero_rejected_sign": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: 1 - torch.sigmoid(beta * (pc - rc)) + 1 - torch.sigmoid(beta * (pr - rr))
    ),
    "apo_down_as_zero": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: 1 - torch.sigmoid(beta * (pc - rc)) + torch.sigmoid(beta * (pr - rr))
    ),
    # DiscoPOP multiplying sigma(rho/tau) by exp(-rho) (0 * inf = NaN); tau multiplying instead of dividing
    "discopop_naive_exp": lambda beta, tau: (
        lambda pc, pr, rc, rr, nc, nr: (
            (1 - torch.sigmoid(beta * _h(pc, pr, rc, rr) / tau)) * -ls(beta * _h(pc, pr, rc, rr))
            + torch.sigmoid(beta * _h(pc, pr, rc, rr) / tau) * torch.exp(-beta * _h(pc, pr, rc, rr))
        )
    ),
    "discopop_tau_inverted": lambda beta, tau: (
        lambda pc, pr, rc, rr, nc, nr: (
            torch.sigmoid(-beta * _h(pc, pr, rc, rr) * tau) * -ls(beta * _h(pc, pr, rc, rr))
            + torch.exp(ls(beta * _h(pc, pr, rc, rr) * tau) - beta * _h(pc, pr, rc, rr))
        )
    ),
    # SFT averaged per sequence instead of per token over the batch
    "sft_per_sequence_mean": lambda: lambda pc, pr, rc, rr, nc, nr: -pc / nc,
    # sigmoid_norm with the count one too large (a completion starting at position 0 counted, unscored)
    "sigmoid_norm_count_off_by_one": lambda beta: (
        lambda pc, pr, rc, rr, nc, nr: -ls(beta * _hbar(pc, pr, rc, rr, nc + 1, nr + 1))
    ),
    # SimPO with gamma inside the beta scaling
    "simpo_gamma_scaled_by_beta": lambda beta, gamma: (
        lambda pc, pr, rc, rr, nc, nr: -ls(beta * (pc / nc - pr / nr - gamma))
    ),
    # DPO whose rejected log-prob is detached (no gradient pushes it down)
    "sigmoid_detached_rejected": lambda beta: lambda pc, pr, rc, rr, nc, nr: -ls(beta * _h(pc, pr.detach(), rc, rr)),
    # cDPO with eps and 1 - eps swapped
    "cdpo_smoothing_swapped": lambda beta, label_smoothing: (
        lambda pc, pr, rc, rr, nc, nr: (
            -label_smoothing * ls(beta * _h(pc, pr, rc, rr)) - (1 - label_smoothing) * ls(-beta * _h(pc, pr, rc, rr))
        )
    ),
}

# (property, variant it claims to be) -> the broken implementations it must reject
BITES = {
    ("values_and_gradients", "hinge"): ["hinge_beta_ignored"],
    ("hinge_zero_exactly_past_margin", "hinge"): ["hinge_softplus", "hinge_beta_ignored"],
    ("values_and_gradients", "ipo"): ["ipo_norm_on_sums", "ipo_target_one_over_tau"],
    ("ipo_flip_noise_optimum", "ipo"): ["ipo_target_one_over_tau"],
    ("optimum", "exo_pair"): ["exo_eps_swapped"],
    ("shift_invariance_or_not", "nca_pair"): ["nca_on_margin"],
    ("optimum", "nca_pair"): ["nca_chosen_weight_one"],
    ("robust_unbiased_no_minimiser", "robust"): ["robust_as_cdpo", "robust_no_normaliser"],
    ("values_and_gradients", "bco_pair"): ["bco_delta_ignored"],
    ("optimum", "sppo_hard"): ["sppo_targets_beta_over_two"],
    ("batch_structure", "aot"): ["aot_unsorted"],
    ("shift_invariance_or_not", "aot_unpaired"): ["aot_unpaired_as_paired"],
    ("values_and_gradients", "apo_zero"): ["apo_zero_rejected_sign"],
    ("values_and_gradients", "apo_down"): ["apo_down_as_zero"],
    ("bounds_and_finiteness", "discopop"): ["discopop_naive_exp"],
    ("values_and_gradients", "discopop"): ["discopop_tau_inverted"],
    ("values_and_gradients", "sft"): ["sft_per_sequence_mean"],
    ("values_and_gradients", "sigmoid_norm"): ["sigmoid_norm_count_off_by_one"],
    ("values_and_gradients", "simpo"): ["simpo_gamma_scaled_by_beta"],
    ("values_and_gradients", "sigmoid"): ["sigmoid_detached_rejected"],
    ("optimum", "cdpo"): ["cdpo_smoothing_swapped"],
}


def test_every_bug_is_caught_and_every_property_bites():
    caught = {b for names in BITES.values() for b in names}
    assert caught == set(BROKEN), set(BROKEN) ^ caught
    assert {p for p, _ in BITES} == set(PROPERTIES), set(PROPERTIES) - {p for p, _ in BITES}


@pytest.mark.parametrize(
    "prop_name, variant, broken_name", [(p, v, b) for (p, v), names in sorted(BITES.items()) for b in names]
)
def test_property_rejects_broken_implementation(prop_name, variant, broken_name, monkeypatch):
    # only the failure matters: up to 60 examples (it stops at the first failing one), no shrinking
    monkeypatch.setattr(test_family, "FEW", settings(max_examples=60, phases=[Phase.explicit, Phase.generate]))
    run = PROPERTIES[prop_name](BROKEN[broken_name], variant)
    with pytest.raises(AssertionError):
        run()
