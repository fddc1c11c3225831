"""The gradient checks call the target as trainers do: the reference log-probs not requiring grad.

Trainers compute the reference log-probs under `torch.no_grad()` or load them precomputed, so a loss that is
right only when every input requires grad is wrong where it is used. The checks call the target both ways
(dpo_ref.checks.properties.grad_leaves); a loss that branches on `requires_grad` is caught, and correct
losses that detach, or never differentiate through, the references still conform.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dpo_ref


def right_only_with_grad_references(pc, pr, rc, rr, beta=0.1):
    """Treats references that do not require grad as absent (zeros): the bug trainers would hit."""
    if not rc.requires_grad:
        rc, rr = rc * 0, rr * 0
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def hinge_right_only_with_grad_references(pc, pr, rc, rr, beta=0.1):
    if not rr.requires_grad:
        rr = rr.detach() * 0.5
    return torch.relu(1 - beta * ((pc - rc) - (pr - rr)))


def detaches_references(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc.detach()) - (pr - rr.detach())))


def under_no_grad_references(pc, pr, rc, rr, beta=0.1):
    with torch.no_grad():
        ref = rc - rr
    return F.softplus(-beta * ((pc - pr) - ref))


@pytest.mark.parametrize(
    "fn, variant", [(right_only_with_grad_references, "dpo"), (hinge_right_only_with_grad_references, "hinge")]
)
def test_a_loss_right_only_when_references_require_grad_fails(fn, variant):
    report = dpo_ref.verify(fn, variant=variant, checks=["gradients"], max_examples=20)
    assert not report.passed
    assert "references without grad, as trainers pass them" in report["gradients"].message


def test_its_reproduction_calls_it_as_trainers_do():
    from tests.oracle.test_oracle import run_reproduction

    report = dpo_ref.verify(right_only_with_grad_references, checks=["gradients"], max_examples=20)
    assert "rc.clone(), rr.clone()]" in report["gradients"].reproduction  # references without requires_grad
    run_reproduction(report["gradients"])  # ends in its own AssertionError: the disagreement reproduces


@pytest.mark.parametrize("fn", [detaches_references, under_no_grad_references])
def test_correct_losses_that_never_differentiate_the_references_conform(fn):
    assert dpo_ref.verify(fn, checks=["gradients", "values"], max_examples=20).passed


class Agreeable(torch.Tensor):
    """A tensor whose comparisons always agree: it would pass value checks done with `==` and `<=`."""

    def __eq__(self, other):
        return torch.ones(self.shape, dtype=torch.bool)

    __le__ = __eq__


def subclass_output(pc, pr, rc, rr, beta=0.1):
    return (-F.logsigmoid(beta * (pc - pr))).as_subclass(Agreeable)  # wrong, and hiding it


def complex_output(pc, pr, rc, rr, beta=0.1):
    right = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    return torch.complex(right, torch.ones_like(right))  # a real part that is right, an imaginary one that is not


def parameter_output(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))  # plain; control for the two above


@pytest.mark.parametrize("fn, says", [(subclass_output, "torch.Tensor subclass"), (complex_output, "complex tensor")])
def test_values_are_checked_on_plain_real_tensors_only(fn, says):
    report = dpo_ref.verify(fn, max_examples=5)
    assert not report.passed and says in report["call"].message


def test_logps_subclass_output_is_refused():
    def logps(logits, labels):
        from dpo_ref.logps import sequence_logps

        return sequence_logps(logits, labels).as_subclass(Agreeable)

    report = dpo_ref.verify(logps, level="logps", max_examples=5)
    assert not report.passed
    assert any("torch.Tensor subclass" in c.message for c in report.failures)


def test_a_plain_output_of_the_same_code_conforms():
    assert dpo_ref.verify(parameter_output, max_examples=5).passed
