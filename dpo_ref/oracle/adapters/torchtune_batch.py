"""Batch composition in torchtune's DPO recipe: gradient accumulation and padding must not change the update.

torchtune 0.6.1's DPO step (recipes/lora_dpo_single_device.py, shipped in the torchtune wheel; the distributed
recipes do the same) is: `padded_collate_dpo` (chosen rows then rejected rows, right-padded: data/_collate.py:
511-565) -> `concatenated_forward` (`model(input_ids)` with no attention mask, then `rlhf.get_batch_log_probs`:
lora_dpo_single_device.py:473-505) for the policy and, under no_grad, the reference -> `self._loss_fn` (DPOLoss or
RSOLoss) -> `loss.mean() / gradient_accumulation_steps`, `backward()` (:556-568). The recipe's own
`concatenated_forward` is run here (the recipe module loaded from its file: `recipes/` refuses package imports),
on dpo_ref's tiny Llama (`tiny.model`, float64, its logits as torchtune's model output).

- Gradient accumulation: the gradient of one batch of 4 pairs equals the sum of the gradients of 4 micro-batches
  of 1, each loss divided by 4 (the recipe's arithmetic, :563-568).
- Padding: the loss on the collated batch equals the loss on the same rows padded further to the right, and on
  the same rows padded on the left (what a custom collator would produce; torchtune's pads right).

Tolerance: relative 1e-10 (float64 model: both sides sum the same per-pair terms in another order and pad
positions that causal attention keeps away from the scored ones; a weighting error is O(1e-2) or more).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import warnings
from types import SimpleNamespace

import torch

from dpo_ref.logps import IGNORE_INDEX
from dpo_ref.oracle.adapters import tiny
from dpo_ref.oracle.adapters.torchtune import import_torchtune
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult

RTOL = 1e-10
BETA = 0.5
RECIPE = "lora_dpo_single_device"


@functools.cache
def recipe():
    """torchtune's LoRADPORecipeSingleDevice class, from recipes/lora_dpo_single_device.py in its distribution."""
    tt = import_torchtune()
    path = os.path.join(os.path.dirname(os.path.dirname(tt.__file__)), "recipes", f"{RECIPE}.py")
    spec = importlib.util.spec_from_file_location(f"torchtune_recipe_{RECIPE}", path)
    module = importlib.util.module_from_spec(spec)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module.LoRADPORecipeSingleDevice


def loss_fn(name: str):
    """The recipe's `_loss_fn`: torchtune's DPOLoss(beta) or RSOLoss(gamma)."""
    from torchtune.rlhf.loss import DPOLoss, RSOLoss

    return DPOLoss(beta=BETA) if name == "DPOLoss" else RSOLoss(gamma=BETA)


def rows() -> list[dict]:
    """tiny.ROWS4 in torchtune's DPO row format (prompt labels -100)."""
    tok = tiny.tokenizer()
    out = []
    for prompt, chosen, rejected in zip(tiny.ROWS4["prompt"], tiny.ROWS4["chosen"], tiny.ROWS4["rejected"]):
        p, c = tiny.own_token_ids(tok, prompt, chosen)
        _, r = tiny.own_token_ids(tok, prompt, rejected)
        out.append({"chosen_input_ids": p + c, "chosen_labels": [IGNORE_INDEX] * len(p) + c,
                    "rejected_input_ids": p + r, "rejected_labels": [IGNORE_INDEX] * len(p) + r})  # fmt: skip
    return out


def collate(batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    from torchtune.data import padded_collate_dpo

    return padded_collate_dpo(batch, padding_idx=tiny.tokenizer().pad_token_id)  # (2B, T) input ids, labels


def _models():
    policy, reference = tiny.model(0), tiny.model(1)
    policy.train()
    return policy, reference


def _step(policy, reference, batch, loss_name: str, accumulation: int) -> torch.Tensor:
    """One micro-batch of the recipe's step: its concatenated_forward for both models, its loss, mean / GAS."""
    me = SimpleNamespace(_device=torch.device("cpu"), activations_handling_ctx=contextlib.nullcontext())
    forward = recipe().concatenated_forward
    pc, pr, _, _ = forward(me, lambda ids: policy(input_ids=ids).logits, batch)
    with torch.no_grad():
        rc, rr, _, _ = forward(me, lambda ids: reference(input_ids=ids).logits, batch)
    loss, _, _ = loss_fn(loss_name)(pc, pr, rc, rr)
    return loss.mean() / accumulation


def gradient(batches: list, loss_name: str) -> torch.Tensor:
    """The accumulated gradient (flattened) of the policy over `batches`, each loss divided by len(batches)."""
    policy, reference = _models()
    for batch in batches:
        _step(policy, reference, batch, loss_name, len(batches)).backward()
    return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])


def check_accumulation(loss_name: str = "DPOLoss") -> CheckResult:
    """Batch of 4 pairs vs 4 accumulated micro-batches of 1 (gradient_accumulation_steps=4)."""
    data = rows()
    full = gradient([collate(data)], loss_name)
    micro = gradient([collate([r]) for r in data], loss_name)
    diff = float((full - micro).norm() / full.norm().clamp_min(1e-300))
    ok = diff <= RTOL
    return CheckResult(
        f"grad_accumulation:{loss_name}",
        PASSED if ok else FAILED,
        "the gradient of 4 pairs equals the accumulated gradient of 4 micro-batches of 1 (the recipe's step)",
        ""
        if ok
        else f"relative difference of the gradients {diff:.3g} (|micro| / |full| = "
        f"{float(micro.norm() / full.norm()):.4g})",
        None
        if ok
        else _repro(
            f"full = gradient([collate(data)], {loss_name!r})\n"
            f"micro = gradient([collate([r]) for r in data], {loss_name!r})\n"
            "print((full - micro).norm() / full.norm())"
        ),  # fmt: skip
        2,
    )


def padded_right(batch, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, labels = batch
    pad = torch.full((ids.shape[0], extra), tiny.tokenizer().pad_token_id, dtype=ids.dtype)
    return torch.cat([ids, pad], dim=1), torch.cat([labels, torch.full_like(pad, IGNORE_INDEX)], dim=1)


def padded_left(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left (a row's length: up to its last non-pad label or id)."""
    ids, labels = batch
    pad_id = tiny.tokenizer().pad_token_id
    T = ids.shape[1]
    out_ids, out_labels = torch.full_like(ids, pad_id), torch.full_like(labels, IGNORE_INDEX)
    for i in range(ids.shape[0]):
        n = int((ids[i] != pad_id).nonzero().max()) + 1
        out_ids[i, T - n :], out_labels[i, T - n :] = ids[i, :n], labels[i, :n]
    return out_ids, out_labels


def batch_loss(batch, loss_name: str = "DPOLoss") -> float:
    policy, reference = _models()
    with torch.no_grad():
        return float(_step(policy, reference, batch, loss_name, 1))


def check_padding(loss_name: str = "DPOLoss") -> list[CheckResult]:
    """The recipe's loss on padded_collate_dpo's batch vs the same rows right-padded further and left-padded."""
    batch = collate(rows())
    base = batch_loss(batch, loss_name)
    results = []
    for name, other, what, src in (
        ("padding_right_extra", padded_right(batch, 5), "5 more pad positions on the right",
         "padded_right(batch, 5)"),
        ("padding_left", padded_left(batch), "the same rows padded on the left (a custom collator; torchtune's pads "
         "right)", "padded_left(batch)"),
    ):  # fmt: skip
        value = batch_loss(other, loss_name)
        diff = abs(value - base)
        ok = diff <= RTOL * (1 + abs(base))
        results.append(
            CheckResult(
                f"{name}:{loss_name}",
                PASSED if ok else FAILED,
                f"the recipe's loss unchanged by {what}",
                ""
                if ok
                else f"loss {value!r} vs {base!r} with torchtune's own padding (|diff| {diff:.3g}, "
                f"relative {diff / abs(base):.3g})",
                None
                if ok
                else _repro(
                    f"batch = collate(data)\nprint(batch_loss(batch, {loss_name!r}), batch_loss({src}, {loss_name!r}))"
                ),  # fmt: skip
                1,
            )
        )
    return results


def _repro(body: str) -> str:
    names = "batch_loss, collate, gradient, padded_left, padded_right, rows"
    return f"from dpo_ref.oracle.adapters.torchtune_batch import {names}\ndata = rows()\n" + body
