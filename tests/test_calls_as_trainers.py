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
    from tests.test_oracle import run_reproduction

    report = dpo_ref.verify(right_only_with_grad_references, checks=["gradients"], max_examples=20)
    assert "rc.clone(), rr.clone()]" in report["gradients"].reproduction  # references without requires_grad
    run_reproduction(report["gradients"])  # ends in its own AssertionError: the disagreement reproduces


@pytest.mark.parametrize("fn", [detaches_references, under_no_grad_references])
def test_correct_losses_that_never_differentiate_the_references_conform(fn):
    assert dpo_ref.verify(fn, checks=["gradients", "values"], max_examples=20).passed
