"""The public API's contract: outputs, dtype rule, stability, and one clear error per bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dpo_ref
from dpo_ref import dpo_loss, ipo_loss, sequence_logps
from dpo_ref.checks import strategies as dst


def test_outputs_are_per_example_losses_and_detached_rewards():
    pc, pr, rc, rr = (
        torch.tensor(v, requires_grad=True) for v in ([-1.0, -3.0], [-2.0, -1.0], [-1.5, -2.0], [-1.5, -2.0])
    )
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert isinstance(out, dpo_ref.PreferenceLoss) and out.losses.shape == (2,)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    # rewards: beta * (log pi - log pi_ref), written out by hand
    assert out.chosen_rewards.tolist() == pytest.approx([0.5 * 0.5, 0.5 * -1.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.5 * -0.5, 0.5 * 1.0])
    ipo = ipo_loss(pc, pr, rc, rr, tau=0.25)
    assert ipo.chosen_rewards.tolist() == pytest.approx([0.25 * 0.5, 0.25 * -1.0])
    # margin h = 1 and -2: (h - 1/(2*0.25))^2 = 1, 16
    assert ipo.losses.tolist() == pytest.approx([1.0, 16.0])


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((torch.float64,) * 4, torch.float64),
        ((torch.float32,) * 4, torch.float32),
        ((torch.bfloat16,) * 4, torch.float32),
        ((torch.float16,) * 4, torch.float32),
        ((torch.float32, torch.float64, torch.float32, torch.float32), torch.float64),
        ((torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16), torch.float32),
    ],
)
def test_output_dtype_rule(dtypes, expected):
    inputs = [torch.tensor([-1.0], dtype=d, requires_grad=True) for d in dtypes]
    out = dpo_loss(*inputs)
    assert out.losses.dtype == expected and out.chosen_rewards.dtype == expected
    out.losses.sum().backward()
    assert all(t.grad.dtype == t.dtype for t in inputs)  # gradients come back in the input dtype


@pytest.mark.parametrize("beta_h", [-1e4, -200.0, 200.0, 1e4])
def test_stable_in_float32_at_large_margins(beta_h):
    pc = torch.tensor([beta_h], dtype=torch.float32, requires_grad=True)
    zero = torch.zeros(1)
    loss = dpo_loss(pc, zero, zero, zero, beta=1.0).losses
    loss.backward()
    # closed form: softplus(-x) = max(-x, 0) + log1p(exp(-|x|))
    expected = max(-beta_h, 0.0) + math.log1p(math.exp(-abs(beta_h)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.isfinite(pc.grad).all()
    assert pc.grad.item() == pytest.approx(-1.0 / (1.0 + math.exp(beta_h)) if beta_h < 0 else 0.0, abs=1e-6)


# bad inputs (shapes, dtypes, devices, NaN/inf, beta/tau/label_smoothing out of range, logits/labels):
# the table in tests/reference/test_bad_inputs.py


def test_row_with_nothing_to_score_is_zero_for_sum_and_an_error_for_average():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4], [7, -100, -100, -100]])  # row 1: only the first (never scored) label
    out = sequence_logps(logits, labels)
    assert out[1].item() == 0.0 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="row 1"):
        sequence_logps(logits, labels, average=True)


def test_bfloat16_logits_are_scored_in_float32():
    logits = torch.randn(2, 6, 9).to(torch.bfloat16)
    labels = torch.randint(0, 9, (2, 6))
    out = sequence_logps(logits, labels)
    assert out.dtype == torch.float32
    expected = sequence_logps(logits.double(), labels)  # same bf16 values, exact float64 arithmetic
    assert torch.allclose(out.double(), expected, atol=1e-4)


@given(batch=dst.token_batches(max_batch=3, max_vocab=9), average=st.booleans())
def test_many_chunks_agree_with_the_loop(monkeypatch_chunks, batch, average):
    """Force one position per chunk so the chunked forward and backward are exercised on small inputs."""
    from dpo_ref.checks import properties as P

    P.check_logps_values(lambda lg, lb: sequence_logps(lg, lb, average=average), batch, average=average)
    P.check_logps_gradients(sequence_logps, batch)


@pytest.fixture(scope="module")
def monkeypatch_chunks():
    import dpo_ref.logps as L

    saved = (L._MIN_CHUNK_ELEMENTS, L._CHUNKS)
    L._MIN_CHUNK_ELEMENTS, L._CHUNKS = 1, 10**9
    yield
    L._MIN_CHUNK_ELEMENTS, L._CHUNKS = saved


def test_chunk_length_bounds_extra_memory():
    from dpo_ref.logps import _chunk_len

    B, T, V = 8, 512, 32000
    c = _chunk_len(B, T - 1, V)
    assert c * V <= B * T * V / 16  # a chunk (c positions of one row) is at most 1/16 of the logits
