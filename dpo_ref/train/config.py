"""`TrainConfig`: every setting of `dpo-ref train`, its documentation (the CLI's help) and its checks.

The CLI's options are generated from this dataclass (`dpo_ref.train.cli`): one field, one option, its
`help` metadata the help text. Settings whose default depends on the model are `None` here and filled by
`check_config`: the built-in tiny model gets the recipe that meets docs/train.md's numbers on the built-in
task; a user's `--model` gets the defaults a pretrained model wants (no warm-up, no NLL term, TRL's lr).
`check_config` is pure: it validates every setting without touching the disk, so a bad setting is
refused before anything of a previous run is changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dpo_ref.errors import InputError
from dpo_ref.losses import check_label_smoothing, check_positive_scalar
from dpo_ref.train.attention import KERNELS, check_layout
from dpo_ref.train.objective import LOSS_CHOICES, is_classic, loss_help, loss_names, loss_option, resolve
from dpo_ref.train.precision import DTYPES, check_dtype

LOSSES = LOSS_CHOICES  # every registry name and alias (dpo_ref.variants); dpo, cdpo, ipo keep their own checks
DEVICE_TYPES = ("cpu", "cuda")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: AdamW multiplies float32 weights by lr

# the defaults that depend on the model: (built-in tiny model, a user's --model)
RECIPES = {
    # tuned on the built-in reversal task (docs/train.md): a from-scratch model needs a warm-up
    "builtin": dict(lr=5e-4, sft_steps=600, sft_lr=3e-3, rpo_alpha=2.0),
    # a pretrained model: TRL's DPOConfig learning rate, no warm-up and no NLL term unless asked for
    "model": dict(lr=1e-6, sft_steps=0, sft_lr=1e-5, rpo_alpha=0.0),
}
SEED_LIMIT = 2**32  # seeds are in [0, 2**32), as numpy's
# upper bounds of the counts read from the command line: beyond them a run only runs out of memory or time
# (a --batch-size of 1e9 built 1e9 indices before the first step)
MAX_STEPS = 10**8
MAX_BATCH = 2**16  # pairs per update (batch-size x grad-accum x processes)
MAX_TOKENS = 2**20  # a length in tokens
BOUNDS = {
    **dict.fromkeys("steps sft_steps warmup_steps stop_after log_every eval_every save_every".split(), MAX_STEPS),
    **dict.fromkeys(("batch_size", "grad_accum"), MAX_BATCH),
    **dict.fromkeys(("max_length", "max_prompt_length", "max_new_tokens"), MAX_TOKENS),
    "threads": 4096,
}
BETA_DEFAULT = 0.1  # DPO/cDPO
TAU_DEFAULT = 0.1  # IPO
CDPO_LABEL_SMOOTHING_DEFAULT = 0.1


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def _recipe_help(name: str, text: str) -> str:
    built, user = RECIPES["builtin"][name], RECIPES["model"][name]
    return f"{text} (default {built:g} for the built-in tiny model, {user:g} with --model)"


@dataclass
class TrainConfig:
    """Every knob of a run; `None` means "the default for this model / loss", filled by `check_config`."""

    data: str | None = _opt(None, "JSONL of preference rows {prompt, chosen, rejected} (default: the built-in task)")
    eval_data: str | None = _opt(None, "held-out JSONL for eval/accuracy (the built-in task has its own)")
    model: str | None = _opt(None, "local Hugging Face causal-LM directory (default: a tiny Llama built from a config)")
    out: str = _opt("runs/dpo", "output directory")
    overwrite: bool = _opt(False, "replace the run already in --out (without it, such a run is refused)")
    loss: str = _opt("dpo", loss_help(), parse=loss_option)
    coef: str | None = _opt(
        None, "the losses' coefficients as NAME=VALUE,... (LOSS.NAME=VALUE for one loss of several), each checked "
        "against its range in the registry (docs/variants.md); the default of each is the registry's"
    )  # fmt: skip
    loss_weights: str | None = _opt(
        None, "weights of the losses of a combined --loss as NAME=W,... (default 1 each): the objective is "
        "sum w_i mean(L_i), as TRL's loss_weights"
    )  # fmt: skip
    beta: float | None = _opt(
        None, f"beta of the loss (DPO/cDPO default {BETA_DEFAULT}, others the registry's); not for ipo"
    )
    label_smoothing: float | None = _opt(
        None, f"flip probability eps of cdpo, robust, exo_pair, aot (cdpo: in (0, 0.5), default "
        f"{CDPO_LABEL_SMOOTHING_DEFAULT})"
    )  # fmt: skip
    tau: float | None = _opt(
        None, f"tau: IPO's regularisation, target margin 1/(2 tau) (default {TAU_DEFAULT}), or DiscoPOP's temperature"
    )
    rpo_alpha: float | None = _opt(None, _recipe_help("rpo_alpha", "weight of the chosen-response NLL (RPO)"))
    steps: int = _opt(150, "preference optimizer updates")
    batch_size: int = _opt(32, "pairs per micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per update; global batch = batch-size x grad-accum x processes")
    lr: float | None = _opt(None, _recipe_help("lr", "learning rate of the preference phase"))
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    warmup_steps: int = _opt(10, "linear learning-rate warmup, then constant")
    max_grad_norm: float = _opt(1.0, "gradient norm clipping")
    max_length: int | None = _opt(1024, "prompt + response tokens kept; 'none' = no cut")
    max_prompt_length: int | None = _opt(512, "prompt tokens kept (its end); 'none' = no cut")
    padding_side: str = _opt("right", "padding side of the batches", choices=("left", "right"))
    sft_steps: int | None = _opt(None, _recipe_help("sft_steps", "SFT warm-up updates on the chosen responses"))
    sft_lr: float | None = _opt(None, _recipe_help("sft_lr", "learning rate of the SFT warm-up"))
    precompute_ref: bool = _opt(False, "compute the reference log-probs once, then free the reference model")
    prefix_sharing: bool = _opt(
        False, "one row per pair, prompt | chosen | rejected, the rejected tokens masked from the chosen ones: the "
        "prompt runs once (dpo_ref.train.layouts)"
    )  # fmt: skip
    packing: bool = _opt(
        False, "pack each micro-batch's sequences into rows of at most --max-length tokens, no padding, each "
        "sequence masked from the others (with --prefix-sharing: the shared rows are packed)"
    )  # fmt: skip
    attention: str = _opt(
        "auto", "attention kernel of --prefix-sharing/--packing: mask (a 4-D boolean mask, any attention), segments "
        "(causal blocks, one SDPA call each), flex (FlexAttention's block mask, CUDA only) or auto (segments on the "
        "CPU, mask on CUDA until the others have run on a GPU)",
        choices=KERNELS,
    )  # fmt: skip
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str | None = _opt(
        None, "mixed precision: float32, bfloat16 (autocast; float32 weights, gradients and optimizer) or float16 "
        "(CUDA only, with loss scaling); log-probs summed in float32 (default bfloat16 on a GPU that has it, else "
        "float32)", choices=DTYPES
    )  # fmt: skip
    lora_r: int | None = _opt(None, "train LoRA adapters of rank R (peft) instead of every weight; the reference is "
                              "the same model with the adapters off")  # fmt: skip
    lora_alpha: float | None = _opt(None, "LoRA scale numerator: the update is (alpha / r) B A (default 2 x --lora-r)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA branch's input, in [0, 1)")
    lora_target_modules: str | None = _opt(
        None, "the layers LoRA adapts, NAME,NAME,... (leaf names such as q_proj,v_proj) or all-linear (default: "
        "peft's for the model type; q_proj,v_proj for Llama)"
    )  # fmt: skip
    merge_lora: bool = _opt(False, "write OUT/model as the merged weights W + (alpha/r) B A (from_pretrained loads "
                            "it alone) instead of the adapters")  # fmt: skip
    gradient_checkpointing: bool = _opt(
        False, "recompute each decoder layer's activations in the backward pass instead of keeping them (less "
        "memory, one more forward)"
    )  # fmt: skip
    fsdp: bool = _opt(
        False, "shard the weights, gradients and AdamW state over the torchrun processes (FSDP2: fully_shard per "
        "decoder layer, then the root); a sharded checkpoint OUT/checkpoint.dcp; run under torchrun"
    )  # fmt: skip
    threads: int | None = _opt(None, "CPU intra-op threads (default 1 for the built-in tiny model, else torch's)")
    seed: int = _opt(0, "seed of the weights (built-in model), the data order and every RNG; in [0, 2**32)")
    log_every: int = _opt(10, "log the training statistics every N updates")
    eval_every: int = _opt(50, "evaluate on the held-out data every N updates")
    save_every: int = _opt(50, "write the checkpoint every N updates")
    eval_generation: bool | None = _opt(
        None, "greedy-decode accuracy on the eval set (default on for the built-in task)"
    )
    max_new_tokens: int = _opt(32, "longest greedy completion in the generation evaluation")
    resume: bool = _opt(False, "continue the run in --out exactly (from its checkpoint, or redo its warm-up)")
    stop_after: int | None = _opt(None, "stop (with a checkpoint) after this many updates, as if interrupted")
    skip_bad_rows: bool = _opt(False, "skip malformed rows (and report their count) instead of stopping")
    repeat_rows: bool = _opt(
        False, "let an update hold more pairs than the data has (rows repeat within it); refused without this flag"
    )
    skip_nonfinite: bool = _opt(
        False, "skip (and count) updates with a non-finite loss or gradient instead of stopping; one host sync a step"
    )
    trust_remote_code: bool = _opt(False, "allow the custom modelling code of --model to run")
    progress: bool = _opt(True, "progress bar on a terminal, one plain line per phase otherwise")

    @property
    def layout(self) -> str:
        """The batch layout (`dpo_ref.train.layouts.LAYOUTS`) the two flags choose."""
        return {(False, False): "two-sequence", (True, False): "prefix-sharing", (False, True): "packing"}.get(
            (self.prefix_sharing, self.packing), "both"
        )


# the settings a resumed run must share with the run it continues (data by content, not by path spelling);
# the batch split (batch_size, grad_accum, processes) may change at the same global batch
RESUME_KEYS = (
    "model data_sha256 eval_data_sha256 loss coef loss_weights beta label_smoothing tau rpo_alpha steps lr "
    "weight_decay warmup_steps max_grad_norm max_length max_prompt_length padding_side sft_steps sft_lr precompute_ref "
    "seed global_batch dtype lora_r lora_alpha lora_dropout lora_target_modules fsdp"
).split()

# what the SFT warm-up's result depends on: a saved warm-up is reused only if all of these match
SFT_KEYS = (
    "model data_sha256 sft_steps sft_lr seed max_grad_norm max_length max_prompt_length padding_side global_batch "
    "dtype lora_r lora_alpha lora_dropout lora_target_modules"
).split()


def check_rate(value, option: str) -> float:
    """A learning rate: positive, finite, and representable in float32 (AdamW scales float32 weights by it)."""
    check_positive_scalar(value, option)
    if value > FLOAT32_MAX:
        raise InputError(f"{option} must be at most {FLOAT32_MAX:.4g} (float32's largest number), got {value:g}")
    return float(value)


def check_seed(seed: int, option: str = "--seed") -> int:
    """A seed in [0, 2**32): torch seeds are 64-bit and the data order seeds each epoch with seed x 1_000_003 +
    epoch, so numpy's range keeps both far from overflow (a larger seed crashed after the run directory was
    claimed); a negative one is refused by numpy and by torch's generators alike."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InputError(f"{option} must be an integer in [0, 2**32), got {seed}")
    return seed


def check_device(name: str) -> str:
    """The device name if dpo-ref trains on it (auto, cpu, cuda, cuda:N), else InputError; nothing allocated."""
    import torch

    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"--device {name!r} is not a device (expected auto, cpu, cuda or cuda:N)") from err
    if device.type not in DEVICE_TYPES:
        raise InputError(f"--device {name!r}: dpo-ref trains on cpu or cuda only (expected auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices")
    return name


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Validate every setting of `cfg` (InputError naming the option) and fill the defaults; touches no file."""
    cfg.loss = ",".join(loss_names(cfg.loss))  # aliases -> registry names
    if is_classic(cfg):  # DPO, cDPO, IPO alone: the trainer's original checks and defaults
        if cfg.loss == "ipo" and cfg.beta is not None:
            raise InputError(
                f"--beta is the DPO/cDPO coefficient; IPO's regularisation is --tau (TRL passes IPO's tau as `beta`: "
                f"use --tau {cfg.beta:g})"
            )
        if cfg.loss != "ipo" and cfg.tau is not None:
            raise InputError(f"--tau is IPO's regularisation (--loss ipo); {cfg.loss} uses --beta (--beta {cfg.tau:g})")
        if cfg.loss == "ipo":
            cfg.tau = check_positive_scalar(TAU_DEFAULT if cfg.tau is None else cfg.tau, "--tau")
        else:
            cfg.beta = check_positive_scalar(BETA_DEFAULT if cfg.beta is None else cfg.beta, "--beta")
        if cfg.label_smoothing is None:
            cfg.label_smoothing = CDPO_LABEL_SMOOTHING_DEFAULT if cfg.loss == "cdpo" else 0.0
        cfg.label_smoothing = check_label_smoothing(cfg.label_smoothing)
        if cfg.loss == "dpo" and cfg.label_smoothing > 0:
            raise InputError("--label-smoothing > 0 is conservative DPO: use --loss cdpo")
        if cfg.loss == "ipo" and cfg.label_smoothing > 0:
            raise InputError("--label-smoothing is a (c)DPO option; IPO has none: drop it or use --loss cdpo")
        if cfg.loss == "cdpo" and cfg.label_smoothing == 0:
            raise InputError("--loss cdpo needs --label-smoothing in (0, 0.5)")
    else:  # any registry loss or combination: coefficients checked against the registry's ranges
        objective = resolve(cfg)
        if cfg.precompute_ref and not objective.needs_reference:
            raise InputError(f"--precompute-ref: {cfg.loss} is reference-free, there is no reference to precompute")
    recipe = RECIPES["builtin" if cfg.model is None else "model"]
    for name, value in recipe.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    cfg.lr = check_rate(cfg.lr, "--lr")
    if cfg.sft_steps:
        cfg.sft_lr = check_rate(cfg.sft_lr, "--sft-lr")
    cfg.max_grad_norm = check_positive_scalar(cfg.max_grad_norm, "--max-grad-norm")
    wd = cfg.weight_decay
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (wd >= 0 and math.isfinite(wd)):
        raise InputError(f"--weight-decay must be a finite number >= 0, got {wd}")
    for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every", "max_new_tokens"):
        if int(getattr(cfg, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("sft_steps", "warmup_steps"):
        if int(getattr(cfg, name)) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name in ("max_length", "max_prompt_length", "threads", "stop_after"):
        value = getattr(cfg, name)
        if value is not None and int(value) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name, limit in BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None and int(value) > limit:
            raise InputError(f"--{name.replace('_', '-')} must be at most {limit}, got {value}")
    if cfg.batch_size * cfg.grad_accum > MAX_BATCH:
        raise InputError(
            f"--batch-size x --grad-accum must be at most {MAX_BATCH} pairs per update, got {cfg.batch_size} x "
            f"{cfg.grad_accum}"
        )
    check_seed(cfg.seed)
    if cfg.rpo_alpha < 0 or not math.isfinite(cfg.rpo_alpha):
        raise InputError(f"--rpo-alpha must be a finite number >= 0, got {cfg.rpo_alpha}")
    if cfg.padding_side not in ("left", "right"):
        raise InputError(f"--padding-side must be left or right, got {cfg.padding_side!r}")
    if cfg.resume and cfg.overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    check_device(cfg.device)
    cfg.dtype = check_dtype(cfg.dtype, cfg.device)
    check_lora(cfg)
    check_fsdp(cfg)
    check_layout(cfg.attention, cfg.layout)
    return cfg


def check_fsdp(cfg: TrainConfig, environ=None) -> None:
    """--fsdp's refusals: it needs the processes torchrun starts, and a combination it has no shard-aware
    form of is refused rather than run wrong. `environ`: the environment (default os.environ)."""
    if not cfg.fsdp:
        return
    import os

    environ = os.environ if environ is None else environ
    import torch.distributed as dist

    needed = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # what the trainer reads; the rendezvous too, unless joined
    needed += () if dist.is_available() and dist.is_initialized() else ("MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in environ]
    if missing:
        raise InputError(
            f"--fsdp shards over the processes torchrun starts, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: run it as torchrun --nproc_per_node=N -m dpo_ref "
            "train --fsdp ..."
        )
    if cfg.dtype == "float16":
        raise InputError(
            "--fsdp with --dtype float16: its loss scaler (torch.amp.GradScaler) does not handle sharded gradients; "
            "use --dtype bfloat16"
        )
    if cfg.merge_lora:
        raise InputError(
            "--fsdp with --merge-lora: the merge needs each whole weight; train with --fsdp, then merge the saved "
            "adapters (peft's merge_and_unload)"
        )


def check_lora(cfg: TrainConfig) -> None:
    """The LoRA settings (the target modules are checked against the model once it is loaded)."""
    r = cfg.lora_r
    if r is None:
        for name in ("lora_alpha", "lora_target_modules"):
            if getattr(cfg, name) is not None:
                raise InputError(f"--{name.replace('_', '-')} needs --lora-r (LoRA is off without it)")
        if cfg.lora_dropout != 0.0:
            raise InputError("--lora-dropout needs --lora-r (LoRA is off without it)")
        if cfg.merge_lora:
            raise InputError("--merge-lora needs --lora-r: there are no adapters to merge without LoRA")
        return
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise InputError("--lora-r needs peft, which is not installed: pip install 'dpo-ref[lora]'")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InputError(f"--lora-r must be a positive integer, got {r}")
    if cfg.lora_alpha is None:
        from dpo_ref.train.lora import default_alpha

        cfg.lora_alpha = default_alpha(r)
    alpha = cfg.lora_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha > 0 and math.isfinite(alpha)):
        raise InputError(f"--lora-alpha must be a positive finite number, got {alpha}")
    cfg.lora_alpha = float(alpha)
    p = cfg.lora_dropout
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise InputError(f"--lora-dropout must be in [0, 1), got {p}")
