"""The core property suite, one factory per mathematical property.

`PROPERTIES[name](impl)` returns a zero-argument test body (Hypothesis-driven where inputs vary) that
raises AssertionError if `impl` breaks the property. `test_properties.py` runs every property on
dpo_ref; `test_properties_bite.py` runs them on the broken implementations in `implementations.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from dpo_ref import properties as P
from dpo_ref import strategies as dst
from dpo_ref.properties import LossSpec
from tests.implementations import Implementation

PROPERTIES: dict[str, Callable[[Implementation], Callable[[], None]]] = {}


def prop(fn):
    PROPERTIES[fn.__name__] = fn
    return fn


def _shifts(size: int):
    return st.lists(st.floats(-1e3, 1e3), min_size=size, max_size=size).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )


# --- loss level ------------------------------------------------------------------------------------


@prop
def values_match_closed_form(impl):
    """DPO -log sigma(beta h), cDPO and IPO (h - 1/(2 tau))^2, per example, in float64."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        P.check_values(impl.loss_fn(spec), spec, batch.tensors())

    return run


@prop
def z_cancellation_reward_equivalence(impl):
    """Adding f(x) to both rewards of a prompt leaves losses and gradients unchanged."""

    @given(data=st.data(), batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(data, batch, spec):
        shift = data.draw(_shifts(batch.size), label="f(x)")
        P.check_z_cancellation(impl.loss_fn(spec), spec, batch.tensors(), shift)

    return run


@prop
def ln2_at_initialisation(impl):
    """At pi = pi_ref: L = ln 2 (DPO, cDPO), 1/(4 tau^2) (IPO), and dL/dh = -beta/2 for DPO."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        pc, pr, *_ = batch.tensors()
        P.check_init(impl.loss_fn(spec), spec, pc, pr)

    return run


@prop
def gradient_signs(impl):
    """DPO: dL/d log pi(y_w) < 0 < dL/d log pi(y_l), equal size, beta sigma(-beta h)/B under the mean."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs(("dpo",)))
    def run(batch, spec):
        P.check_gradient_signs(impl.loss_fn(spec), spec, batch.tensors())

    return run


@prop
def gradients_match_closed_form(impl):
    """Autograd in float64 equals dL/dh from the closed form, for DPO, cDPO and IPO."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        P.check_gradients(impl.loss_fn(spec), spec, batch.tensors())

    return run


@prop
def ipo_fixed_point(impl):
    """IPO: h* = 1/(2 tau) has zero gradient and is a strict minimum of the convex quadratic."""

    @given(batch=dst.preference_batches(), tau=dst.taus(), delta=st.floats(1e-2, 10.0))
    def run(batch, tau, delta):
        spec = LossSpec("ipo", tau=tau)
        P.check_optimum(impl.loss_fn(spec), spec, batch.tensors()[2:], delta)
        h = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64) / tau  # convex: second differences > 0
        zeros = torch.zeros_like(h)
        out = impl.loss_fn(spec)(h, zeros, zeros, zeros).double()
        second = out[:-2] - 2 * out[1:-1] + out[2:]
        expected = 2 * (h[1] - h[0]) ** 2  # exact second difference of (h - c)^2
        assert torch.allclose(second, expected.expand_as(second), rtol=1e-9), (second, expected)

    return run


@prop
def cdpo_finite_optimum(impl):
    """cDPO: zero gradient and a strict minimum at h* = ln((1 - eps)/eps) / beta."""

    @given(batch=dst.preference_batches(min_value=-100.0), spec=dst.loss_specs(("cdpo",)), rel=st.floats(0.05, 1.0))
    def run(batch, spec, rel):
        P.check_optimum(impl.loss_fn(spec), spec, batch.tensors()[2:], rel / spec.beta)

    return run


@prop
def swap_maps_margin_to_minus_margin(impl):
    """Swapping chosen and rejected maps h to -h."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        P.check_swap(impl.loss_fn(spec), spec, batch.tensors())

    return run


@prop
def loss_falls_as_margin_grows(impl):
    """DPO's loss is non-increasing in h, strictly falling where the closed form visibly falls."""

    @given(margins=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=10), spec=dst.loss_specs(("dpo",)))
    def run(margins, spec):
        P.check_monotone(impl.loss_fn(spec), spec, torch.tensor(margins, dtype=torch.float64))

    return run


@prop
def batch_permutation_equivariance(impl):
    """Permuting the batch permutes the per-example losses."""

    @given(data=st.data(), batch=dst.preference_batches(min_size=2), spec=dst.loss_specs())
    def run(data, batch, spec):
        perm = data.draw(st.permutations(range(batch.size)), label="perm")
        P.check_permutation(impl.loss_fn(spec), spec, batch.tensors(), torch.tensor(perm))

    return run


@prop
def per_example_independence(impl):
    """Changing one example's log-probs leaves the other examples' losses unchanged."""

    @given(
        data=st.data(), batch=dst.preference_batches(min_size=2), other=dst.preference_batches(), spec=dst.loss_specs()
    )
    def run(data, batch, other, spec):
        index = data.draw(st.integers(0, batch.size - 1), label="index")
        P.check_independence(impl.loss_fn(spec), spec, batch.tensors(), other.tensors(), index)

    return run


@prop
def float32_agrees_with_float64(impl):
    """float32 and bfloat16 inputs give the float64 closed form within the dtype's tolerance."""

    @given(
        batch=dst.preference_batches(), spec=dst.loss_specs(), dtype=st.sampled_from([torch.float32, torch.bfloat16])
    )
    def run(batch, spec, dtype):
        P.check_values(impl.loss_fn(spec), spec, batch.tensors(dtype))

    return run


@prop
def finite_at_extremes(impl):
    """Values and gradients are finite in float32 for |beta h| up to 1e4 and beyond."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        P.check_finite(impl.loss_fn(spec), spec, batch.tensors(torch.float32))

    return run


@prop
def inputs_unmodified(impl):
    """The loss does not write into its input tensors."""

    @given(batch=dst.preference_batches(), spec=dst.loss_specs())
    def run(batch, spec):
        P.check_inputs_unmodified(impl.loss_fn(spec), spec, batch.tensors())

    return run


def tabular_policy_run(impl: Implementation, spec: LossSpec, steps: int, lr: float) -> tuple[list[float], float]:
    """Gradient descent on a 4-way softmax policy for one pair (y_w = 0, y_l = 1), uniform reference.

    Returns the trajectory of pi(y_l) and the final margin h.
    """
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    reference = torch.log_softmax(torch.zeros(4, dtype=torch.float64), -1)
    fn = impl.loss_fn(spec)
    rejected_probs = []
    for _ in range(steps):
        logp = torch.log_softmax(theta, -1)
        loss = fn(logp[0:1], logp[1:2], reference[0:1], reference[1:2]).mean()
        (grad,) = torch.autograd.grad(loss, theta)
        with torch.no_grad():
            theta -= lr * grad
        rejected_probs.append(math.exp(float(logp[1].detach())))
    logp = torch.log_softmax(theta.detach(), -1)
    return rejected_probs, float((logp[0] - reference[0]) - (logp[1] - reference[1]))


@prop
def rejected_likelihood_collapses_under_dpo(impl):
    """Deterministic preference: DPO drives pi(y_l) towards 0 for every beta; IPO's h settles at 1/(2 tau)."""

    def run():
        for beta in (0.1, 0.5, 1.0, 5.0):
            probs, _ = tabular_policy_run(impl, LossSpec("dpo", beta=beta), steps=1000, lr=10.0 / beta)
            assert all(b <= a + 1e-12 for a, b in zip(probs, probs[1:])), f"pi(y_l) rose at beta={beta}"
            assert probs[-1] < 1e-3, f"DPO with beta={beta}: pi(y_l) = {probs[-1]:.3g} did not fall towards 0"
        for tau in (0.1, 0.5, 1.0):
            probs, h = tabular_policy_run(impl, LossSpec("ipo", tau=tau), steps=500, lr=0.1)
            assert abs(h - 1 / (2 * tau)) < 1e-6, f"IPO with tau={tau}: margin {h} did not settle at {1 / (2 * tau)}"
            assert probs[-1] > 1e-3, f"IPO with tau={tau}: pi(y_l) = {probs[-1]:.3g} collapsed"

    return run


# --- log-prob level --------------------------------------------------------------------------------


def _logps(impl: Implementation, average: bool = False):
    return lambda logits, labels: impl.sequence_logps(logits, labels, average=average)


@prop
def logps_match_float64_loop(impl):
    """sequence_logps equals an independent float64 loop over the scored tokens (sum and mean)."""

    @given(batch=dst.token_batches(), average=st.booleans(), dtype=st.sampled_from([torch.float64, torch.float32]))
    def run(batch, average, dtype):
        P.check_logps_values(_logps(impl, average), batch, average=average, dtype=dtype)

    return run


@prop
def logps_padding_invariance(impl):
    """Left vs right padding and appended padding do not change the log-probs."""

    @given(batch=dst.token_batches())
    def run(batch):
        P.check_logps_padding(_logps(impl), batch)

    return run


@prop
def logps_respect_shift(impl):
    """d logps / d logits[t] is one-hot(y_{t+1}) - softmax on scored positions and 0 elsewhere."""

    @given(batch=dst.token_batches(max_batch=2, max_vocab=7))
    def run(batch):
        P.check_logps_gradients(_logps(impl), batch)

    return run
