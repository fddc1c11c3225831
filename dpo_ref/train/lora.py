"""`--lora-r`: LoRA adapters through peft, the reference as the same model with its adapters off.

LoRA (Hu et al. 2021) freezes each target weight W (out, in) and trains W + (alpha / r) B A, with A (r, in)
random and B (out, r) zero at the start: the adapted model equals the base model at step 0, so the DPO loss is
ln 2 there. The reference is the base model itself: `AdaptersOff` runs the policy's own modules inside
`peft_model.disable_adapter()`, so no second copy of any weight exists (tests/train/test_lora.py counts the
storages). An SFT warm-up trains the adapters too; `fold_adapters` then adds their product into the base
weights and zeroes B, so the warmed-up model is the reference and the preference phase starts from B = 0.

OUT/model/ holds the adapters (`save_pretrained` of the `PeftModel`: adapter_config.json,
adapter_model.safetensors) for `PeftModel.from_pretrained(base, OUT/model)`; where the base they sit on is not
the --model directory as it is (the built-in model, or a warm-up folded into it), the base is written too, to
OUT/model/base/. With --merge-lora, OUT/model/ is the merged model W + (alpha / r) B A instead, which
`from_pretrained` loads alone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import sys
import warnings

import torch
import torch.nn as nn

from dpo_ref.errors import InputError

ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output layer
BASE_DIR = "base"  # OUT/model/base: the base the adapters apply to, when it is not --model as it is
ADAPTER = "default"  # peft's adapter name


def default_alpha(r: int) -> float:
    """--lora-alpha's default: 2 r (scale alpha / r = 2), as torchtune's LoRA recipes."""
    return 2.0 * r


@contextlib.contextmanager
def peft_without_old_torchao():
    """peft 0.21 raises ImportError for any torchao older than 0.16 as soon as it looks for torchao-quantized
    layers, even on plain float weights (torchtune 0.6 pins torchao 0.15, so `pip install dpo-ref[compare]`
    installs one). dpo-ref never gives peft torchao-quantized weights, so inside this context peft is told torchao
    is absent when it is too old for it; nothing changes with torchao >= 0.16 or none at all."""
    try:
        version = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        version = None
    major_minor = tuple(int(x) for x in re.findall(r"\d+", version or "")[:2])
    if version is None or major_minor >= (0, 16):
        yield
        return
    import peft  # noqa: F401 - its modules must be imported before they can be patched

    patched = [m for name, m in list(sys.modules.items()) if name.startswith("peft") and m is not None]
    patched = [(m, m.is_torchao_available) for m in patched if hasattr(m, "is_torchao_available")]
    try:
        for module, _ in patched:
            module.is_torchao_available = lambda: False
        yield
    finally:
        for module, original in patched:
            module.is_torchao_available = original


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 asks transformers 5 for the deprecated `is_gradient_checkpointing`: a FutureWarning that is not the
    user's to act on, hidden (only that one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def inner_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model a `PeftModel` wraps (its LoRA layers injected in place), else `model` itself."""
    return model.get_base_model() if is_peft(model) else model


def linear_names(model: nn.Module) -> list[str]:
    """The leaf names of the model's linear layers (q_proj, v_proj, ...), sorted: what --lora-target-modules
    may name."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
    for name, m in model.named_modules():  # GPT-2's Conv1D layers are linear layers too
        if type(m).__name__ == "Conv1D" and name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def target_modules(model: nn.Module, option: str | None) -> list[str] | str:
    """The target modules of --lora-target-modules (NAME,NAME,... or all-linear; default peft's for the model
    type); InputError for a name matching no module, naming the ones there are."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    available = linear_names(model)
    if option is None:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in DEFAULTS:
            raise InputError(
                f"--lora-r: peft has no default target modules for model type {model_type!r}; name them with "
                f"--lora-target-modules (this model's linear layers: {', '.join(available)}), or all-linear"
            )
        return list(DEFAULTS[model_type])
    if option.strip() == ALL_LINEAR:
        return ALL_LINEAR
    names = [n.strip() for n in option.split(",") if n.strip()]
    if not names:
        raise InputError(f"--lora-target-modules is empty; expected NAME,NAME,... or {ALL_LINEAR}")
    modules = [name for name, _ in model.named_modules()]
    missing = [n for n in names if not any(m == n or m.endswith("." + n) for m in modules)]
    if missing:
        raise InputError(
            f"--lora-target-modules: {', '.join(missing)} names no module of the model; its linear layers are "
            f"{', '.join(available)} (or {ALL_LINEAR})"
        )
    return names


def apply_lora(model: nn.Module, *, r: int, alpha: float, dropout: float, targets: str | None) -> nn.Module:
    """`model` as a `PeftModel` with LoRA adapters (B = 0: it computes what `model` computes); every base weight
    frozen. The adapters' A is drawn from torch's global generator (seeded by the run's --seed)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(model, targets), bias="none"
    )
    with peft_without_old_torchao(), quiet_peft():
        return get_peft_model(model, config)


def lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in inner_model(model).named_modules() if isinstance(m, LoraLayer)]


class AdaptersOff(nn.Module):
    """The reference scorer of a LoRA policy: `scorer` (a `SequenceScorer` of the policy) run with every adapter
    disabled, i.e. the base model, from the policy's own weights."""

    def __init__(self, scorer: nn.Module, peft_model: nn.Module):
        super().__init__()
        self.scorer = scorer
        self._peft = [peft_model]  # a plain list: not a submodule (its weights are the scorer's)

    def forward(self, *args, **kwargs):
        with self._peft[0].disable_adapter():
            return self.scorer(*args, **kwargs)


@torch.no_grad()
def fold_adapters(model: nn.Module) -> None:
    """W <- W + (alpha / r) B A in every LoRA layer, then B <- 0: the model computes what it computed, the
    adapters are back at their zero start (after an SFT warm-up: the warmed-up model is the reference)."""
    with peft_without_old_torchao():
        for _, layer in lora_layers(model):
            base = layer.get_base_layer()
            base.weight += layer.get_delta_weight(ADAPTER).to(base.weight.dtype)
            nn.init.zeros_(layer.lora_B[ADAPTER].weight)


@torch.no_grad()
def base_state_dict(model: nn.Module, *, merged: bool) -> dict[str, torch.Tensor]:
    """The state dict of the Hugging Face model without adapters, in its own key names (`...q_proj.weight`):
    the base weights W, or with `merged` W + (alpha / r) B A. Computed layer by layer; the model is unchanged."""
    inner = inner_model(model)
    deltas = {}
    if merged:
        with peft_without_old_torchao():
            deltas = {
                f"{name}.base_layer.weight": layer.get_delta_weight(ADAPTER) for name, layer in lora_layers(model)
            }
    state = {}
    for key, value in inner.state_dict().items():
        if ".lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key].to(value.dtype)
        state[key.replace(".base_layer.", ".")] = value.detach().contiguous()
    return state


class LoraExport:
    """What OUT/model/ holds for a LoRA run (see the module docstring); `RunDir.save_model` calls
    `save_pretrained(directory)`."""

    def __init__(self, model: nn.Module, *, merge: bool, write_base: bool):
        self.model, self.merge, self.write_base = model, merge, write_base

    def save_pretrained(self, directory: str) -> None:
        import os

        inner = inner_model(self.model)
        if self.merge:
            inner.save_pretrained(directory, state_dict=base_state_dict(self.model, merged=True))
            return
        with peft_without_old_torchao(), quiet_peft():
            self.model.save_pretrained(directory)
        if self.write_base:
            inner.save_pretrained(
                os.path.join(directory, BASE_DIR), state_dict=base_state_dict(self.model, merged=False)
            )


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates: all of them, or with LoRA the adapters only."""
    return [p for p in model.parameters() if p.requires_grad]
