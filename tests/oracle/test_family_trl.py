"""dpo_ref.family against TRL 1.16's own loss computation, for every TRL loss type (the `compare` extra).

One `DPOTrainer` from the TRL adapter's `build` (tiny local model, float64); for each loss type
TRL's `compute_loss` on the collated batch of the three tiny rows is compared with the mean of the
family's losses on log-probs dpo_ref computes itself from the same model (`sequence_logps`), with the
scored-token counts for the length-normalised losses. TRL's fused LM head computes log-probs in float32
whatever the model dtype: relative tolerance 1e-5 (as the TRL adapter). bco_pair is compared with
delta = 0, TRL 1.16's form (no running mean).

Switching the loss type on one trainer (its `loss_types` / `label_smoothing` / `args.discopop_tau`
attributes, which `_compute_loss` reads) keeps this to one trainer build.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dpo_ref.family import LOSS_FAMILY, TRL_LOSS_TYPES
from dpo_ref.logps import sequence_logps

COEFFICIENTS = {"beta": 0.5, "tau": 0.5, "label_smoothing": 0.1, "delta": 0.0}
TRL_EXTRA = {"exo_pair": {"label_smoothing": 1e-3}, "discopop": {"tau": 0.05}}


@pytest.fixture(scope="module")
def trainer_and_batch():
    trl = pytest.importorskip("trl")
    from dpo_ref.oracle.adapters.trl import build

    assert trl.__version__.startswith("1.16"), trl.__version__
    trainer, examples = build("dpo", beta=0.5, label_smoothing=0.1)  # float64 tiny model, loss type set per test
    return trainer, trainer.data_collator(examples)


def _ours(trainer, batch, name: str, coefficients: dict) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # (2B, T)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        policy = sequence_logps(trainer.model(**kw).logits, labels)  # (2B,)
        reference = sequence_logps(trainer.ref_model(**kw).logits, labels)  # (2B,)
    scored = (labels[:, 1:] != -100).sum(dim=1)  # (2B,) tokens with a log-prob: position 0 is never scored
    (pc, pr), (rc, rr), (nc, nr) = policy.chunk(2), reference.chunk(2), scored.chunk(2)
    return LOSS_FAMILY[name].bind(**coefficients)(pc, pr, rc, rr, nc, nr)


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_family_matches_trl(trainer_and_batch, loss_type):
    trainer, batch = trainer_and_batch
    variant = next(v for v in LOSS_FAMILY.values() if v.trl == loss_type)
    coefficients = {k: COEFFICIENTS[k] for k in variant.coefficients} | TRL_EXTRA.get(loss_type, {})
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta = coefficients.get("beta", coefficients.get("tau", 0.5)) if loss_type != "discopop" else 0.5
    trainer.label_smoothing = coefficients.get("label_smoothing", 0.1)
    trainer.args.discopop_tau = TRL_EXTRA["discopop"]["tau"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    ours = float(_ours(trainer, batch, variant.key, coefficients).mean())
    assert abs(trl_loss - ours) <= 1e-5 * (1 + abs(ours)), (loss_type, trl_loss, ours)
