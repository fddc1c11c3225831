"""Executable proofs: the derivations behind DPO, IPO and cDPO, each step checked by sympy.

`all_proofs()` returns them in lesson order; `dpo-ref prove` (or `python -m proofs`) runs and prints them.
"""

from __future__ import annotations

import importlib

from proofs.core import Proof, ProofResult, StepFailed, check_proof, run_proof

# lesson order: slug -> module
MODULES = {
    "optimal-policy": "proofs.optimal_policy",
    "reward-reparam": "proofs.reward_reparam",
    "bt-cancellation": "proofs.bt_cancellation",
    "dpo-loss": "proofs.dpo_loss",
    "dpo-gradient": "proofs.dpo_gradient",
    "init-ln2": "proofs.init_ln2",
    "deterministic-preference": "proofs.deterministic_preference",
    "reward-equivalence": "proofs.reward_equivalence",
    "ipo": "proofs.ipo",
    "cdpo": "proofs.cdpo",
}


def get(name: str) -> Proof:
    """The proof with slug `name` (KeyError if there is none)."""
    proof = importlib.import_module(MODULES[name]).PROOF
    assert proof.name == name, f"{MODULES[name]} defines proof {proof.name!r}, registered as {name!r}"
    return proof


def all_proofs() -> list[Proof]:
    return [get(name) for name in MODULES]


__all__ = ["MODULES", "Proof", "ProofResult", "StepFailed", "all_proofs", "check_proof", "get", "run_proof"]
