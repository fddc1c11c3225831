"""The oracle on real DPO code nobody here wrote: six libraries as published on the package registry.

Every verdict in EXPECTED was decided by reading the library's code (file:line in `source`) and by a numeric run
against an independent float64 computation; the findings' smallest reproductions are the `test_finding_*` tests
below, which do not use the oracle. `test_oracle_verdict` then asks `dpo_ref.verify` the same question: where the
oracle disagrees with EXPECTED, the oracle is wrong.

Libraries that cannot be installed next to torch 2.13 CPU are loaded from their wheel (see tests/third_party.py);
those tests are marked `download` (the wheel is fetched once from the registry and cached) and skip, saying why,
when the registry cannot be reached.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import dpo_ref
from dpo_ref import sequence_logps
from tests import third_party as tp

TT, TRL, LIGER, ORLHF, LF, SWIFT = (
    "torchtune 0.6.1",
    "trl 1.16.0",
    "liger-kernel 0.8.5",
    "openrlhf 0.11.2",
    ("llamafactory 0.9.5 + trl 0.24.0"),
    "ms-swift 4.6.0 + trl 0.24.0",
)
WHEEL = {LIGER, ORLHF, LF, SWIFT}  # loaded from a downloaded wheel

F32 = "scores in float32 whatever the logits' dtype (float64 logits too): float32-level, legitimate"
MUL = "masks by multiplying (per_token * mask).sum(-1): a -inf logit at an unscored position gives NaN (advice)"


@dataclass(frozen=True)
class Case:
    library: str
    level: str  # loss | logps
    variant: str  # dpo | cdpo | ipo | ipo-mean
    conforms: bool
    finding: str
    source: str  # where the code read is, in the wheel / installed package
    target: Callable[[], Callable]  # returns the callable handed to dpo_ref.verify
    reason: str = ""  # non-conforming: a regex the oracle's report must match (its diagnosis)
    reproduction: str = ""  # the test below that shows the finding without the oracle

    @property
    def id(self) -> str:
        return f"{self.library.split()[0]}-{self.level}-{self.variant}-{self.source.split(':')[0].split('/')[-1]}"


def _p(fn, **kw):
    return lambda: functools.partial(fn, **kw)


def _avg(fn, **kw):
    return lambda: functools.partial(fn, **kw)


EXPECTED = [
    # ---- TRL 1.16 (installed). The loss is inline in DPOTrainer._compute_loss: the built-in `trl` adapter covers it.
    Case(
        TRL,
        "logps",
        "dpo",
        True,
        "fused LM head: shift (hidden[:, :-1], labels[:, 1:]), online logsumexp with float32 accumulators, "
        "masked_fill(~mask, 0), sum over the completion. " + F32,
        "trl/trainer/utils.py:1600-1656 (add_fused_lm_head), trl/kernels/chunked_logprob.py:299, "
        "trl/trainer/dpo_trainer.py:1296-1303",
        lambda: tp.trl_logps,
        reproduction="test_finding_float32_scoring",
    ),
    # ---- torchtune 0.6.1 (installed)
    Case(
        TT,
        "loss",
        "dpo",
        True,
        "DPOLoss, label_smoothing=0: -logsigmoid(beta h); per-example losses, rewards detached",
        "torchtune/rlhf/loss/dpo.py:47-94",
        lambda: tp.torchtune_dpo,
    ),
    Case(
        TT,
        "loss",
        "cdpo",
        True,
        "DPOLoss(label_smoothing=eps) is cDPO: -(1-eps) logsig(beta h) - eps logsig(-beta h)",
        "torchtune/rlhf/loss/dpo.py:82-85",
        lambda: tp.torchtune_dpo,
    ),
    Case(
        TT,
        "loss",
        "dpo",
        False,
        "RSOLoss is RSO's hinge loss relu(1 - gamma h), a different loss by design (no defect): not DPO",
        "torchtune/rlhf/loss/dpo.py:97-160",
        lambda: tp.torchtune_rso,
        reason=r"(?i)\bhinge\b|\bRSO\b|\bSLiC\b",
        reproduction="test_finding_torchtune_rso_is_hinge",
    ),
    Case(
        TT,
        "logps",
        "dpo",
        True,
        "get_batch_log_probs: shift, log_softmax in the logits' dtype, gather, " + MUL,
        "torchtune/rlhf/sequence_processing.py:104-144",
        lambda: tp.torchtune_logps,
        reproduction="test_finding_mask_multiply_nan",
    ),
    Case(
        TT,
        "logps",
        "ipo-mean",
        True,
        "return_average_logprobs=True: masked_mean = sum / (n + 1e-8), an epsilon guard (relative 1e-8/n)",
        "torchtune/rlhf/rewards.py:97-112",
        _avg(tp.torchtune_logps, average=True),
    ),
    # ---- Liger-Kernel 0.8.5 (wheel)
    Case(
        LIGER,
        "loss",
        "dpo",
        True,
        "preference_loss_fn sigmoid: -logsigmoid(beta h).sum() / n_pairs, i.e. the batch mean; rewards not detached "
        "(inside the fused autograd.Function they carry no graph)",
        "liger_kernel/chunked_loss/dpo_loss.py:50-63",
        lambda: tp.liger_loss,
    ),
    Case(
        LIGER,
        "loss",
        "cdpo",
        False,
        "no cDPO: the only label-smoothed DPO, loss_type='robust' (its docstring says 'robust / exo_pair / cDPO'), "
        "is robust DPO (rDPO, Chowdhury et al. 2024): (-(1-eps) logsig(beta h) + eps logsig(-beta h)) / (1 - 2 eps); "
        "loss_type='ipo' raises NotImplementedError",
        "liger_kernel/chunked_loss/dpo_loss.py:96-104",
        _p(tp.liger_loss, loss_type="robust"),
        reason=r"(?i)robust|rdpo",
        reproduction="test_finding_liger_robust_is_rdpo",
    ),
    Case(
        LIGER,
        "logps",
        "dpo",
        True,
        "chunk_forward: no shift (target must be pre-shifted, as TRL passes it), log_softmax(logits.float()), "
        "where for the label, " + MUL + "; " + F32,
        "liger_kernel/chunked_loss/fused_linear_preference.py:319-368",
        lambda: tp.liger_logps,
        reproduction="test_finding_float32_scoring",
    ),
    Case(
        LIGER,
        "logps",
        "ipo-mean",
        True,
        "average_log_prob=True: sum / mask.sum(-1)",
        "liger_kernel/chunked_loss/fused_linear_preference.py:351-352",
        _avg(tp.liger_logps, average=True),
    ),
    # ---- OpenRLHF 0.11.2 (wheel)
    Case(
        ORLHF,
        "loss",
        "dpo",
        True,
        "DPOLoss: cDPO form with label_smoothing=0; returns the batch mean",
        "openrlhf/models/loss.py:329-364",
        lambda: tp.openrlhf_loss,
    ),
    Case(
        ORLHF,
        "loss",
        "cdpo",
        True,
        "DPOLoss(label_smoothing=eps) is cDPO (Mitchell's note, Eq. 3)",
        "openrlhf/models/loss.py:355-358",
        lambda: tp.openrlhf_loss,
    ),
    Case(
        ORLHF,
        "loss",
        "ipo",
        True,
        "DPOLoss(ipo=True): (h - 1/(2 beta))^2 on the summed log-probs the trainer passes (all_logps_sum): paper IPO",
        "openrlhf/models/loss.py:351-352, openrlhf/trainer/dpo_trainer.py:323-325",
        _p(tp.openrlhf_loss, ipo=True),
    ),
    Case(
        ORLHF,
        "logps",
        "dpo",
        True,
        "Actor.forward: logits.to(float32), roll(-1), gather - chunked logsumexp, drop last; _get_batch_logps: "
        "prompt masked by length (right padding), " + MUL + "; " + F32,
        "openrlhf/models/actor.py:243-296, openrlhf/models/utils.py:172-196, openrlhf/trainer/dpo_trainer.py:361-383",
        lambda: tp.openrlhf_logps,
        reproduction="test_finding_float32_scoring",
    ),
    # ---- LLaMA-Factory 0.9.5 with TRL 0.24.0, the newest its pin trl>=0.18,<=0.24 allows (wheels)
    Case(
        LF,
        "loss",
        "dpo",
        True,
        "compute_preference_loss -> TRL 0.24 dpo_loss, loss_type default 'sigmoid'",
        "llamafactory/train/dpo/trainer.py:187-216; trl 0.24 trl/trainer/dpo_trainer.py:1110-1114",
        lambda: tp.llamafactory_loss,
    ),
    Case(
        LF,
        "loss",
        "cdpo",
        True,
        "dpo_label_smoothing -> TRL 0.24 sigmoid with label smoothing: cDPO",
        "trl 0.24 trl/trainer/dpo_trainer.py:1110-1114",
        lambda: tp.llamafactory_loss,
    ),
    Case(
        LF,
        "loss",
        "ipo",
        False,
        "DEFECT: pref_loss='ipo' computes sigmoid DPO. compute_preference_loss calls self.dpo_loss(4 log-probs) "
        "without loss_type; since TRL 0.20 dpo_loss takes loss_type as an argument defaulting to 'sigmoid' (TRL 0.18-"
        "0.19 read self.loss_type). Same for hinge, bco_pair, ... Any TRL 0.20-0.24 allowed by the pin is affected.",
        "llamafactory/train/dpo/trainer.py:206-208; trl 0.24 trl/trainer/dpo_trainer.py:1020-1027",
        _p(tp.llamafactory_loss, loss_type="ipo"),
        reason=r"(?i)dpo-not-ipo|(plain|sigmoid) dpo|\bdpo\b[^\n]{0,30}instead of ipo",
        reproduction="test_finding_llamafactory_ipo_is_dpo",
    ),
    Case(
        LF,
        "logps",
        "dpo",
        True,
        "concatenated_forward: logits.to(float32), get_batch_logps (shift, gather of log_softmax), " + MUL + "; " + F32,
        "llamafactory/train/dpo/trainer.py:219-253, llamafactory/train/trainer_utils.py:592-636",
        lambda: tp.llamafactory_logps,
    ),
    Case(
        LF,
        "logps",
        "ipo-mean",
        True,
        "loss_type ipo/orpo/simpo: summed log-probs / valid_length",
        "llamafactory/train/dpo/trainer.py:234-235",
        _p(tp.llamafactory_logps, loss_type="ipo"),
    ),
    # ---- ms-swift 4.6.0 with TRL 0.24.0 (its pin trl>=0.15,<1.0) (wheels)
    Case(
        SWIFT,
        "loss",
        "dpo",
        True,
        "its own DPOTrainer.dpo_loss (not TRL's), sigmoid",
        "swift/rlhf_trainers/dpo_trainer.py:228-264",
        lambda: tp.swift_loss,
    ),
    Case(
        SWIFT,
        "loss",
        "cdpo",
        True,
        "sigmoid with label_smoothing: cDPO",
        "swift/rlhf_trainers/dpo_trainer.py:262-264",
        lambda: tp.swift_loss,
    ),
    Case(
        SWIFT,
        "loss",
        "ipo",
        True,
        "(h - 1/(2 beta))^2; get_batch_loss_metrics feeds it length-averaged log-probs, so the pipeline is ipo-mean",
        "swift/rlhf_trainers/dpo_trainer.py:281-282, 390-396",
        _p(tp.swift_loss, loss_type="ipo"),
    ),
    Case(
        SWIFT,
        "logps",
        "dpo",
        False,
        "concatenated_forward: roll labels by -1 (143-145) with the wrapped-around last position left scored, so a "
        "row whose first label is set (no prompt) scores it with its last logits; otherwise right: TRL 0.24 "
        "selective_log_softmax, unscored set to 0 by indexing (NaN-safe), sum",
        "swift/rlhf_trainers/dpo_trainer.py:117-211, swift/rlhf_trainers/rlhf_mixin.py:147-172",
        lambda: tp.swift_logps,
        reason=r"first-label-wrapped",
        reproduction="test_finding_swift_roll_scores_the_first_label",
    ),
    Case(
        SWIFT,
        "logps",
        "ipo-mean",
        False,
        "loss_type ipo: sum / completion_token_counts.clamp_min(1), over the same rolled labels (the wrapped first "
        "label counted too)",
        "swift/rlhf_trainers/dpo_trainer.py:224-226, 390-396",
        _avg(tp.swift_logps, average=True),
        reason=r"first-label-wrapped",
        reproduction="test_finding_swift_roll_scores_the_first_label",
    ),
]

LOSS_EXAMPLES, LOGPS_EXAMPLES = 10, 25  # keeps the module near 40 s of CPU; verdicts were checked at 100 too


def _load(case: Case) -> Callable:
    try:
        fn = case.target()
        # resolve the lazy loaders now, so that an unreachable registry skips instead of failing a check
        {
            TT: tp.torchtune_version,
            TRL: tp.trl_version,
            LIGER: tp.liger,
            ORLHF: tp.openrlhf,
            LF: tp.llamafactory,
            SWIFT: tp.swift,
        }[case.library]()
        if case.library in (LF, SWIFT):
            tp.trl_pinned()
    except tp.Unavailable as err:
        pytest.skip(str(err))
    return fn


def _marks(case: Case):
    return [pytest.mark.download] if case.library in WHEEL else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in EXPECTED])
def test_oracle_verdict(case: Case):
    fn = _load(case)
    report = dpo_ref.verify(
        fn,
        level=case.level,
        variant=case.variant,
        max_examples=LOSS_EXAMPLES if case.level == "loss" else LOGPS_EXAMPLES,
        name=f"{case.library} {case.source.split(',')[0]}",
    )
    text = report.to_text()
    if case.conforms:
        assert report.passed, f"hand-checked: conforms ({case.finding})\n{text}"
    else:
        assert not report.passed, f"hand-checked: does NOT conform ({case.finding})\n{text}"
        said = " ".join([c.message for c in report.failures] + report.diagnosis)  # the checks' words and diagnosis
        assert re.search(case.reason, said), f"the report should name what it computes ({case.reason})\n{text}"


# ---- the findings, shown without the oracle: library output against a float64 closed form written out here -------


def _needs(loader):
    try:
        return loader()
    except tp.Unavailable as err:
        pytest.skip(str(err))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@pytest.mark.download
def test_finding_llamafactory_ipo_is_dpo():
    """pref_loss='ipo' at policy = reference (h = 0): IPO is (0 - 1/(2 tau))^2 = 1 at tau 0.5; LLaMA-Factory gives
    ln 2, DPO's value. At h = 3 it equals -logsigmoid(0.5 * 3) = softplus(-1.5) too."""
    _needs(tp.llamafactory), _needs(tp.trl_pinned)
    zero = torch.zeros(1, dtype=torch.float64)
    losses = tp.llamafactory_loss(zero, zero, zero, zero, beta=0.5, loss_type="ipo")[0]
    assert losses.item() == pytest.approx(math.log(2), rel=1e-15)  # DPO
    assert 1.0 != pytest.approx(losses.item(), rel=0.1)  # not IPO's 1 / (4 tau^2)
    h = torch.tensor([3.0], dtype=torch.float64)
    losses = tp.llamafactory_loss(h, zero, zero, zero, beta=0.5, loss_type="ipo")[0]
    assert losses.item() == pytest.approx(_softplus(-1.5), rel=1e-15)
    assert losses.item() != pytest.approx((3.0 - 1.0) ** 2, rel=0.1)  # IPO: (h - 1/(2 tau))^2 = 4


@pytest.mark.download
def test_finding_swift_roll_scores_the_first_label():
    """One row, two tokens, both labels set (no prompt): the only scorable label is labels[1], predicted at 0, so
    the sum is log softmax(logits[0])[labels[1]]. ms-swift's roll by -1 also scores labels[0] with logits[1], the
    row's last position (`dpo_trainer.py:143-145`); with labels[0] = -100 (a prompt token first) it is right."""
    _needs(tp.swift)
    logits = torch.tensor([[[-0.03, -0.11], [0.13, -0.07]]], dtype=torch.float64)  # (1, 2, 2)

    def lsm(t, v):  # log softmax(logits[0, t])[v], written out
        return float(logits[0, t, v] - torch.logsumexp(logits[0, t], -1))

    got = tp.swift_logps(logits, torch.tensor([[0, 1]]))
    assert got.item() == pytest.approx(lsm(0, 1) + lsm(1, 0), rel=1e-12)  # the wrapped label scored too
    assert got.item() != pytest.approx(lsm(0, 1), rel=1e-3)  # not the contract's value
    masked = tp.swift_logps(logits, torch.tensor([[-100, 1]]))
    assert masked.item() == pytest.approx(lsm(0, 1), rel=1e-12)


@pytest.mark.download
def test_finding_liger_robust_is_rdpo():
    """loss_type='robust', eps 0.1, beta h = 2: cDPO is 0.9 softplus(-2) + 0.1 softplus(2) = 0.3269; Liger gives
    (0.9 softplus(-2) - 0.1 softplus(2)) / 0.8 = -0.1231 (rDPO, negative)."""
    _needs(tp.liger)
    h, zero = torch.tensor([4.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    loss = tp.liger_loss(h, zero, zero, zero, beta=0.5, label_smoothing=0.1, loss_type="robust")[0]
    cdpo = 0.9 * _softplus(-2) + 0.1 * _softplus(2)
    rdpo = (0.9 * _softplus(-2) - 0.1 * _softplus(2)) / 0.8
    assert loss.item() == pytest.approx(rdpo, rel=1e-12)
    assert loss.item() != pytest.approx(cdpo, rel=0.1)


def test_finding_torchtune_rso_is_hinge():
    """RSOLoss(gamma) is relu(1 - gamma h): zero loss for gamma h >= 1, where DPO's -logsigmoid is positive."""
    _needs(tp.torchtune_version)
    h = torch.tensor([-1.0, 0.0, 1.0, 4.0], dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    losses = tp.torchtune_rso(h, zero, zero, zero, beta=0.5)[0]
    assert losses.tolist() == pytest.approx([max(0.0, 1 - 0.5 * x) for x in h.tolist()], rel=1e-15)
    assert losses[-1].item() == 0.0 and _softplus(-2.0) > 0.1


def _token_batch(dtype):
    gen = torch.Generator().manual_seed(0)
    B, T, V = 4, 12, 50
    logits = (torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    for row, (p, end) in enumerate([(3, T), (5, T), (2, 9), (1, 11)]):  # prompt length, end of the response
        labels[row, :p] = -100
        labels[row, end:] = -100
    return logits, labels


_LOGPS = {
    TRL: lambda: tp.trl_logps,
    TT: lambda: tp.torchtune_logps,
    LIGER: lambda: (tp.liger(), tp.liger_logps)[1],
    ORLHF: lambda: (tp.openrlhf(), tp.openrlhf_logps)[1],
    LF: lambda: (tp.llamafactory(), tp.trl_pinned(), tp.llamafactory_logps)[2],
    SWIFT: lambda: (tp.swift(), tp.trl_pinned(), tp.swift_logps)[2],
}
_F32_SCORERS = {TRL, LIGER, ORLHF, LF}  # read in their code: float32 whatever the logits' dtype
_MULTIPLIERS = {TT, LIGER, ORLHF, LF}  # (per_token * mask).sum(-1)


@pytest.mark.parametrize(
    "library", [pytest.param(lib, marks=[pytest.mark.download] if lib in WHEEL else []) for lib in _LOGPS]
)
def test_finding_float32_scoring(library):
    """float64 logits: the float32 scorers return float32 within float32 rounding of the float64 sum (bound: 4 eps32
    per token times (|logit| max + |log p|) summed, the error of one log-softmax and one addition per token); the
    others return float64 and agree to float64 rounding."""
    fn = _needs(_LOGPS[library])
    logits, labels = _token_batch(torch.float64)
    out = fn(logits, labels)
    ref = sequence_logps(logits, labels)
    n = (labels[:, 1:] != -100).sum(dim=1)
    scale = n * (logits.abs().amax() + 1) + ref.abs()
    if library in _F32_SCORERS:
        assert out.dtype == torch.float32
        bound = 4 * torch.finfo(torch.float32).eps * scale
    else:
        assert out.dtype == torch.float64
        bound = 4 * torch.finfo(torch.float64).eps * scale
    assert ((out.double() - ref).abs() <= bound).all(), ((out.double() - ref).abs(), bound)


@pytest.mark.parametrize(
    "library", [pytest.param(lib, marks=[pytest.mark.download] if lib in WHEEL else []) for lib in _LOGPS]
)
def test_finding_mask_multiply_nan(library):
    """A row of -inf logits at an unscored (prompt) position: (per_token * mask) gives -inf * 0 = NaN for the
    multipliers; masked_fill / index assignment (TRL 1.16, ms-swift) stay finite and exact."""
    fn = _needs(_LOGPS[library])
    logits, labels = _token_batch(torch.float64)
    ref = sequence_logps(logits, labels)
    logits[0, 0, :] = float("-inf")  # row 0's first prompt position: never scored
    out = fn(logits, labels)
    if library in _MULTIPLIERS:
        assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any()
    else:
        assert torch.isfinite(out).all()
        assert out.double().tolist() == pytest.approx(ref.tolist(), rel=1e-6)


@pytest.mark.parametrize(
    "library", [pytest.param(lib, marks=[pytest.mark.download] if lib in WHEEL else []) for lib in (TT, SWIFT)]
)
def test_finding_bf16_scored_in_bf16(library):
    """bf16 logits: torchtune's get_batch_log_probs and ms-swift's (TRL 0.24 selective_log_softmax) log-softmax in
    bf16 and return bf16 (a precision choice, not a formula error); the others upcast to float32 first."""
    fn = _needs(_LOGPS[library])
    logits, labels = _token_batch(torch.bfloat16)
    out = fn(logits, labels)
    ref = sequence_logps(logits.double(), labels)
    assert out.dtype == torch.bfloat16
    rel = ((out.double() - ref).abs() / ref.abs()).max().item()
    assert 1e-5 < rel < 2 * torch.finfo(torch.bfloat16).eps  # worse than float32, within bf16 rounding here


def test_expected_table_is_complete():
    """Six libraries, both levels where they have them, and a source and a finding for every row."""
    assert {c.library for c in EXPECTED} == {TT, TRL, LIGER, ORLHF, LF, SWIFT}
    for c in EXPECTED:
        assert c.level in ("loss", "logps") and c.variant in ("dpo", "cdpo", "ipo", "ipo-mean")
        assert c.finding and c.source and (c.conforms or (c.reason and c.reproduction))
        if c.reproduction:
            assert c.reproduction in globals(), c.reproduction
    assert len({(c.library, c.level, c.variant, c.source) for c in EXPECTED}) == len(EXPECTED)
