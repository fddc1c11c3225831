"""Verify Liger-Kernel's chunked preference losses (plain PyTorch: they run on CPU) through its own functions.

Liger's package imports triton at the top (`liger_kernel/__init__.py` imports its kernels), but the chunked
losses in `liger_kernel/chunked_loss/` are plain PyTorch. `load()` imports them when `liger_kernel` is importable,
and otherwise executes the four modules that hold them from Liger's published wheel (`adapters.wheel`; version
VERSION, fetched with `pip download --no-deps` once and cached). Nothing of Liger is copied here.

Three levels, every claim read in Liger's code (file:line below, Liger-Kernel 0.8.5):

    loss     `<Function>.preference_loss_fn(chosen_logps, rejected_logps, full_target, ...)`: the batch's summed
             losses / n_pairs, n_pairs = full_target.shape[0] // 2 (read from nothing else); each loss type is
             verified as the family variant it computes (`CLAIMS`)
    logps    `LigerFusedLinearPreferenceBase.chunk_forward`: log_softmax(logits.float()), gather, masked sum (or
             mean); `target` is already shifted (TRL and Liger's tests pass hidden[:, :-1] with labels[:, 1:])
    library  `LigerFusedLinearDPOFunction.apply` (and SimPO's, CPO's) on a tiny Llama's hidden states and LM head,
             loss and gradients (hidden states, LM head) against dpo_ref's formula on the same model, with chunks
             of 1 pair and of the whole batch (`fused`)

Not covered, and why: loss_type "ipo" raises NotImplementedError (dpo_loss.py:68-72); ORPO (odds ratio,
orpo_loss.py:31-35) and KTO (unpaired, kto_loss.py) are no member of dpo_ref's family.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from dpo_ref.errors import InputError
from dpo_ref.logps import IGNORE_INDEX, sequence_logps
from dpo_ref.oracle.adapters import tiny
from dpo_ref.oracle.adapters.wheel import Unavailable, load_from_wheel, wheel
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult

VERSION = "0.8.5"  # the wheel executed when liger_kernel is not importable
MODULES = ("fused_linear_preference", "dpo_loss", "cpo_loss", "simpo_loss")
SRC = "liger_kernel/chunked_loss/"


@functools.cache
def load(wheel_path: str | None = None) -> SimpleNamespace:
    """Liger's chunked preference losses: `.dpo`, `.cpo`, `.simpo` (the autograd Functions), `.base`
    (LigerFusedLinearPreferenceBase), `.version` and `.source` ("installed" or the wheel's path).
    `Unavailable` when neither an import nor the wheel works (the message says why)."""
    names = [f"liger_kernel.chunked_loss.{m}" for m in MODULES]
    if wheel_path is None:
        try:
            from importlib.metadata import version

            mods = {n: importlib.import_module(n) for n in names}
            return _namespace(mods, version("liger-kernel"), "installed")
        except Exception:
            pass  # not installed, or its package needs triton: run the modules from the wheel
    path = wheel_path or wheel("liger-kernel", VERSION)
    try:
        mods = load_from_wheel(path, names, {"liger_kernel"})
    except (OSError, ValueError) as err:  # not a readable zip
        raise Unavailable(f"{path}: {err}") from None
    version = str(path).rsplit("/", 1)[-1].split("-")[1]
    return _namespace(mods, version, f"wheel {str(path).rsplit('/', 1)[-1]}")


def _namespace(mods: dict, version: str, source: str) -> SimpleNamespace:
    m = {k.rsplit(".", 1)[-1]: v for k, v in mods.items()}
    return SimpleNamespace(
        dpo=m["dpo_loss"].LigerFusedLinearDPOFunction,
        cpo=m["cpo_loss"].LigerFusedLinearCPOFunction,
        simpo=m["simpo_loss"].LigerFusedLinearSimPOFunction,
        base=m["fused_linear_preference"].LigerFusedLinearPreferenceBase,
        version=version,
        source=source,
    )


def _full_target(pc: torch.Tensor) -> torch.Tensor:
    return torch.empty(2 * pc.shape[0], 1)  # (2B, 1): only shape[0] // 2, the number of pairs, is read


# --- loss level ----------------------------------------------------------------------------------------------


def dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=None, loss_type="sigmoid", tau=None, delta=0.0):
    """LigerFusedLinearDPOFunction.preference_loss_fn -> (sum of losses / n_pairs, chosen_rewards, rejected_rewards).
    `tau` is DiscoPOP's temperature (`discopop_tau`); Liger has no BCO reward shift: `delta` must be 0."""
    if delta != 0.0:
        raise InputError(f"Liger's bco_pair has no reward shift (dpo_loss.py:108-110): delta must be 0, got {delta!r}")
    kw = {} if label_smoothing is None else {"label_smoothing": label_smoothing}
    if tau is not None:
        kw["discopop_tau"] = tau
    fn = load().dpo.preference_loss_fn
    return fn(pc, pr, _full_target(pc), rc, rr, beta=beta, loss_type=loss_type, **kw)


def cpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    """LigerFusedLinearCPOFunction.preference_loss_fn fed the log-ratios pc - rc, pr - rr as its log-probs. CPO is
    reference-free (cpo_loss.py:32-35: -(1-eps) logsig(beta (a - b)) - eps logsig(-beta (a - b))): a function of
    a - b alone, so fed log-ratios it must be cDPO (DPO at eps = 0) exactly."""
    return load().cpo.preference_loss_fn(pc - rc, pr - rr, _full_target(pc), beta=beta, label_smoothing=label_smoothing)


def simpo_loss(pc, pr, rc, rr, beta=2.0, gamma=0.5, chosen_lengths=None, rejected_lengths=None):
    """LigerFusedLinearSimPOFunction.preference_loss_fn on the average log-probs pc / n_w, pr / n_l (Liger averages
    before the loss: its SimPO forward keeps the base's average_log_prob=True, fused_linear_preference.py:36,
    351-352, checked at the library level); the reference log-probs do not enter."""
    fn = load().simpo.preference_loss_fn
    return fn(pc / chosen_lengths, pr / rejected_lengths, _full_target(pc), beta=beta, gamma=gamma)


@dataclass(frozen=True)
class Claim:
    """One Liger loss, the dpo_ref variant it computes, and where that was read."""

    name: str  # how the matrix names it
    variant: str  # the oracle variant it is verified as
    fn: Callable
    source: str  # file:line in Liger
    reading: str  # what the code computes
    coefficients: dict = field(default_factory=dict)  # fixed coefficients (the others are drawn)
    label_smoothing: float | None = None  # classic cdpo: fixed eps


def _dpo(loss_type: str) -> Callable:
    """`dpo_loss` with `loss_type` bound, as a module-level function `dpo_<loss_type>` (a reproduction imports it)."""

    def fn(pc, pr, rc, rr, beta=0.1, label_smoothing=None, tau=None, delta=0.0):
        return dpo_loss(pc, pr, rc, rr, beta, label_smoothing, loss_type, tau, delta)

    fn.__name__ = fn.__qualname__ = f"dpo_{loss_type}"
    globals()[fn.__name__] = fn
    return fn


CLAIMS: tuple[Claim, ...] = (
    Claim("dpo: sigmoid", "dpo", _dpo("sigmoid"), "dpo_loss.py:51-61", "-logsigmoid(beta h).sum() / n_pairs"),
    Claim(
        "dpo: sigmoid + label_smoothing", "cdpo", _dpo("sigmoid"), "dpo_loss.py:42, 60-61",
        "the docstring gives label_smoothing for 'robust / exo_pair / cDPO', but the sigmoid branch never reads it: "
        "plain DPO", label_smoothing=0.1,
    ),
    Claim("dpo: hinge", "hinge", _dpo("hinge"), "dpo_loss.py:63-66", "relu(1 - beta h)"),
    Claim(
        "dpo: exo_pair", "exo_pair", _dpo("exo_pair"), "dpo_loss.py:74-87",
        "q (log q - log(1 - eps)) + (1 - q)(log(1 - q) - log eps), q = sigmoid(beta h); eps > 0 required; eps is "
        "made a float32 tensor (:79), so its logs are float32-level on float64 inputs",
    ),
    Claim(
        "dpo: nca_pair", "nca_pair", _dpo("nca_pair"), "dpo_loss.py:89-95",
        "-logsig(beta r_w) - logsig(-beta r_w)/2 - logsig(-beta r_l)/2",
    ),
    Claim(
        "dpo: robust", "robust", _dpo("robust"), "dpo_loss.py:97-106",
        "((1 - eps)(-logsig(beta h)) + eps logsig(-beta h)) / (1 - 2 eps): rDPO (its comment says 'cDPO / robust')",
    ),
    Claim(
        "dpo: bco_pair", "bco_pair", _dpo("bco_pair"), "dpo_loss.py:108-110",
        "-logsig(beta r_w) - logsig(-beta r_l): BCO without the running reward shift (delta = 0, as TRL 1.16)",
        {"delta": 0.0},
    ),
    Claim(
        "dpo: sppo_hard", "sppo_hard", _dpo("sppo_hard"), "dpo_loss.py:112-120",
        "(r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2",
    ),
    Claim(
        "dpo: apo_zero", "apo_zero", _dpo("apo_zero"), "dpo_loss.py:122-128",
        "1 - sigmoid(beta r_w) + sigmoid(beta r_l)",
    ),
    Claim(
        "dpo: apo_down", "apo_down", _dpo("apo_down"), "dpo_loss.py:130-137",
        "sigmoid(beta r_w) + 1 - sigmoid(beta h)",
    ),
    Claim(
        "dpo: discopop", "discopop", _dpo("discopop"), "dpo_loss.py:139-145",
        "-logsig(rho)(1 - sigmoid(rho/tau)) + exp(-rho) sigmoid(rho/tau), rho = beta h (the product form)",
    ),
    Claim(
        "cpo", "dpo", cpo_loss, "cpo_loss.py:32-35",
        "-logsig(beta (a - b)) (label_smoothing 0): reference-free DPO, fed the log-ratios",
    ),
    Claim(
        "cpo + label_smoothing", "cdpo", cpo_loss, "cpo_loss.py:32-35",
        "-(1-eps) logsig(beta (a - b)) - eps logsig(-beta (a - b)): reference-free cDPO, fed the log-ratios",
        label_smoothing=0.1,
    ),
    Claim(
        "simpo", "simpo", simpo_loss, "simpo_loss.py:40-43",
        "-logsig(beta (a_w - a_l) - gamma) on average log-probs (label_smoothing 0)",
    ),
)  # fmt: skip

NOT_COVERED = (
    "loss_type='ipo' raises NotImplementedError (dpo_loss.py:68-72): no IPO",
    "ORPO (orpo_loss.py:31-35, odds ratio of average log-probs) and KTO (kto_loss.py, unpaired) are no member of "
    "dpo_ref's family: not verified",
)


def verify_claim(claim: Claim, max_examples: int, progress=None):
    """The oracle's report on one Liger loss, verified as `claim.variant`."""
    import dpo_ref

    kw = {"coefficients": claim.coefficients} if claim.coefficients else {}
    if claim.label_smoothing is not None:
        kw["label_smoothing"] = claim.label_smoothing
    return dpo_ref.verify(
        claim.fn, variant=claim.variant, max_examples=max_examples, name=f"Liger {claim.name}", progress=progress, **kw
    )


# --- log-prob level ------------------------------------------------------------------------------------------


def logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """LigerFusedLinearPreferenceBase.chunk_forward (fused_linear_preference.py:319-368) in the oracle's convention:
    the logits as hidden states with an identity LM head (exact), the pairs (logits at t, label at t + 1), and
    chunk_forward's two halves (it splits the rows at B // 2 into chosen and rejected) concatenated back."""
    V = logits.shape[-1]
    weight = torch.eye(V, dtype=logits.dtype)  # (V, H = V): hidden @ weight.T == logits
    out = load().base.chunk_forward(
        logits[:, :-1], weight, labels[:, 1:], compute_nll_loss=False, average_log_prob=average
    )
    return torch.cat([out[0], out[1]])


def logps_average(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`logps(..., average=True)`: sum / mask.sum(-1) (fused_linear_preference.py:351-352)."""
    return logps(logits, labels, average=True)


# --- library level: the fused forward on a tiny model --------------------------------------------------------

FUSED_BETA, FUSED_EPS, FUSED_TAU, FUSED_GAMMA, FUSED_ALPHA = 0.5, 0.1, 0.05, 0.5, 0.7
RTOL = 1e-5  # Liger log-softmaxes in float32 (fused_linear_preference.py:333) and accumulates a float32 loss (:100)

# Liger loss -> (Function, its keyword arguments, dpo_ref family key, family coefficients, NLL weight alpha)
FUSED = {
    "sigmoid": ("dpo", {"loss_type": "sigmoid"}, "sigmoid", {"beta": FUSED_BETA}, 0.0),
    "sigmoid+nll": ("dpo", {"loss_type": "sigmoid"}, "sigmoid", {"beta": FUSED_BETA}, FUSED_ALPHA),
    "hinge": ("dpo", {"loss_type": "hinge"}, "hinge", {"beta": FUSED_BETA}, 0.0),
    "exo_pair": ("dpo", {"loss_type": "exo_pair", "label_smoothing": FUSED_EPS}, "exo_pair",
                 {"beta": FUSED_BETA, "label_smoothing": FUSED_EPS}, 0.0),
    "nca_pair": ("dpo", {"loss_type": "nca_pair"}, "nca_pair", {"beta": FUSED_BETA}, 0.0),
    "robust": ("dpo", {"loss_type": "robust", "label_smoothing": FUSED_EPS}, "robust",
               {"beta": FUSED_BETA, "label_smoothing": FUSED_EPS}, 0.0),
    "bco_pair": ("dpo", {"loss_type": "bco_pair"}, "bco_pair", {"beta": FUSED_BETA}, 0.0),
    "sppo_hard": ("dpo", {"loss_type": "sppo_hard"}, "sppo_hard", {"beta": FUSED_BETA}, 0.0),
    "apo_zero": ("dpo", {"loss_type": "apo_zero"}, "apo_zero", {"beta": FUSED_BETA}, 0.0),
    "apo_down": ("dpo", {"loss_type": "apo_down"}, "apo_down", {"beta": FUSED_BETA}, 0.0),
    "discopop": ("dpo", {"loss_type": "discopop", "discopop_tau": FUSED_TAU}, "discopop",
                 {"beta": FUSED_BETA, "tau": FUSED_TAU}, 0.0),
    "simpo": ("simpo", {"gamma": FUSED_GAMMA}, "simpo", {"beta": FUSED_BETA, "gamma": FUSED_GAMMA}, 0.0),
    "cpo+nll": ("cpo", {"label_smoothing": FUSED_EPS}, "cdpo", {"beta": FUSED_BETA, "label_smoothing": FUSED_EPS},
                FUSED_ALPHA),
}  # fmt: skip


@functools.cache
def _batch():
    """Hidden states (2B, T, H) of the policy and the reference (chosen rows then rejected rows), the LM heads,
    and the labels aligned with the input ids (-100: prompt and padding), from `tiny.ROWS4`, right-padded."""
    tok = tiny.tokenizer()
    ids, labels = [], []
    for side in ("chosen", "rejected"):
        for prompt, completion in zip(tiny.ROWS4["prompt"], tiny.ROWS4[side]):
            p, c = tiny.own_token_ids(tok, prompt, completion)
            ids.append(p + c)
            labels.append([IGNORE_INDEX] * len(p) + c)
    T = max(len(r) for r in ids)
    input_ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in ids])  # (2B, T)
    labels = torch.tensor([r + [IGNORE_INDEX] * (T - len(r)) for r in labels])  # (2B, T)
    mask = torch.arange(T) < torch.tensor([len(r) for r in ids])[:, None]  # (2B, T) real tokens
    out = []
    for seed in (0, 1):
        model = tiny.model(seed)
        with torch.no_grad():
            hidden = model.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (2B, T, H)
        out.append((hidden, model.lm_head.weight.detach()))
    return out, labels


def _liger_fused(name: str, chunk_size: int):
    """Liger's loss and its gradients with respect to the policy's hidden states and LM head."""
    (policy, reference), labels = _batch()
    fn_name, kw, _, coef, alpha = FUSED[name]
    lib = load()
    hidden = policy[0][:, :-1].clone().requires_grad_(True)  # (2B, T - 1, H): pre-shifted, as TRL passes it
    weight = policy[1].clone().requires_grad_(True)
    target = labels[:, 1:]
    beta = coef["beta"]
    if fn_name == "dpo":
        loss = lib.dpo.apply(
            hidden, weight, target, None, reference[0][:, :-1], reference[1], None, IGNORE_INDEX, beta,
            alpha > 0, False, True, False, chunk_size, kw["loss_type"], kw.get("label_smoothing", 0.0),
            kw.get("discopop_tau", 0.05), alpha or 1.0,
        )[0]  # fmt: skip
    elif fn_name == "simpo":
        loss = lib.simpo.apply(
            hidden, weight, target, None, IGNORE_INDEX, beta, 1.0, 0.0, False, False, kw["gamma"], chunk_size
        )[0]
    else:
        loss = lib.cpo.apply(
            hidden, weight, target, None, IGNORE_INDEX, beta, alpha, kw["label_smoothing"], True, False, False,
            chunk_size,
        )[0]  # fmt: skip
    loss.backward()
    return float(loss.detach()), hidden.grad, weight.grad


def _dpo_ref_fused(name: str):
    """dpo_ref on the same model: sequence_logps of hidden @ weight.T, the family formula, the batch mean, plus
    alpha times the chosen token-mean NLL (`family.sft_loss`) where Liger adds its NLL term."""
    from dpo_ref.family import LOSS_FAMILY, sft_loss

    (policy, reference), labels = _batch()
    fn_name, _, key, coef, alpha = FUSED[name]
    hidden = policy[0][:, :-1].clone().requires_grad_(True)
    weight = policy[1].clone().requires_grad_(True)
    logits = hidden @ weight.T  # (2B, T - 1, V): position t scores labels[:, t + 1]
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)  # (2B,) scored tokens
    logp = _pair_logps(logits, labels[:, 1:])  # (2B,)
    with torch.no_grad():
        ref = _pair_logps(reference[0][:, :-1] @ reference[1].T, labels[:, 1:])
    B = labels.shape[0] // 2
    pc, pr, rc, rr = logp[:B], logp[B:], ref[:B], ref[B:]
    nc, nr = counts[:B], counts[B:]
    if key == "simpo":
        losses = LOSS_FAMILY[key].fn(pc, pr, rc, rr, chosen_lengths=nc, rejected_lengths=nr, **coef).losses
    elif fn_name == "cpo":  # reference-free
        zero = torch.zeros_like(rc)
        losses = LOSS_FAMILY[key].fn(pc, pr, zero, zero, **coef).losses
    else:
        losses = LOSS_FAMILY[key].fn(pc, pr, rc, rr, **coef).losses
    loss = losses.mean()
    if alpha:
        loss = loss + alpha * sft_loss(pc, pr, rc, rr, chosen_lengths=nc).losses.mean()
    loss.backward()
    return float(loss.detach()), hidden.grad, weight.grad


def _pair_logps(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum_t log softmax(logits[:, t])[target[:, t]] over the scored t, for pre-shifted pairs: `sequence_logps`
    shifts by one, so it is given one unscored leading position."""
    lead = torch.full_like(target[:, :1], IGNORE_INDEX)
    pad = torch.zeros_like(logits[:, :1])
    return sequence_logps(torch.cat([logits, pad], dim=1), torch.cat([lead, target], dim=1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def fused(name: str) -> CheckResult:
    """Liger's fused forward for loss `name` with chunks of 1 pair and of the whole batch: loss and gradients
    (hidden states, LM head) equal dpo_ref's on the same model (relative RTOL), and the two chunkings agree."""
    want, gh, gw = _dpo_ref_fused(name)
    bad, first = [], None
    B = _batch()[1].shape[0] // 2
    for chunk in (1, B):
        got, h, w = _liger_fused(name, chunk)
        first = got if first is None else first
        loss_err = abs(got - want) / max(abs(want), 1e-12)
        errs = {"loss": loss_err, "d/dhidden": _rel(h, gh), "d/dlm_head": _rel(w, gw)}
        bad += [f"chunk_size={chunk}: {k} relative error {v:.3g}" for k, v in errs.items() if not v <= RTOL]
    ok = not bad
    return CheckResult(
        f"fused:{name}",
        PASSED if ok else FAILED,
        "the fused forward on a tiny Llama (chunks of 1 and of the batch): loss and gradients equal dpo_ref's",
        "" if ok else f"{'; '.join(bad)} (dpo_ref loss {want!r}, Liger with chunks of 1 {first!r})",
        None if ok else _fused_repro(name),
        2,
    )


def _fused_repro(name: str) -> str:
    return "\n".join(
        [
            "from dpo_ref.oracle.adapters.liger import _dpo_ref_fused, _liger_fused",
            f"want, _, _ = _dpo_ref_fused({name!r})",
            f"for chunk in (1, 4):\n    got, _, _ = _liger_fused({name!r}, chunk)\n    print(chunk, got, want)",
            "    assert abs(got - want) <= 1e-5 * abs(want)",
        ]
    )
