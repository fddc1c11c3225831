"""The Plackett-Luce DPO loss: DPO for a ranking of K responses (Rafailov et al. 2023, App. A.3, Eq. 20).

With the implicit rewards u_k = beta (log pi(y_k|x) - log pi_ref(y_k|x)) of the responses in ranked order
(best first), the negative log-likelihood of the ranking under Plackett-Luce is

    L = -sum_{k=1}^{K} [ u_k - log sum_{j=k}^{K} e^{u_j} ]

The partition function cancels (proof bt-cancellation) and K = 2 is the DPO loss (proof plackett-luce).
"""

from __future__ import annotations

import torch

from dpo_ref.errors import InputError, InputTypeError
from dpo_ref.losses import check_positive_scalar


def plackett_luce_losses(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Per-example Plackett-Luce DPO loss `(B,)` from log-probs `(B, K)` of the K >= 2 responses, best first.

        L = -sum_{k=1}^{K} [ u_k - log sum_{j=k}^{K} e^{u_j} ],   u_k = beta (log pi(y_k|x) - log pi_ref(y_k|x))

    Proof: `plackett-luce`. Properties: `test_proofs_linked.check_plackett_luce`.
    """
    beta = check_positive_scalar(beta, "beta")
    for t, name in ((policy_logps, "policy_logps"), (reference_logps, "reference_logps")):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise InputTypeError(f"{name} must be a floating-point torch.Tensor")
        if t.dim() != 2 or t.shape[1] < 2 or t.shape[0] == 0:
            raise InputError(f"{name} must have shape (B, K) with B >= 1 and K >= 2 (best first), got {tuple(t.shape)}")
    if policy_logps.shape != reference_logps.shape:
        raise InputError(
            f"reference_logps has shape {tuple(reference_logps.shape)} but policy_logps has shape "
            f"{tuple(policy_logps.shape)}; they must match"
        )
    u = beta * (policy_logps - reference_logps)  # (B, K) implicit rewards, best first
    tail = torch.logcumsumexp(u.flip(-1), dim=-1).flip(-1)  # (B, K): log sum_{j >= k} e^{u_j}
    return (tail - u).sum(-1)  # (B,)
