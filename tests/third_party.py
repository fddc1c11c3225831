"""Real DPO code from six libraries, as published on the package registry, behind the oracle's calling conventions.

Libraries that install here without replacing torch (TRL, torchtune: the `compare` extra) are imported. The others
need packages that cannot be installed on a CPU-only torch 2.13 (deepspeed, flash-attn, triton, vllm, peft, a TRL
older than the installed one): their wheel is downloaded once (`pip download --no-deps`, exact version, cached in
`~/.cache/dpo-ref/wheels` or `$DPO_REF_WHEELS`) and only the modules holding the DPO code are executed from it, with
their heavy imports answered by inert stand-ins (`dpo_ref.oracle.adapters.wheel`). No library code is copied into
this repository.

Wrappers only translate calling conventions:

    loss level   fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                    beta=..., label_smoothing=...) -> what the library returns (per-example losses, or their mean,
                    first in a tuple)
    logps level  fn(logits (B, T, V), labels (B, T)) -> (B,); labels aligned with the input ids (-100 = not
                 scored); the library does its own shift, masking, summing or averaging

A library that takes chosen and rejected concatenated gets the whole (B, T, V) batch as "chosen rows then rejected
rows" and its two halves are concatenated back, which keeps every row's value. A library that projects hidden
states through an LM head gets the logits as hidden states and an identity head (exact in float32 and float64).
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import SimpleNamespace

import torch

from dpo_ref.oracle.adapters import liger as _liger
from dpo_ref.oracle.adapters.wheel import Unavailable, load_from_wheel, wheel

__all__ = ["Unavailable", "load_from_wheel", "wheel"]  # re-exported: the loader lives in dpo_ref

# exact versions tried (the newest on the registry when this was written, and the TRL that LLaMA-Factory 0.9.5 and
# ms-swift 4.6.0 pin: trl>=0.18,<=0.24.0 and trl>=0.15,<1.0)
LIGER = ("liger-kernel", _liger.VERSION)
OPENRLHF = ("openrlhf", "0.11.2")
LLAMAFACTORY = ("llamafactory", "0.9.5")
MS_SWIFT = ("ms-swift", "4.6.0")
TRL_PINNED = ("trl", "0.24.0")


@contextlib.contextmanager
def _quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield


# ---- TRL 1.16 (installed: the `compare` extra) -----------------------------------------------------------------


def _identity_head(logits: torch.Tensor) -> torch.nn.Linear:
    V = logits.shape[-1]
    head = torch.nn.Linear(V, V, bias=False, dtype=logits.dtype)
    with torch.no_grad():
        head.weight.copy_(torch.eye(V, dtype=logits.dtype))
    head.weight.requires_grad_(False)
    return head


class _LogitsModel(torch.nn.Module):
    """A 'causal LM' whose backbone returns the given logits as hidden states and whose LM head is the identity, so
    that a library's model-level code (TRL's fused LM head) sees exactly these logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.lm_head = _identity_head(logits)
        self.config = SimpleNamespace(get_text_config=lambda: self.config, model_type="llama")
        self.base_model = lambda *a, **k: SimpleNamespace(last_hidden_state=self.logits)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, *args, **kwargs):
        raise AssertionError("only the fused-LM-head forward is used")


@functools.cache
def trl_version() -> str:
    try:
        with _quiet():
            import trl
    except Exception as err:
        raise Unavailable(
            f"trl is not installed ({type(err).__name__}: {err}); pip install 'dpo-ref[compare]'"
        ) from err
    return trl.__version__


def trl_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRL 1.16 DPOTrainer's log-prob path: `add_fused_lm_head(model)` then `model(..., labels=labels,
    fused_lm_head=True).log_probs[:, -seq_len:].sum(dim=1)` (trl/trainer/dpo_trainer.py `_compute_loss`)."""
    trl_version()
    from trl.trainer.utils import add_fused_lm_head

    model = _LogitsModel(logits)
    add_fused_lm_head(model)
    out = model.forward(input_ids=labels.clamp(min=0), labels=labels, fused_lm_head=True)
    seq_len = labels.shape[1] - 1  # shift_completion_mask.size(1)
    return out.log_probs[:, -seq_len:].sum(dim=1)


# ---- torchtune 0.6.1 (installed: the `compare` extra) ----------------------------------------------------------


@functools.cache
def torchtune_version() -> str:
    try:
        with _quiet():
            import torchtune
            from torchtune.rlhf import get_batch_log_probs  # noqa: F401
    except Exception as err:
        msg = f"torchtune is not importable ({type(err).__name__}: {err}); pip install 'dpo-ref[compare]'"
        raise Unavailable(msg) from err
    return torchtune.__version__


def torchtune_dpo(pc, pr, rc, rr, beta, label_smoothing=0.0):
    """torchtune.rlhf.loss.DPOLoss(beta, label_smoothing)(...) -> (losses, chosen_rewards, rejected_rewards)."""
    from torchtune.rlhf.loss import DPOLoss

    return DPOLoss(beta=beta, label_smoothing=label_smoothing)(pc, pr, rc, rr)


def torchtune_rso(pc, pr, rc, rr, beta):
    """torchtune.rlhf.loss.RSOLoss(gamma=beta)(...): RSO's hinge loss, verified as DPO (it is not)."""
    from torchtune.rlhf.loss import RSOLoss

    return RSOLoss(gamma=beta)(pc, pr, rc, rr)


def torchtune_logps(logits, labels, average=False):
    from torchtune.rlhf import get_batch_log_probs

    return get_batch_log_probs(logits, labels, return_average_logprobs=average)


# ---- Liger-Kernel 0.8.5 (wheel: its package imports triton): dpo_ref's Liger adapter ------------------------


def liger():
    """Liger's chunked losses (`dpo_ref.oracle.adapters.liger.load`): installed, or executed from the wheel."""
    return _liger.load()


def liger_loss(pc, pr, rc, rr, beta, label_smoothing=None, loss_type="sigmoid"):
    """LigerFusedLinearDPOFunction.preference_loss_fn: (sum of losses / n_pairs, chosen_rewards, rejected_rewards)."""
    return _liger.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type)


liger_logps = _liger.logps


# ---- OpenRLHF 0.11.2 (wheel: needs deepspeed, flash-attn, ray, vllm) -------------------------------------------


@functools.cache
def openrlhf():
    mods = load_from_wheel(
        wheel(*OPENRLHF),
        ["openrlhf.models.utils", "openrlhf.models.loss", "openrlhf.models.actor", "openrlhf.trainer.dpo_trainer"],
        {"openrlhf", "deepspeed", "peft"},
    )
    return SimpleNamespace(
        DPOLoss=mods["openrlhf.models.loss"].DPOLoss,
        Actor=mods["openrlhf.models.actor"].Actor,
        DPOTrainer=mods["openrlhf.trainer.dpo_trainer"].DPOTrainer,
    )


def openrlhf_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, ipo=False):
    """openrlhf.models.DPOLoss(beta, label_smoothing, ipo)(...) -> (mean loss, chosen_rewards, rejected_rewards)."""
    return openrlhf().DPOLoss(beta, label_smoothing, ipo)(pc, pr, rc, rr)


def openrlhf_logps(logits, labels):
    """OpenRLHF's DPO log-probs: `Actor.forward(sequences, attention_mask, return_logprobs=True)` (float32 upcast,
    roll, `log_probs_from_logits`, drop the last position) then `DPOTrainer._get_batch_logps(log_probs, attention_mask,
    prompt_id_lens)` (prompt masked by length, right padding, mask multiplied, summed).

    The wrapper states the batch in OpenRLHF's terms: the tokens before a row's first scored label are its prompt
    (`prompt_id_lens`), the attention mask runs to its last scored label (OpenRLHF right-pads DPO batches)."""
    lib = openrlhf()
    B, T = labels.shape
    scored = labels != -100
    pos = torch.arange(T).expand(B, T)
    if not scored[:, 1:].any(dim=1).all():
        raise ValueError("OpenRLHF's convention needs at least one scored token per row")
    first = torch.where(scored, pos, T).min(dim=1).values
    last = torch.where(scored, pos, -1).max(dim=1).values
    # a -100 hole inside a response is stated as a zero of the mask, which OpenRLHF's loss mask does not score
    attention_mask = ((pos <= last[:, None]) & (scored | (pos < first[:, None]))).long()
    actor = SimpleNamespace(
        packing_samples=False, temperature=1.0, model=lambda *a, **k: {"logits": logits}, is_vlm=False
    )
    log_probs = lib.Actor.forward(actor, labels.clamp(min=0), attention_mask=attention_mask, return_logprobs=True)
    sums, _means = lib.DPOTrainer._get_batch_logps(None, log_probs, attention_mask, first.tolist())
    return sums


# ---- TRL 0.24.0, the newest TRL that LLaMA-Factory 0.9.5 and ms-swift 4.6.0 accept (wheel: TRL 1.16 is installed) --


@functools.cache
def trl_pinned():
    mods = load_from_wheel(
        wheel(*TRL_PINNED),
        ["trl.trainer.dpo_config", "trl.trainer.utils", "trl.trainer.dpo_trainer"],
        {"trl", "peft", "mergekit", "deepspeed"},
    )
    return SimpleNamespace(
        DPOTrainer=mods["trl.trainer.dpo_trainer"].DPOTrainer,
        selective_log_softmax=mods["trl.trainer.utils"].selective_log_softmax,
    )


def _cpu_accelerator():
    return SimpleNamespace(device=torch.device("cpu"))


# ---- LLaMA-Factory 0.9.5 (wheel: pins trl<=0.24 and transformers<=5.6, needs peft) -----------------------------


@functools.cache
def llamafactory():
    mods = load_from_wheel(
        wheel(*LLAMAFACTORY),
        ["llamafactory.extras.constants", "llamafactory.train.trainer_utils", "llamafactory.train.dpo.trainer"],
        {"llamafactory", "trl", "peft"},
    )
    return mods["llamafactory.train.dpo.trainer"].CustomDPOTrainer


def _llamafactory_self(loss_type: str, beta: float, label_smoothing: float):
    """The attributes CustomDPOTrainer.__init__ sets (llamafactory/train/dpo/trainer.py:45-125), with TRL 0.24's
    DPOTrainer.dpo_loss as its inherited `dpo_loss`."""
    me = SimpleNamespace(
        finetuning_args=SimpleNamespace(use_ref_model=True),
        f_divergence_type="reverse_kl",
        reference_free=False,
        label_pad_token_id=-100,
        beta=beta,
        loss_type=loss_type,
        ftx_gamma=0.0,
        bco_gemma=0.0,
        label_smoothing=label_smoothing,
        simpo_gamma=0.5,
        ld_alpha=None,
        accelerator=_cpu_accelerator(),
    )
    me.dpo_loss = functools.partial(trl_pinned().DPOTrainer.dpo_loss, me)
    return me


def llamafactory_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, loss_type="sigmoid"):
    """CustomDPOTrainer.compute_preference_loss -> TRL 0.24 dpo_loss -> (losses, chosen_rewards, rejected_rewards)."""
    me = _llamafactory_self(loss_type, beta, label_smoothing)
    return llamafactory().compute_preference_loss(me, pc, pr, rc, rr)


def llamafactory_logps(logits, labels, loss_type="sigmoid"):
    """CustomDPOTrainer.concatenated_forward on a model that returns `logits`: `.to(torch.float32)`,
    `get_batch_logps` (shift, mask multiplied, summed), divided by the length for loss_type ipo/orpo/simpo."""
    me = _llamafactory_self(loss_type, 0.1, 0.0)
    me.finetuning_args.use_ref_model = False  # only clones the batch
    # it splits the batch at B // 2 into chosen and rejected (B = 1 fails): give it the rows as both halves
    both = torch.cat([logits, logits])
    model = lambda **batch: SimpleNamespace(logits=both)  # noqa: E731
    labels2 = torch.cat([labels, labels])
    out = llamafactory().concatenated_forward(me, model, {"input_ids": labels2.clamp(min=0), "labels": labels2})
    return out["chosen_logps"]


# ---- ms-swift 4.6.0 (wheel: pins trl<1.0 and transformers<5.20, needs peft, modelscope) ------------------------


@functools.cache
def swift():
    mods = load_from_wheel(
        wheel(*MS_SWIFT),
        ["swift.rlhf_trainers.rlhf_mixin", "swift.rlhf_trainers.dpo_trainer"],
        {"swift", "trl", "peft"},
    )
    # rlhf_mixin.py does `from trl.trainer.utils import selective_log_softmax`: give it the pinned TRL's
    mods["swift.rlhf_trainers.rlhf_mixin"].selective_log_softmax = trl_pinned().selective_log_softmax
    return SimpleNamespace(
        DPOTrainer=mods["swift.rlhf_trainers.dpo_trainer"].DPOTrainer,
        RLHFTrainerMixin=mods["swift.rlhf_trainers.rlhf_mixin"].RLHFTrainerMixin,
    )


def _swift_self(loss_type: str, beta: float, label_smoothing: float):
    lib = swift()
    me = SimpleNamespace(
        beta=beta,
        label_smoothing=label_smoothing,
        loss_type=loss_type,
        reference_free=False,
        f_divergence_type="reverse_kl",
        f_divergence_params=None,
        accelerator=_cpu_accelerator(),
        aux_loss_enabled=False,
        is_encoder_decoder=False,
        label_pad_token_id=-100,
        template=SimpleNamespace(sequence_parallel_size=1, padding_free=False),
        args=SimpleNamespace(ld_alpha=None),
        get_use_logits_to_keep=lambda default: False,
    )
    me.get_per_token_logps = functools.partial(lib.RLHFTrainerMixin.get_per_token_logps, me)
    return me


def swift_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, loss_type="sigmoid"):
    """swift DPOTrainer.dpo_loss (its own, not TRL's) -> (losses, chosen_rewards, rejected_rewards)."""
    return swift().DPOTrainer.dpo_loss(_swift_self(loss_type, beta, label_smoothing), pc, pr, rc, rr, loss_type)


def swift_logps(logits, labels, average=False):
    """swift DPOTrainer.concatenated_forward on a model that returns `logits` (labels rolled by one,
    `get_per_token_logps` = TRL 0.24 selective_log_softmax, unscored set to 0 by index, summed); for loss_type ipo,
    get_batch_loss_metrics then divides by the completion token counts (`_get_ipo_sequence_logps`)."""
    lib = swift()
    me = _swift_self("ipo" if average else "sigmoid", 0.1, 0.0)
    model = lambda **batch: SimpleNamespace(logits=logits)  # noqa: E731
    out = lib.DPOTrainer.concatenated_forward(me, model, {"input_ids": labels.clamp(min=0), "labels": labels})
    logps = torch.cat([out["chosen_logps"], out["rejected_logps"]])
    if not average:
        return logps
    counts = torch.cat([out["chosen_completion_token_counts"], out["rejected_completion_token_counts"]])
    return lib.DPOTrainer._get_ipo_sequence_logps(logps, counts)
