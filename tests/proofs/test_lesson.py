"""The lesson around the proofs (proofs/lesson.py): the core path as data, the table of the losses read from the
registry and the proofs, the plots drawn from the registry's functions, the experiment's results file and the
proofs' expressions, the exercises' checks, and the notebook functions (edit, recheck, restore)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn.functional as F

import proofs
from dpo_ref import variants
from proofs import cli, lesson, render
from proofs.core import ProofResult, StepFailed, StepResult

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _all_steps_hold(proof) -> ProofResult:
    return ProofResult(proof, [StepResult(s, k, True, "", 0.0) for k, s in enumerate(proof.steps, 1)])


@pytest.fixture(autouse=True)
def _no_edit_survives():
    """An edit made by a test (or an exercise) must not leak into the next test."""
    yield
    lesson.restore()


# ---- the layout -----------------------------------------------------------------------------------------


def test_core_path_is_proofs_and_the_rest_follow_in_lesson_order():
    assert set(lesson.CORE_PATH) <= set(proofs.MODULES) and len(set(lesson.CORE_PATH)) == len(lesson.CORE_PATH)
    assert 8 <= len(lesson.CORE_PATH) <= 11  # "about 9": Bradley–Terry to the DPO and IPO losses and their optima
    assert {"bt-cancellation", "dpo-loss", "deterministic-preference", "ipo"} <= set(lesson.CORE_PATH)
    core, rest = lesson.lesson_order(["new-proof", *proofs.MODULES])
    assert core == list(lesson.CORE_PATH)
    assert rest == ["new-proof", *(n for n in proofs.MODULES if n not in lesson.CORE_PATH)]  # a new one slots in


def test_the_lesson_renders_part_1_then_the_table_the_exercises_and_part_2():
    text = (ROOT / "docs" / "lesson.md").read_text(encoding="utf-8")
    anchors = re.findall(r'<a id="([^"]+)"></a>', text)
    core_at = anchors.index("core-path")
    assert anchors[core_at + 1 : core_at + 1 + len(lesson.CORE_PATH)] == list(lesson.CORE_PATH)
    tail = anchors[core_at + 1 + len(lesson.CORE_PATH) :]
    assert tail[:3] == ["losses", "exercises", "further"]
    assert tail[3:] == [n for n in proofs.MODULES if n not in lesson.CORE_PATH]
    for name, after in lesson.FIGURES.items():  # each figure right after its proof's section
        section = text.split(f'<a id="{after}"></a>')[1].split("<a id=")[0]
        assert f"]({lesson.figure_path(name)})" in section


def test_moving_a_proof_into_the_core_path_moves_it_in_the_lesson(monkeypatch):
    monkeypatch.setattr(lesson, "CORE_PATH", (*lesson.CORE_PATH, "hinge"))
    text = render.markdown([_all_steps_hold(p) for p in proofs.all_proofs()], "en")
    anchors = re.findall(r'<a id="([^"]+)"></a>', text)
    assert anchors.index("hinge") < anchors.index("losses") < anchors.index("further")


# ---- the table of the losses ----------------------------------------------------------------------------

SUBS = {"beta": "beta", "tau": "tau", "epsilon": "label_smoothing"}  # proof symbol -> registry coefficient


def _optimum_mismatches() -> list[str]:
    """Every registry optimum (margin or log-ratio) against the minimiser the proofs' checked claim states,
    evaluated at the record's default coefficients: two independent statements of one fact."""
    keys = {"margin": "h", "chosen_logratio": "rho_w", "rejected_logratio": "rho_l"}
    bad, compared = [], 0
    for row in lesson.summary_rows():
        record = variants.get(row.variant)
        stated = record.optimum(**record.defaults())
        if not stated or row.optimum is None:
            continue
        for key, var in keys.items():
            if key not in stated or var not in row.optimum.minimiser:
                continue
            expr = row.optimum.minimiser[var]
            values = {s: record.defaults()[SUBS[s.name]] for s in expr.free_symbols if s.name in SUBS}
            derived = float(expr.subs(values))
            compared += 1
            # both are a few float64 operations on the same coefficients: agreement to 1e-12 relative
            if not math.isclose(derived, stated[key], rel_tol=1e-12):
                bad.append(f"{row.variant}: {var}* = {derived} (proof) vs {stated[key]} (registry)")
    assert compared >= 6, compared
    return bad


def test_the_table_optimum_is_the_registry_optimum():
    assert _optimum_mismatches() == []


def test_a_wrong_registry_optimum_is_caught(monkeypatch):
    wrong = dataclasses.replace(variants.get("ipo"), optimum=lambda tau=0.1, **_: {"margin": 1 / tau})
    monkeypatch.setattr(variants, "REGISTRY", {**variants.REGISTRY, "ipo": wrong})
    assert _optimum_mismatches() == ["ipo: h* = 5.0 (proof) vs 10.0 (registry)"]


def test_the_table_is_generated_from_the_registry_and_the_proofs(monkeypatch):
    numbers = {name: i for i, name in enumerate(proofs.MODULES, 1)}
    table = "\n".join(render.losses_table(numbers, "en"))
    assert table.count("\n| `") == len(variants.RECORDS)
    for record in variants.RECORDS:
        assert f"| `{record.name}` | `{record.formula.replace('|', chr(92) + '|')}` |" in table
    ipo_row = next(line for line in table.splitlines() if line.startswith("| `ipo` |"))
    assert "h^* = \\frac{1}{2 \\tau}" in ipo_row and "(#ipo)" in ipo_row
    # change what a proof claims and the table changes with it
    (tau_,) = lesson.symbols("tau")
    lesson.edit("ipo", 2, x0=1 / (3 * tau_))
    edited = "\n".join(render.losses_table(numbers, "en"))
    assert "h^* = \\frac{1}{3 \\tau}" in edited


def test_the_committed_lesson_holds_the_table():
    text = (ROOT / "docs" / "lesson.md").read_text(encoding="utf-8")
    numbers = {r.proof.name: i for i, r in enumerate(_lesson_order_results(), 1)}
    assert "\n".join(render.losses_table(numbers, "en")) in text


def _lesson_order_results():
    core, rest = lesson.lesson_order(list(proofs.MODULES))
    return [_all_steps_hold(proofs.get(n)) for n in core + rest]


# ---- the notebook functions -----------------------------------------------------------------------------


def test_edit_recheck_restore(capsys):
    (tau,) = lesson.symbols("tau")
    lesson.recheck("ipo", 2)
    lesson.edit("ipo", 2, x0=1 / tau)
    with pytest.raises(StepFailed, match="proof 'ipo', step 2 'The per-pair minimiser' failed: f'\\(x0\\) = 1/tau"):
        lesson.recheck("ipo", 2)
    assert lesson.why_not("ipo", 2) == "f'(x0) = 1/tau, not 0"
    lesson.restore("ipo", 2)
    assert lesson.why_not("ipo", 2) is None
    lesson.recheck("ipo", 2)
    out = capsys.readouterr().out
    assert "✗ ipo, step 2" in out and out.count("✓ ipo, step 2") == 3
    with pytest.raises(TypeError, match="GlobalMinimum has fields"):
        lesson.edit("ipo", 2, minimiser=0)
    with pytest.raises(IndexError, match="steps 1 to"):
        lesson.recheck("ipo", 99)


# ---- exercises ------------------------------------------------------------------------------------------

tau, eps = lesson.symbols("tau", "eps")
WRONG = {
    "break-a-step": [0, -1 / tau, 1 / (2 * tau), 2 / tau],
    "break-the-code": [{"ipo"}, {"ipo", "ipo-psi", "ipo-noise", "cdpo"}, "ipo"],
    "derive-an-optimum": [1 / (2 * tau), (1 - eps) / (2 * tau), (1 + 2 * eps) / (2 * tau), (1 - 2 * eps) / tau],
}


def _namespace() -> dict:
    return {"lesson": lesson, "proofs": proofs}


@pytest.mark.parametrize("exercise", lesson.EXERCISES, ids=lambda e: e.name)
def test_each_exercise_check_passes_the_solution_and_fails_wrong_answers(exercise, capsys):
    exec(exercise.starter, _namespace())  # noqa: S102 (our own cells): unanswered, no error
    assert f"· {exercise.name}: not answered yet" in capsys.readouterr().out
    exec(exercise.solution, _namespace())  # noqa: S102
    assert f"✓ {exercise.name}: right" in capsys.readouterr().out
    assert len(WRONG[exercise.name]) >= 2
    for answer in WRONG[exercise.name]:
        with pytest.raises(AssertionError):
            lesson.check(exercise.name, answer)
    assert not lesson._ORIGINAL  # every edit the exercise made was undone


def test_the_code_exercise_runs_the_comparisons(monkeypatch):
    """Its truth is found by running the comparisons with the broken function, not looked up: a comparison
    that stops calling the function drops out of the right answer."""
    from proofs import ipo_noise
    from proofs.numeric import Row

    assert lesson._proofs_catching("dpo_ref.losses.ipo_losses_from_margin", lesson._ipo_target_one_over_tau) == {
        "ipo",
        "ipo-psi",
        "ipo-noise",
    }
    monkeypatch.setattr(ipo_noise, "compare", lambda: [Row("a value that does not call the loss", 1.0, 1.0)])
    assert "ipo-noise" not in lesson._proofs_catching(
        "dpo_ref.losses.ipo_losses_from_margin", lesson._ipo_target_one_over_tau
    )


# ---- plots ----------------------------------------------------------------------------------------------


def test_at_least_six_margin_losses_from_the_registry():
    names = [v.name for v in lesson.margin_losses()]
    assert len(names) >= 6 and {"dpo", "cdpo", "ipo", "hinge"} <= set(names)


def test_loss_curves_are_the_registry_functions():
    """DPO's curve against its closed form in float64 (log1p form, so exact to a few ulps: 1e-12 relative is
    generous), and IPO's weight vanishing exactly at its target 1/(2 tau)."""
    beta_, tau_ = 0.5, 0.2
    hs = [-7.0, -1.0, 0.0, 0.3, 2.5, 11.0]
    curves = lesson.loss_curves(hs, beta_, tau_)
    for h, loss, weight in zip(hs, curves["dpo"]["loss"], curves["dpo"]["weight"]):
        assert math.isclose(loss, math.log1p(math.exp(-beta_ * h)), rel_tol=1e-12)
        assert math.isclose(weight, beta_ / (1 + math.exp(beta_ * h)), rel_tol=1e-12)
    (at_target,) = lesson.loss_curves([1 / (2 * tau_)], beta_, tau_)["ipo"]["weight"]
    assert at_target == 0.0
    assert curves["ipo"]["coefficients"] == {"tau": tau_}
    assert curves["discopop"]["coefficients"]["tau"] == variants.get("discopop").defaults()["tau"]  # not IPO's


def test_a_broken_registry_function_shows_in_the_curves(monkeypatch):
    import dpo_ref.losses

    def no_beta(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0, validate=True):
        m = (pc - rc) - (pr - rr)
        return dpo_ref.losses.PreferenceLoss(-F.logsigmoid(m), m.detach(), m.detach())

    monkeypatch.setattr(dpo_ref.losses, "dpo_loss", no_beta)
    (loss,) = lesson.loss_curves([2.0], 0.5, 0.2)["dpo"]["loss"]
    assert not math.isclose(loss, math.log1p(math.exp(-1.0)), rel_tol=1e-6)

    def not_a_margin_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0, validate=True):
        return dpo_ref.losses.PreferenceLoss(-F.logsigmoid(beta * (pc - rc)), pc, pr)

    monkeypatch.setattr(dpo_ref.losses, "dpo_loss", not_a_margin_loss)
    with pytest.raises(ValueError, match="dpo is not a function of the margin alone"):
        lesson.loss_curves([3.0], 0.5, 0.2)


def test_optimal_policy_is_the_proofs_expression():
    """Against an independent softmax of log pi_ref + r / beta, and its two limits."""
    rewards, reference = (1.0, 0.5, 0.0), (0.2, 0.3, 0.5)
    betas = [0.05, 0.7, 3.0, 40.0]
    curves = lesson.optimal_policy(betas, rewards, reference)
    for j, b in enumerate(betas):
        z = [math.log(p) + r / b for p, r in zip(reference, rewards)]
        top = max(z)
        want = [math.exp(x - top) / sum(math.exp(y - top) for y in z) for x in z]
        for i in range(3):
            assert math.isclose(curves[i][j], want[i], rel_tol=1e-12)
    assert lesson.optimal_policy([1e-3], rewards, reference)[0][0] > 1 - 1e-12  # beta -> 0: the best response
    with pytest.raises(ValueError, match="reference positive and summing to 1"):
        lesson.plot_optimal_policy(reference=(0.5, 0.5, 0.5))


def test_overfit_curves_are_the_experiments_results_file():
    results = json.loads((ROOT / "docs" / "results" / "overfit.json").read_text(encoding="utf-8"))
    runs = lesson.overfit_trajectory()
    assert set(runs) == set(results["results"])
    for name, run in runs.items():
        assert run["p_rejected"][-1] == results["results"][name]["p_rejected_end"]
        assert run["margin"][-1] == results["results"][name]["margin_end"]


def test_overfit_without_a_trajectory_runs_the_experiment(tmp_path, monkeypatch):
    from dpo_ref.experiments import run

    (tmp_path / "overfit.json").write_text('{"results": {}}', encoding="utf-8")
    rows = [{"loss_type": "dpo", "param": 0.1, "epoch": 0, "p_rejected": 0.5, "margin": 0.0}]
    monkeypatch.setattr(run, "run_overfit", lambda: rows)
    assert lesson.overfit_trajectory(tmp_path / "overfit.json") == {
        "dpo_0.1": {"epoch": [0], "p_rejected": [0.5], "margin": [0.0]}
    }


def test_every_figure_is_drawn_and_the_committed_ones_are_embedded(tmp_path):
    pytest.importorskip("matplotlib")
    written = lesson.write_figures(str(tmp_path))
    assert sorted(Path(p).name for p in written) == sorted(f"{n}.png" for n in lesson.FIGURES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in lesson.FIGURES)  # no temp
    for path in written:
        assert Path(path).read_bytes().startswith(PNG)
    for doc in ("lesson.md", "lesson.zh.md", "lesson.ipynb", "lesson.zh.ipynb"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        embedded = set(re.findall(r"\]\((lesson/[\w.]+\.png)\)", text))
        assert embedded == {lesson.figure_path(n) for n in lesson.FIGURES}, doc
        for rel in embedded:
            assert (ROOT / "docs" / rel).read_bytes().startswith(PNG)


def test_plots_return_pngs_for_other_coefficients():
    pytest.importorskip("matplotlib")
    assert lesson.plot_losses(beta=2.0, tau=0.05).png().startswith(PNG)
    assert lesson.plot_optimal_policy(beta=0.1)._repr_png_().startswith(PNG)


def test_notebook_cells_other_than_the_steps_run(capsys, monkeypatch):
    """The quick tier's run of both notebooks: every code cell but the per-step re-checks and comparisons
    (the full tier runs every cell on a fresh kernel), in this process, from docs/ as Jupyter would."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(ROOT / "docs")
    for path in ("lesson.ipynb", "lesson.zh.ipynb"):
        namespace: dict = {}
        cells = json.loads((ROOT / "docs" / path).read_text(encoding="utf-8"))["cells"]
        figures = {lesson.figure_cell(n) for n in lesson.FIGURES}
        drawn = 0
        for cell in cells:
            code = "".join(cell["source"])
            if cell["cell_type"] != "code" or code.startswith(("lesson.recheck(", "lesson.compare(")):
                continue
            if code in figures:  # a plot cell: its value is what Jupyter shows
                drawn += isinstance(eval(code, namespace), lesson.Plot)  # noqa: S307 (our own cells)
            else:
                exec(code, namespace)  # noqa: S102
        assert namespace["lesson"].__name__ == "proofs.lesson" and drawn == len(lesson.FIGURES)
    out = capsys.readouterr().out
    assert out.count("✓ break-the-code: right") == 2


# ---- the command ----------------------------------------------------------------------------------------


def test_prove_figures_writes_the_pngs_and_refuses_bad_folders(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "figs"
    assert cli.main(["--only", "init-ln2", "--figures", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.png" for n in lesson.FIGURES)
    (tmp_path / "file").write_text("x")
    assert cli.main(["--only", "init-ln2", "--figures", str(tmp_path / "file")]) == 2
    assert cli.main(["--only", "init-ln2", "--figures", str(tmp_path / "no" / "such")]) == 2
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["--only", "init-ln2", "--figures", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "error" in line] == [
        f"python -m proofs: error: --figures: {str(tmp_path / 'file')!r} is not a directory",
        f"python -m proofs: error: --figures: directory {str(tmp_path / 'no')!r} does not exist",
        "python -m proofs: error: --figures: the plots need matplotlib; install the plot extra "
        "(pip install -e '.[plot]')",
    ]


def test_import_dpo_ref_imports_neither_matplotlib_nor_the_lesson():
    code = "import sys, dpo_ref; assert not {'matplotlib', 'proofs.lesson', 'dpo_ref.proofs.lesson'} & set(sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_importing_the_lesson_draws_nothing():
    code = "import sys; import proofs.lesson; assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
