"""Every member of the loss family (`dpo_ref.family`) has the properties that identify it.

The checks live in `dpo_ref.checks.family_properties` (independent mpmath reference); `test_family_bite.py`
shows each one rejecting a deliberately wrong implementation. `PROPERTIES[name](fn_for, variant)`
returns a test body, so both files drive the same statements.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_ref.checks import family_properties as FP
from dpo_ref.checks import strategies as dst
from dpo_ref.checks.family_properties import FamilySpec
from dpo_ref.errors import InputError
from dpo_ref.family import LOSS_FAMILY

# The mpmath reference costs ~10 ms a row, so these tests draw a tenth of the profile's examples (3 in
# `ci`, 100 in `thorough`) on batches of up to 4 pairs; 18 variants x 5 properties share the budget.
FEW = settings(max_examples=max(3, settings().max_examples // 10))
BATCHES = dst.preference_batches(max_size=4)


def reference_impl(variant: str):
    return lambda **coefficients: LOSS_FAMILY[variant].bind(**coefficients)


def _draw(data, variant: str, batch_kw: dict | None = None):
    batch = data.draw(dst.preference_batches(max_size=4, **(batch_kw or {})), label="batch")
    coefficients = data.draw(dst.family_coefficients(variant), label="coefficients")
    lengths = data.draw(dst.scored_token_counts(batch.size), label="lengths")
    return batch, FamilySpec(variant, coefficients), lengths


PROPERTIES = {}
WITNESS = {"beta": 0.5, "tau": 0.5, "label_smoothing": 0.1, "gamma": 0.5, "delta": 0.3}  # one fixed point


def prop(fn):
    PROPERTIES[fn.__name__] = fn
    return fn


@prop
def values_and_gradients(impl, variant):
    """Values and gradients equal the formula in float64 and float32 (tolerance: family_properties docstring)."""

    @FEW
    @given(data=st.data(), dtype=st.sampled_from([torch.float64, torch.float32]))
    def run(data, dtype):
        batch, spec, lengths = _draw(data, variant)
        fn = impl(**spec.coefficients)
        FP.check_values(fn, spec, batch.tensors(dtype), lengths)
        FP.check_gradients(fn, spec, batch.tensors(dtype), lengths)

    return run


@prop
def bounds_and_finiteness(impl, variant):
    """Within the variant's bounds; finite wherever the formula is, at extreme margins too."""

    @FEW
    @given(data=st.data(), dtype=st.sampled_from([torch.float64, torch.float32]))
    def run(data, dtype):
        batch, spec, lengths = _draw(data, variant)
        fn = impl(**spec.coefficients)
        FP.check_bounds(fn, spec, batch.tensors(dtype), lengths)
        FP.check_finite(fn, spec, batch.tensors(dtype), lengths)

    return run


@prop
def shift_invariance_or_not(impl, variant):
    """Adding f(x) to both policy log-probs: invariant exactly where the registry says, and otherwise the
    loss moves to the formula's value (a fixed witness shows the move is real)."""
    claim = LOSS_FAMILY[variant].shift_invariant

    @FEW
    @given(data=st.data(), same=st.booleans())
    def drawn(data, same):
        batch, spec, lengths = _draw(data, variant, {"min_value": -100.0})
        if same:  # equal lengths and one f for the batch: where the conditional invariances apply
            lengths = (lengths[0], lengths[0].clone())
        values = st.floats(-50.0, 50.0)
        shift = data.draw(st.lists(values, min_size=batch.size, max_size=batch.size), label="f(x)")
        shift = torch.tensor([shift[0]] * batch.size if same else shift, dtype=torch.float64)
        FP.check_shift(impl(**spec.coefficients), spec, claim, batch.tensors(), lengths, shift)

    def run():
        drawn()
        spec = FamilySpec(variant, {p.name: WITNESS.get(p.name, p.default) for p in LOSS_FAMILY[variant].params})
        FP.check_not_invariant(impl(**spec.coefficients), spec, claim)

    return run


@prop
def batch_structure(impl, variant):
    """Per-example losses permute with the batch; AOT's quantile losses do not move."""

    @FEW
    @given(data=st.data())
    def run(data):
        batch, spec, lengths = _draw(data, variant)
        perm = torch.tensor(data.draw(st.permutations(range(batch.size)), label="perm"))
        FP.check_batch_structure(impl(**spec.coefficients), spec, batch.tensors(), lengths, perm)

    return run


@prop
def optimum(impl, variant):
    """The registry's optimum: zero gradient and a strict minimum (cDPO/EXO sigma(beta h*) = 1 - eps, IPO
    1/(2 tau), SPPO rho = +-1/(2 beta), NCA rho_w = ln 2 / beta with the rejected side still pushed down)."""

    @FEW
    @given(data=st.data(), rel=st.floats(0.05, 1.0))
    def run(data, rel):
        batch, spec, lengths = _draw(data, variant, {"min_value": -100.0})
        fn = impl(**spec.coefficients)
        scale = spec.coefficients.get("beta", spec.coefficients.get("tau", 1.0))
        opt = LOSS_FAMILY[variant].optimum(**spec.coefficients)
        FP.check_optimum(fn, spec, opt, batch.tensors()[2:], lengths, rel / scale)

    return run


VARIANT_PROPERTIES = sorted(PROPERTIES)


# --- properties of single variants ---------------------------------------------------------------


@prop
def hinge_zero_exactly_past_margin(impl, variant="hinge"):
    @FEW
    @given(batch=dst.preference_batches(max_size=4), beta=dst.betas())
    def run(batch, beta):
        FP.check_hinge_margin(impl(beta=beta), FamilySpec("hinge", {"beta": beta}), batch.tensors())
        # and on points placed either side of the margin
        h = torch.tensor([0.5, 0.999, 1.001, 2.0, 100.0], dtype=torch.float64) / beta
        z = torch.zeros_like(h)
        FP.check_hinge_margin(impl(beta=beta), FamilySpec("hinge", {"beta": beta}), (h, z, z, z))

    return run


@prop
def ipo_flip_noise_optimum(impl, variant="ipo"):
    """IPO (summed or length-normalised) under flip noise eps: h* = (1 - 2 eps)/(2 tau)."""

    @FEW
    @given(data=st.data(), eps=st.floats(0.0, 0.45), rel=st.floats(0.05, 1.0))
    def run(data, eps, rel):
        batch, spec, lengths = _draw(data, variant, {"min_value": -100.0})
        tau = spec.coefficients["tau"]
        FP.check_noisy_ipo_optimum(impl(tau=tau), spec, eps, batch.tensors()[2:], lengths, rel / tau)

    return run


@prop
def robust_unbiased_no_minimiser(impl, variant="robust"):
    """(1 - eps) L(h) + eps L(-h) = -log sigma(beta h); L falls strictly, without a finite minimiser."""

    @FEW
    @given(data=st.data(), step=st.floats(0.1, 10.0))
    def run(data, step):
        batch, spec, _ = _draw(data, variant, {"min_value": -100.0})
        beta = spec.coefficients["beta"]
        FP.check_robust_unbiased(impl(**spec.coefficients), spec, batch.tensors(), step / beta)

    return run


SINGLE = {"hinge_zero_exactly_past_margin": "hinge", "ipo_flip_noise_optimum": "ipo",
          "robust_unbiased_no_minimiser": "robust"}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(LOSS_FAMILY))
@pytest.mark.parametrize("name", VARIANT_PROPERTIES)
def test_family_property(name, variant):
    PROPERTIES[name](reference_impl(variant), variant)()


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_variant_property(name):
    PROPERTIES[name](reference_impl(SINGLE[name]), SINGLE[name])()


def test_ipo_sum_flip_noise_optimum():
    PROPERTIES["ipo_flip_noise_optimum"](reference_impl("ipo_sum"), "ipo_sum")()


def test_registry_names_every_trl_loss_type():
    trl_types = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]  # fmt: skip
    assert sorted(v.trl for v in LOSS_FAMILY.values() if v.trl) == sorted(trl_types)
    assert {"robust", "simpo", "cdpo"} <= set(LOSS_FAMILY)
    for v in LOSS_FAMILY.values():
        assert v.fn.__doc__ and "L" in v.fn.__doc__ and "=" in v.fn.__doc__, v.name
        if v.trl and v.fn.__module__ == "dpo_ref.family":
            assert "dpo_trainer.py:" in v.fn.__doc__, v.name
        assert v.shift_invariant in ("yes", "no", "equal_lengths", "batch_constant")


@pytest.mark.parametrize(
    "variant, kwargs, match",
    [
        ("hinge", {"beta": 0.0}, "beta"),
        ("exo_pair", {"label_smoothing": 0.0}, r"label_smoothing must be in \(0, 0.5\)"),
        ("robust", {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ("aot", {"label_smoothing": -0.1}, "label_smoothing"),
        ("discopop", {"tau": float("nan")}, "tau"),
        ("simpo", {"gamma": -1.0}, "gamma must be a non-negative"),
        ("bco_pair", {"delta": float("inf")}, "delta must be a finite"),
    ],
)
def test_bad_coefficients_are_named(variant, kwargs, match):
    x = torch.tensor([-1.0, -2.0])
    n = torch.tensor([1, 2])
    kw = {"chosen_lengths": n, "rejected_lengths": n} if LOSS_FAMILY[variant].needs_lengths else {}
    with pytest.raises(InputError, match=match):
        LOSS_FAMILY[variant].fn(x, x, x, x, **kw, **kwargs)


@pytest.mark.parametrize("variant", ["ipo", "sigmoid_norm", "simpo", "sft"])
def test_lengths_required_and_checked(variant):
    x = torch.tensor([-1.0, -2.0])
    fn = LOSS_FAMILY[variant].fn
    with pytest.raises(InputError, match="chosen_lengths"):
        fn(x, x, x, x, chosen_lengths=None, rejected_lengths=torch.tensor([1, 1]))
    with pytest.raises(InputError, match=r"chosen_lengths must be >= 1 .* got 0 at index 1"):
        fn(x, x, x, x, chosen_lengths=torch.tensor([3, 0]), rejected_lengths=torch.tensor([1, 1]))
    with pytest.raises(InputError, match="chosen_lengths has shape"):
        fn(x, x, x, x, chosen_lengths=torch.tensor([3]), rejected_lengths=torch.tensor([1, 1]))
