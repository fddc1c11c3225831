"""Adapters: verify real libraries (`trl`, `torchtune`; `openrlhf`, `openrlhf-packed`, `llamafactory` at the
pipeline level only) through their public APIs, and log-prob functions of
other shapes (`from_loss_mask`, `from_input_ids_mask`, `from_concatenated`, `from_hidden_states`)."""

from __future__ import annotations

from dpo_ref.errors import InputError
from dpo_ref.oracle.adapters.shapes import from_concatenated, from_hidden_states, from_input_ids_mask, from_loss_mask
from dpo_ref.oracle.report import Report
from dpo_ref.oracle.targets import PIPELINE_ONLY

__all__ = ["from_concatenated", "from_hidden_states", "from_input_ids_mask", "from_loss_mask", "run"]


def run(name: str, level: str | None, cfg, only=None) -> Report:
    """The report for adapter `name` at `level` (None: every level it supports)."""
    if level == "pipeline":  # the library's own tokenisation, collation and forward (adapters.pipelines)
        from dpo_ref.oracle.adapters import pipelines

        return pipelines.run(name, cfg, only)
    if name in PIPELINE_ONLY:
        raise InputError(f"{name} is verified at --level pipeline only (its DPO batch log-prob path), got {level}")
    if name == "trl":
        if level not in (None, "library"):
            raise InputError(
                "trl has no standalone loss or log-prob function (DPOTrainer computes both inline); "
                "verify it with --level library (the default for trl) or --level pipeline (its batch log-prob path)"
            )
        from dpo_ref.oracle.adapters import trl

        return trl.run(cfg, only)
    if name == "torchtune":
        from dpo_ref.oracle.adapters import torchtune

        return torchtune.run(cfg, level, only)
    raise InputError(f"unknown adapter {name!r}; built-in adapters: trl, torchtune, {', '.join(PIPELINE_ONLY)}")
