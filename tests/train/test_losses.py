"""`dpo-ref train --loss NAME` for every loss of the registry: step 0 against the loss at initialisation, a short
run that learns, the coefficients checked against the registry's ranges, combinations, no reference model for
the reference-free losses. Every parametrization is read from `dpo_ref.variants`, not from a list here."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

import dpo_ref.train.loop as train_module
from dpo_ref.errors import InputError
from dpo_ref.train.config import TrainConfig, check_config
from dpo_ref.train.data import prepare_dataset
from dpo_ref.train.loop import frozen_reference, train
from dpo_ref.train.model import load_model_and_tokenizer
from dpo_ref.variants import RECORDS, REGISTRY

NAMES = [v.name for v in RECORDS]
SEED, BATCH, STEPS, LR = 0, 8, 10, 3e-3

# each loss at policy = reference (h = 0, rho_w = rho_l = 0) in closed form, at the registry's default coefficients
# (c): written out by hand from each formula, so that they check the registry's mpmath references too
LN2 = math.log(2)
AT_INIT = {
    "dpo": lambda c: LN2,
    "cdpo": lambda c: LN2,  # -(1 - eps) log 1/2 - eps log 1/2
    "ipo": lambda c: 1 / (4 * c["tau"] ** 2),  # (0 - 1/(2 tau))^2
    "ipo-mean": lambda c: 1 / (4 * c["tau"] ** 2),
    "ipo-norm": lambda c: 1 / (4 * c["tau"] ** 2),
    "hinge": lambda c: 1.0,  # max(0, 1 - 0)
    "exo_pair": lambda c: -LN2 - 0.5 * math.log(c["label_smoothing"] * (1 - c["label_smoothing"])),  # KL(1/2 || 1-eps)
    "nca_pair": lambda c: 2 * LN2,  # ln 2 + ln 2 / 2 + ln 2 / 2
    "robust": lambda c: LN2,  # [(1 - eps) ln 2 - eps ln 2] / (1 - 2 eps)
    "bco_pair": lambda c: -2 * math.log(1 / (1 + math.exp(c["delta"]))) if c["delta"] else 2 * LN2,
    "sppo_hard": lambda c: 2 * (1 / (2 * c["beta"])) ** 2,
    "aot": lambda c: LN2,
    "aot_unpaired": lambda c: LN2,
    "apo_zero": lambda c: 1.0,  # 1 - 1/2 + 1/2
    "apo_down": lambda c: 1.0,  # 1/2 + 1 - 1/2
    "discopop": lambda c: 0.5 * LN2 + 0.5,  # (1 - 1/2) ln 2 + 1/2 exp(0)
    "sigmoid_norm": lambda c: LN2,
    "dpop": lambda c: LN2,  # the penalty max(0, 0) is 0
}


def small(data, out, **overrides) -> TrainConfig:
    cfg = dict(data=data[0], eval_data=data[1], out=str(out), sft_steps=0, rpo_alpha=0.0, batch_size=BATCH)
    cfg.update(steps=STEPS, lr=LR, warmup_steps=0, log_every=1, eval_every=1000, save_every=1000, progress=False)
    cfg.update(overrides)
    return TrainConfig(**cfg)


@pytest.fixture(scope="module")
def step0_rows(data):
    """(pc, pr, rc, rr, n_w, n_l) of the first batch at step 0, computed here: the model built from the same seed,
    the first update's pairs from the seed's permutation, each response's log-prob summed in float64 from the
    full logits of its unpadded sequence (not the trainer's scorer); the reference is the policy (rc = pc)."""
    model, tokenizer = load_model_and_tokenizer(None, seed=SEED)
    model.eval()
    pairs, _ = prepare_dataset(data[0], tokenizer, max_length=1024, max_prompt_length=512, builtin_tokenizer=True)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(SEED * 1_000_003)).tolist()

    def logp(prompt, response):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()  # (T, V)
        lp = torch.log_softmax(logits[:-1], -1)  # position t predicts token t + 1
        return sum(float(lp[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1])), len(response)

    rows = []
    for i in order[:BATCH]:
        p = pairs[i]
        (pc, nc), (pr, nr) = logp(p.prompt_ids, p.chosen_ids), logp(p.prompt_ids, p.rejected_ids)
        rows.append(tuple(mpmath.mpf(x) for x in (pc, pr, pc, pr)) + (nc, nr))
    return rows


def expected_step0(name: str, rows, coefficients: dict | None = None) -> float:
    """The mean loss of the first batch, from the registry's mpmath reference on `rows`."""
    v = REGISTRY[name]
    values = v.reference(rows, {**v.defaults(), **(coefficients or {})})
    return float(mpmath.fsum(values) / len(values))


def test_every_loss_with_a_reference_has_a_closed_form_at_init_here():
    assert set(AT_INIT) == {v.name for v in RECORDS if not v.reference_free}


@pytest.mark.parametrize("name", NAMES)
def test_step0_is_the_loss_at_initialisation_and_a_short_run_learns(data, tmp_path, name, step0_rows):
    v = REGISTRY[name]
    summary = train(small(data, tmp_path, loss=name))
    history = summary["history"]
    first = history[0]
    assert first["step"] == 0
    expected = expected_step0(name, step0_rows)
    assert first["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    if not v.reference_free:  # policy = reference: h = 0, whatever the log-probs
        assert first["loss"] == pytest.approx(AT_INIT[name](v.defaults()), rel=1e-6, abs=1e-6)
        assert first["logratio/chosen"] == 0.0 and first["logratio/rejected"] == 0.0
    else:
        assert "logratio/chosen" not in first  # no reference, no log-ratio
    # the short run learns: the held-out loss falls (the accuracy of the implicit reward is reported beside it)
    evals = [r for r in history if "eval/loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == STEPS
    before, after = evals[0]["eval/loss"], evals[-1]["eval/loss"]
    assert after < before - 0.002 * abs(before), (before, after, evals[-1]["eval/accuracy"])
    assert all(math.isfinite(r["loss"]) for r in history if "loss" in r)


def test_the_learning_check_rejects_a_run_that_does_not_learn(data, tmp_path):
    history = train(small(data, tmp_path, loss="sppo_hard", lr=1e-12))["history"]
    evals = [r for r in history if "eval/loss" in r]
    assert not evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.002 * abs(evals[0]["eval/loss"])


def test_the_step0_check_catches_a_reference_that_is_not_the_policy(data, tmp_path, monkeypatch, step0_rows):
    def perturbed_copy(model):
        ref = frozen_reference(model)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return ref

    monkeypatch.setattr(train_module, "frozen_reference", perturbed_copy)
    first = train(small(data, tmp_path, loss="hinge", steps=1))["history"][0]
    assert abs(first["loss"] - expected_step0("hinge", step0_rows)) > 1e-4


@pytest.mark.parametrize("name", [v.name for v in RECORDS if v.reference_free])
def test_a_reference_free_loss_builds_no_reference_model(data, tmp_path, monkeypatch, name):
    def refuse(model):
        raise AssertionError("a reference model was built")

    monkeypatch.setattr(train_module, "frozen_reference", refuse)
    summary = train(small(data, tmp_path, loss=name, steps=2))
    assert summary["history"][0]["step"] == 0


def test_coefficients_reach_the_loss(data, tmp_path, step0_rows):
    first = train(small(data, tmp_path, loss="simpo", coef="beta=1.5,gamma=0.25", steps=1))["history"][0]
    assert first["loss"] == pytest.approx(expected_step0("simpo", step0_rows, {"beta": 1.5, "gamma": 0.25}), rel=1e-5)
    first = train(small(data, tmp_path / "ipo", loss="ipo-norm", tau=0.5, steps=1))["history"][0]
    assert first["loss"] == pytest.approx(1.0, abs=1e-6)  # (0 - 1/(2 x 0.5))^2


def test_a_weighted_combination_is_the_weighted_sum_and_logs_each_loss(data, tmp_path, step0_rows):
    cfg = small(data, tmp_path, loss="dpo,sft", loss_weights="dpo=1,sft=0.5", coef="dpo.beta=0.2")
    history = train(cfg)["history"]
    first = history[0]
    sft = expected_step0("sft", step0_rows)
    assert first["loss/dpo"] == pytest.approx(LN2, abs=1e-6) and first["loss/sft"] == pytest.approx(sft, rel=1e-5)
    assert first["loss"] == pytest.approx(LN2 + 0.5 * sft, rel=1e-5)
    evals = [r for r in history if "eval/loss" in r]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] and "eval/loss/sft" in evals[-1]


def test_aliases_train_their_variant():
    assert check_config(TrainConfig(loss="rdpo")).loss == "robust"
    assert check_config(TrainConfig(loss="sigmoid")).beta == 0.1  # dpo's own path, its defaults filled


def test_dpo_through_the_registry_equals_the_original_path(data, tmp_path):
    """`--coef beta=0.1` takes the generic path: the same losses and weights as plain --loss dpo."""
    a = train(small(data, tmp_path / "a", steps=3))
    b = train(small(data, tmp_path / "b", coef="beta=0.1", steps=3))
    assert [r["loss"] for r in a["history"] if "loss" in r] == [r["loss"] for r in b["history"] if "loss" in r]
    sa, sb = a["policy"].state_dict(), b["policy"].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- refused


def _outside(p) -> list[float]:
    """Values just outside the registry's range of coefficient `p`."""
    out = []
    if p.low is not None:
        out.append(p.low if not p.low_inclusive else p.low - 1.0)
    if p.high is not None:
        out.append(p.high if not p.high_inclusive else p.high + 1.0)
    return out


OUT_OF_RANGE = [(v.name, p.name, x) for v in RECORDS for p in v.params for x in _outside(p)]


@pytest.mark.parametrize(("name", "coefficient", "value"), OUT_OF_RANGE)
def test_a_coefficient_outside_the_registry_range_is_refused_naming_it(name, coefficient, value):
    with pytest.raises(InputError, match=f"--coef {coefficient}"):
        check_config(TrainConfig(loss=name, coef=f"{coefficient}={value}"))


BAD = [
    (["--loss", "simpo", "--coef", "gamma=-1"], "--coef gamma must be in [0, inf)"),
    (["--loss", "robust", "--label-smoothing", "0.5"], "--label-smoothing must be in [0, 0.5)"),
    (["--loss", "exo_pair", "--coef", "label_smoothing=0"], "--coef label_smoothing must be in (0, 0.5)"),
    (["--loss", "hinge", "--beta", "0"], "--beta must be in (0, inf)"),
    (["--loss", "hinge", "--tau", "0.5"], "--tau: no loss of --loss hinge takes tau"),
    (["--loss", "sft", "--coef", "beta=1"], "--coef beta: no loss of --loss sft takes beta"),
    (["--loss", "simpo", "--coef", "gamma"], "--coef takes NAME=VALUE pairs"),
    (["--loss", "simpo", "--coef", "gamma=abc"], "expected a number"),
    (["--loss", "dpo,sft", "--loss-weights", "ipo=1"], "--loss-weights names ipo"),
    (["--loss", "dpo,sft", "--loss-weights", "sft=-1"], "--loss-weights sft must be >= 0"),
    (["--loss", "dpo,sft", "--coef", "hinge.beta=1"], "does not train hinge"),
    (["--loss", "dpop", "--coef", "dpop.dpop_lambda=-1"], "--coef dpop.dpop_lambda must be in [0, inf)"),
    (["--loss", "simpo", "--precompute-ref"], "--precompute-ref: simpo is reference-free"),
    (["--loss", "kto"], "--loss: must be one of"),
    (["--loss", "dpo,dpo"], "--loss: names dpo twice"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_loss_settings_exit_2_with_one_line_naming_the_option(tmp_path, capsys, args, message):
    from dpo_ref.cli import main

    out = tmp_path / "run"
    try:
        code = main(["train", *args, "--out", str(out), "--no-progress"])
    except SystemExit as exit:  # argparse's own error (--loss is parsed by the registry's names)
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()  # refused before anything is written


ROUTES = [
    ("ipo-mean", {"precompute_ref": True}),
    ("simpo", {"prefix_sharing": True}),
    ("sigmoid_norm", {"packing": True}),
]


@pytest.mark.parametrize(("name", "options"), ROUTES)
def test_precomputed_references_and_the_layouts_give_the_same_losses(data, tmp_path, name, options):
    """The counts and reference log-probs reach the losses the same way through --precompute-ref and the
    prefix-sharing and packed layouts (averaged, length-normalised: the counts matter)."""
    plain = train(small(data, tmp_path / "plain", loss=name, steps=3))["history"]
    other = train(small(data, tmp_path / "other", loss=name, steps=3, **options))["history"]
    assert [r["loss"] for r in other if "loss" in r] == pytest.approx(
        [r["loss"] for r in plain if "loss" in r], abs=1e-5
    )
