"""Every property rejects at least one deliberately broken implementation, and every bug is caught.

BITES pairs each property with the broken implementations it must reject (see `implementations.py`).
"""

import pytest
from hypothesis import Phase, settings

from tests.implementations import BROKEN
from tests.property_suite import PROPERTIES

BITES = {
    "values_match_closed_form": ["no_reference", "beta_ignored", "beta_outside", "cdpo_smoothing_swapped",
                                 "ipo_tau_as_beta", "only_chosen_reward", "batch_sorted", "absolute_margin"],
    "z_cancellation_reward_equivalence": ["only_chosen_reward"],
    "ln2_at_initialisation": ["no_reference", "beta_outside", "ipo_target_one_over_tau"],
    "gradient_signs": ["chosen_rejected_swapped", "wrong_backward", "detached_policy"],
    "gradients_match_closed_form": ["wrong_backward", "detached_policy", "beta_ignored"],
    "ipo_fixed_point": ["ipo_target_one_over_tau", "ipo_tau_as_beta"],
    "cdpo_finite_optimum": ["cdpo_smoothing_swapped"],
    "swap_maps_margin_to_minus_margin": ["chosen_rejected_swapped", "absolute_margin"],
    "loss_falls_as_margin_grows": ["absolute_margin", "chosen_rejected_swapped"],
    "batch_permutation_equivariance": ["batch_sorted"],
    "per_example_independence": ["batch_centred_margin"],
    "float32_agrees_with_float64": ["half_precision"],
    "finite_at_extremes": ["log_of_sigmoid"],
    "inputs_unmodified": ["in_place"],
    "rejected_likelihood_collapses_under_dpo": ["chosen_rejected_swapped", "ipo_target_one_over_tau"],
    "logps_match_float64_loop": ["logps_no_shift", "logps_mask_ignored", "logps_divided_by_all_tokens",
                                 "logps_softmax_wrong_dim"],
    "logps_padding_invariance": ["logps_assumes_left_padding", "logps_mask_ignored"],
    "logps_respect_shift": ["logps_no_shift", "logps_detached"],
}  # fmt: skip


def test_every_property_bites_and_every_bug_is_caught():
    assert set(BITES) == set(PROPERTIES), set(BITES) ^ set(PROPERTIES)
    caught = {name for names in BITES.values() for name in names}
    assert caught == set(BROKEN), f"bugs no property is shown to catch: {set(BROKEN) - caught}"
    assert len(BROKEN) >= 8


@pytest.mark.parametrize("prop_name, broken_name", [(p, b) for p, names in sorted(BITES.items()) for b in names])
def test_property_rejects_broken_implementation(prop_name, broken_name):
    run = PROPERTIES[prop_name](BROKEN[broken_name])
    if hasattr(run, "hypothesis"):  # only the failure matters here: skip the (slow) shrinking phase
        run = settings(settings(), phases=[Phase.explicit, Phase.reuse, Phase.generate])(run)
    with pytest.raises(AssertionError):
        run()
