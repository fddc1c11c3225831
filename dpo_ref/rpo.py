"""The RPO objective: the preference loss plus a weighted NLL of the chosen response (Pang et al. 2024,
"Iterative Reasoning Preference Optimization", Eq. 1; the trainer's `rpo_alpha`).

    J = mean_b L_pref(b) + alpha * mean_b ( -log pi(y_w | x) / |y_w| )

The NLL is per token of the chosen response, so alpha weighs a per-token cross-entropy. Its gradient on
log pi(y_w) adds -alpha / |y_w| to DPO's -beta sigma(-beta h): the chosen response keeps being pulled up
after the DPO term has saturated (proof rpo-nll).

Count rule (the one of `dpo_ref.losses.check_lengths`, which both functions use): every token count must be
>= 1. A count of 0 (a row with nothing scored) has no per-token NLL and raises `InputError` naming the
argument; it is never clamped to 1, which is how an off-by-one in a count goes unnoticed.
"""

from __future__ import annotations

import math

import torch

from dpo_ref.errors import InputError
from dpo_ref.losses import check_lengths


def per_token_nll(logps: torch.Tensor, token_counts: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """-log pi(y | x) / |y| per row, `(B,)`: the NLL per token; every count |y| must be >= 1.

    `token_counts` `(B,)`, like `logps`: a count of 0 (or below) raises `InputError` naming `token_counts`
    (`dpo_ref.losses.check_lengths`), never clamped. `validate=False` skips the check (and its host
    synchronisation) on a hot path whose counts are known to be >= 1 (the trainer: its data validation
    refuses a pair with nothing to score).

    Proof: none yet. Properties: `test_proofs_linked.check_rpo`.
    """
    if validate:
        check_lengths(token_counts, "token_counts", logps)
    return -logps / token_counts


def rpo_objective(
    preference_losses: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    chosen_token_counts: torch.Tensor,
    rpo_alpha: float,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Scalar J from per-example preference losses `(B,)`, chosen log-probs `(B,)` and token counts `(B,)`.

        J = mean_b L_pref(b) + alpha * mean_b ( -log pi(y_w | x) / |y_w| )      (Pang et al. 2024, Eq. 1)

    Every chosen token count must be >= 1: a 0 raises `InputError` naming `chosen_token_counts`
    (`dpo_ref.losses.check_lengths`). `validate=False` skips that check on a hot path (see `per_token_nll`).

    Proof: `rpo-nll`. Properties: `test_proofs_linked.check_rpo`.
    """
    if not (isinstance(rpo_alpha, (int, float)) and math.isfinite(rpo_alpha) and rpo_alpha >= 0):
        raise InputError(f"rpo_alpha must be a finite number >= 0, got {rpo_alpha!r}")
    if not (preference_losses.shape == policy_chosen_logps.shape == chosen_token_counts.shape):
        raise InputError(
            "preference_losses, policy_chosen_logps and chosen_token_counts must have the same shape (B,), got "
            f"{tuple(preference_losses.shape)}, {tuple(policy_chosen_logps.shape)}, {tuple(chosen_token_counts.shape)}"
        )
    if validate:
        check_lengths(chosen_token_counts, "chosen_token_counts", policy_chosen_logps)
    nll = per_token_nll(policy_chosen_logps, chosen_token_counts, validate=False)  # (B,)
    return preference_losses.mean() + rpo_alpha * nll.mean()
