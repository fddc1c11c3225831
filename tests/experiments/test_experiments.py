"""Experiments: the bandit's IPO optimum against a hand-derived closed form, overfit's two regimes, outputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import numpy as np
import pytest

from dpo_ref.cli import main
from dpo_ref.experiments.run import BANDIT_DATASETS, bandit_closed_form, run_bandit, run_overfit

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=float) - max(x))
    return e / e.sum()


def ipo_optimum_by_hand(dataset: str, tau: float) -> np.ndarray:
    """IPO's optimum derived on paper (least squares in the logit gaps x = a - b, y = b - c, k = 1/(2 tau)).

    D1 = {(a,b), (b,c), (a,c)}: minimise (x-k)^2 + (y-k)^2 + (x+y-k)^2  ->  x = y = 2k/3 = 1/(3 tau).
    D3 = {(a,b), (b,a), (b,c)}: minimise (x-k)^2 + (-x-k)^2 + (y-k)^2    ->  x = 0, y = k.
    """
    k = 1 / (2 * tau)
    x, y = {"D1": (2 * k / 3, 2 * k / 3), "D3": (0.0, k)}[dataset]
    return softmax([x + y, y, 0.0])  # logits (a, b, c) up to a constant


@pytest.mark.parametrize("dataset", ["D1", "D3"])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_bandit_closed_form_matches_the_hand_derivation(dataset, tau):
    np.testing.assert_allclose(bandit_closed_form(BANDIT_DATASETS[dataset], tau), ipo_optimum_by_hand(dataset, tau))


def test_bandit_ipo_converges_to_its_closed_form_and_dpo_does_not(tmp_path, capsys):
    """The CLI's --json result (IPO, 2000 Adam steps, 32 seeds) is within 0.01 of the closed form."""
    tau = 0.5
    for dataset in ("D1", "D3"):
        path = tmp_path / f"{dataset}.json"
        args = ["experiment", "bandit", "--datasets", dataset, "--losses", "ipo", "--tau", str(tau)]
        out = str(tmp_path / dataset)  # a run of its own: an --out holding results is refused without --overwrite
        assert main(args + ["--steps", "2000", "--seeds", "32", "--out", out, "--json", str(path)]) == 0
        assert capsys.readouterr().err.splitlines() == [f"dpo-ref experiment bandit: 1/1, {dataset} ipo"]
        result = json.loads(path.read_text())
        assert set(result) == {"dataset", "loss", "tau", "policy", "closed_form"}
        policy = np.array([result["policy"][a] for a in "abc"])
        np.testing.assert_allclose(policy, ipo_optimum_by_hand(dataset, tau), atol=0.01, rtol=0)
    # the comparison is sharp: DPO's optimum on D1 puts (almost) all mass on a, far from IPO's
    dpo = run_bandit(BANDIT_DATASETS["D1"], loss="dpo", tau=tau, steps=2000, seeds=4).mean(0)
    assert np.abs(dpo - ipo_optimum_by_hand("D1", tau)).max() > 0.1
    assert dpo[0] > 0.95


# ---------------------------------------------------------------------------------------------- overfit


def regime(rows: list[dict], loss_type: str, param: float) -> dict:
    sel = [r for r in rows if (r["loss_type"], r["param"]) == (loss_type, param)]
    return {"start": sel[0], "end": sel[-1], "last10": sel[-10:]}


def dpo_collapses(run: dict) -> bool:
    """pi(y_l) down by over 100x and sigma(beta h) above 0.99."""
    return run["end"]["p_rejected"] < run["start"]["p_rejected"] / 100 and run["end"]["sigmoid_beta_margin"] > 0.99


def ipo_settles(run: dict, tau: float) -> bool:
    """Over the last 10 epochs h stays within 10% of 1/(2 tau) (SGD at lr 0.1 oscillates around it) and
    pi(y_l) has not collapsed (above 1/100 of its start)."""
    target = 1 / (2 * tau)
    return all(abs(r["margin"] - target) < 0.1 * target for r in run["last10"]) and (
        run["end"]["p_rejected"] > run["start"]["p_rejected"] / 100
    )


def test_overfit_dpo_collapses_the_rejected_answer_ipo_stops_at_its_margin():
    rows = run_overfit(betas=(0.5,), taus=(0.1,), epochs=40)
    dpo, ipo = regime(rows, "dpo", 0.5), regime(rows, "ipo", 0.1)
    assert dpo["start"]["margin"] == 0.0 and math.isclose(dpo["start"]["loss"], math.log(2), abs_tol=1e-6)
    assert dpo_collapses(dpo)
    assert ipo_settles(ipo, 0.1)
    # each check tells the regimes apart: DPO does not settle at 1/(2 tau), IPO does not collapse
    assert not ipo_settles(dpo, 0.1)
    assert not dpo_collapses(ipo)


def test_overfit_cli_writes_csv_json_and_png(tmp_path, capsys):
    args = ["experiment", "overfit", "--out", str(tmp_path), "--epochs", "3", "--betas", "0.1", "--taus", "0.1"]
    assert main(args) == 0
    with open(tmp_path / "overfit.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 and {r["loss_type"] for r in rows} == {"dpo", "ipo"}
    final = json.loads((tmp_path / "overfit.json").read_text())
    assert set(final) == {"dpo_0.1", "ipo_0.1"}
    assert (tmp_path / "overfit.png").exists() == HAS_MATPLOTLIB
    # progress in a log (stderr is not a terminal here): one plain line per configuration
    err = capsys.readouterr().err.splitlines()
    assert err == ["dpo-ref experiment overfit: 1/2, dpo 0.1", "dpo-ref experiment overfit: 2/2, ipo 0.1"]


def test_overfit_json_results_file_holds_what_it_printed(tmp_path, capsys):
    args = ["experiment", "overfit", "--out", str(tmp_path / "o"), "--epochs", "2", "--betas", "0.1", "--taus", "0.1"]
    assert main([*args, "--json", str(tmp_path)]) == 2  # a directory: refused before the run
    assert not (tmp_path / "o").exists()
    capsys.readouterr()
    assert main([*args, "--json", str(tmp_path / "overfit.json")]) == 0
    result = json.loads((tmp_path / "overfit.json").read_text())
    printed = capsys.readouterr().out.splitlines()
    assert printed[: len(result["printed"])] == result["printed"] and set(result["results"]) == {"dpo_0.1", "ipo_0.1"}
    assert result["settings"]["epochs"] == 2 and result["machine"]["cpu_count"]
    # the per-epoch trajectory the lesson plots: the CSV's rows, run by run (epoch 0 is the reference: h = 0)
    with open(tmp_path / "o" / "overfit.csv") as f:
        rows = list(csv.DictReader(f))
    trajectory = result["trajectory"]
    assert set(trajectory) == {"dpo_0.1", "ipo_0.1"}
    for name, run in trajectory.items():
        mine = [r for r in rows if f"{r['loss_type']}_{float(r['param']):g}" == name]
        assert run["epoch"] == [0, 1, 2] and run["margin"][0] == 0.0
        assert run["p_rejected"] == [float(r["p_rejected"]) for r in mine]
        assert run["margin"] == [float(r["margin"]) for r in mine]


@pytest.mark.slow
def test_displacement_cli_writes_both_variants(tmp_path, capsys):
    args = ["experiment", "displacement", "--out", str(tmp_path), "--steps", "4", "--sft-steps", "5"]
    args += ["--eval-every", "2"]
    assert main(args) == 0
    with open(tmp_path / "displacement.csv") as f:
        rows = list(csv.DictReader(f))
    variants = {r["variant"] for r in rows}
    assert len(variants) == 2 and "dpo" in variants
    assert {r["step"] for r in rows if r["generation_accuracy"]} == {"0", "2", "4"}
    summary = json.loads((tmp_path / "displacement.json").read_text())
    assert all("generation_accuracy_end" in s for s in summary.values())
    assert (tmp_path / "displacement.png").exists() == HAS_MATPLOTLIB
    # progress in a log (stderr is not a terminal here): a plain line per run and per phase
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "dpo-ref experiment displacement: run 1/2, dpo" and "dpo-ref train: sft warm-up (5 steps)" in err
    assert main(args) == 2  # a rerun is refused: the earlier results stay
    assert main(args + ["--overwrite"]) == 0  # unless asked for: it replaces the experiment's own run directories


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib (the plot extra) is not installed")
def test_bandit_plot_has_labelled_axes_and_a_legend_that_covers_no_panel():
    """A policy near 1 fills a panel's height, so a legend inside any panel would cover its bar."""
    from dpo_ref.experiments.run import bandit_figure

    results = [
        {"dataset": d, "loss": loss, "tau": 0.1, "policy": {"a": 0.97, "b": 0.02, "c": 0.01},
         "closed_form": {"a": 0.96, "b": 0.03, "c": 0.01} if loss == "ipo" else None}
        for d in ("D1", "D3") for loss in ("dpo", "ipo")
    ]  # fmt: skip
    fig = bandit_figure(results)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == [
        "policy (mean over seeds)",
        "IPO closed form",
    ]
    box = legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert ax.get_xlabel() == "action" and ax.get_ylabel() == "probability"
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
