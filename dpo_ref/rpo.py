"""The RPO objective: the preference loss plus a weighted NLL of the chosen response (Pang et al. 2024,
"Iterative Reasoning Preference Optimization", Eq. 1; the trainer's `rpo_alpha`).

    J = mean_b L_pref(b) + alpha * mean_b ( -log pi(y_w | x) / |y_w| )

The NLL is per token of the chosen response, so alpha weighs a per-token cross-entropy. Its gradient on
log pi(y_w) adds -alpha / |y_w| to DPO's -beta sigma(-beta h): the chosen response keeps being pulled up
after the DPO term has saturated (proof rpo-nll).
"""

from __future__ import annotations

import math

import torch

from dpo_ref.errors import InputError


def per_token_nll(logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """-log pi(y | x) / |y| per row, `(B,)`: the NLL per token (a row with no tokens counts as one).

    Proof: none yet. Properties: `test_proofs_linked.check_rpo`.
    """
    return -logps / token_counts.clamp(min=1)


def rpo_objective(
    preference_losses: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    chosen_token_counts: torch.Tensor,
    rpo_alpha: float,
) -> torch.Tensor:
    """Scalar J from per-example preference losses `(B,)`, chosen log-probs `(B,)` and token counts `(B,)`.

        J = mean_b L_pref(b) + alpha * mean_b ( -log pi(y_w | x) / |y_w| )      (Pang et al. 2024, Eq. 1)

    Proof: `rpo-nll`. Properties: `test_proofs_linked.check_rpo`.
    """
    if not (isinstance(rpo_alpha, (int, float)) and math.isfinite(rpo_alpha) and rpo_alpha >= 0):
        raise InputError(f"rpo_alpha must be a finite number >= 0, got {rpo_alpha!r}")
    if not (preference_losses.shape == policy_chosen_logps.shape == chosen_token_counts.shape):
        raise InputError(
            "preference_losses, policy_chosen_logps and chosen_token_counts must have the same shape (B,), got "
            f"{tuple(preference_losses.shape)}, {tuple(policy_chosen_logps.shape)}, {tuple(chosen_token_counts.shape)}"
        )
    return preference_losses.mean() + rpo_alpha * per_token_nll(policy_chosen_logps, chosen_token_counts).mean()
