"""Executable proofs: the derivations behind DPO, IPO and cDPO, each step checked by sympy.

`all_proofs()` returns them in lesson order; `dpo-ref prove` (or `python -m proofs` from the repository) runs
and prints them. The folder is importable as `proofs` from the repository and is installed as `dpo_ref.proofs`
(it claims no top-level name in site-packages), so every import inside it is relative. The API for writing a
proof is documented in `proofs/core.py`.
"""

from __future__ import annotations

import importlib

from .core import Proof, ProofResult, StepFailed, check_proof, run_proof

# lesson order: slug -> module
MODULES = {
    "optimal-policy": "optimal_policy",
    "reward-reparam": "reward_reparam",
    "bt-cancellation": "bt_cancellation",
    "reward-equivalence": "reward_equivalence",
    "dpo-theorem-1": "dpo_theorem1",
    "dpo-loss": "dpo_loss",
    "plackett-luce": "plackett_luce",
    "dpo-gradient": "dpo_gradient",
    "init-ln2": "init_ln2",
    "implicit-reward-kl": "implicit_reward_kl",
    "rpo-nll": "rpo_nll",
    "deterministic-preference": "deterministic_preference",
    "ipo": "ipo",
    "ipo-psi": "ipo_psi",
    "cdpo": "cdpo",
    # the preference-loss family (dpo_ref.family)
    "exo-cdpo": "exo_cdpo",
    "ipo-noise": "ipo_noise",
    "robust-dpo": "robust_dpo",
    "hinge": "hinge",
    "sppo-hard": "sppo_hard",
    "shift-invariance": "shift_invariance",
    "bounded-losses": "bounded_losses",
    "discopop": "discopop",
    "simpo-sft-aot": "simpo_sft_aot",
}


def get(name: str) -> Proof:
    """The proof with slug `name` (KeyError if there is none)."""
    proof = importlib.import_module("." + MODULES[name], __name__).PROOF
    assert proof.name == name, f"{MODULES[name]} defines proof {proof.name!r}, registered as {name!r}"
    return proof


def all_proofs() -> list[Proof]:
    return [get(name) for name in MODULES]


__all__ = ["MODULES", "Proof", "ProofResult", "StepFailed", "all_proofs", "check_proof", "get", "run_proof"]
