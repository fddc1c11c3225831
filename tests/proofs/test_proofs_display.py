"""Displays as written in the papers (issue 24, item 4): every displayed formula is the checked expression
printed in the paper's term order, and every result cites the paper and its equation.

A display is `core.display_form` of the claim's own objects: the same tree with the arguments of + and ·
reordered, printed as written. `core.shown` refuses a display that does not re-evaluate to the checked
expression, so a display cannot drift from what the checker verified; the tests below check that for every
step and show that a drifted display is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import sympy as sp

import proofs
from dpo_ref import variants
from proofs import bt_cancellation, core, notebook, papers, render, shift_invariance
from proofs.core import ClaimError, Positive, ProofResult, Step, StepResult, display_form

ALL = [(p.name, k) for p in proofs.all_proofs() for k in range(1, len(p.steps) + 1)]


def _objects(step: Step) -> list:
    """Every sympy object a step displays: its claim's fields and its abbreviations (keys and values)."""
    values = [getattr(step.claim, f.name) for f in dataclasses.fields(step.claim)]
    values += [x for kv in (step.where or {}).items() for x in kv]
    return core._flat(values)


@pytest.mark.parametrize("name,k", ALL, ids=[f"{n}-{k}" for n, k in ALL])
def test_every_display_re_evaluates_to_the_checked_expression(name, k):
    step = proofs.get(name).steps[k - 1]
    for obj in _objects(step):
        # the same tree after sympy's automatic evaluation (only the order of + and · differs), or, where a
        # sign was moved out of a negative factor (-(1 - ε) for (ε - 1)), a difference that expands to 0
        assert core._same_display(display_form(obj), obj), (name, k, obj)
    step.latex(), step.unicode()  # noqa: B018 (printing runs core.shown on every displayed object)


def test_a_display_that_differs_from_the_checked_expression_is_refused(monkeypatch):
    """A display_form that changes a term (here a sign: r(y_w) + r(y_l) for r(y_w) - r(y_l)) makes printing fail."""
    step = proofs.get("bt-cancellation").steps[0]  # e^{r(y_w)}/(e^{r(y_w)} + e^{r(y_l)}) = σ(r(y_w) - r(y_l))
    honest = core.display_form

    def drifted(expr):
        return honest(expr).xreplace({bt_cancellation.r_l: -bt_cancellation.r_l})

    monkeypatch.setattr(core, "display_form", drifted)
    with pytest.raises(ClaimError, match="does not re-evaluate"):
        step.latex()
    with pytest.raises(ClaimError, match="does not re-evaluate"):
        step.unicode()


@pytest.mark.parametrize(
    "name,k,wanted,unwanted",
    [
        # the reward difference and the Bradley–Terry denominator with the chosen response first
        (
            "bt-cancellation",
            1,
            "\\frac{e^{r(y_w)}}{e^{r(y_w)} + e^{r(y_l)}} = \\sigma{\\left(r(y_w) - r(y_l) \\right)}",
            "- r(y_l) + r(y_w)",
        ),
        # E[r] - β KL with q before log(q/p), as in the paper (was "-β Σ log(q/p) q + Σ q r")
        (
            "optimal-policy",
            3,
            "\\sum_{i=1}^{n} {q}_{i} {r}_{i} - \\beta \\sum_{i=1}^{n} {q}_{i} \\log",
            "\\right)} {q}_{i}",
        ),
        # the Plackett–Luce numerator is the product of the chosen exponentials (no e^{r}·e^{-r} factor)
        (
            "bt-cancellation",
            5,
            "\\frac{e^{\\beta \\log{\\left(Z \\right)} + {\\hat r}_{\\omega_{1}}} e^{\\beta",
            "e^{- \\beta",
        ),
        ("reward-equivalence", 2, "\\frac{e^{f + r_{1}} e^{f + r_{2}}}{", "e^{- f - r_{3}}"),
        # no "0 +" terms in the population loss of the support counterexample
        ("ipo-psi", 9, "{\\nu}_{1} {\\nu}_{2}", "0 +"),
        # log π* = log π_ref + r/β - log Z
        (
            "optimal-policy",
            2,
            "= \\log{\\left(p_{i} \\right)} + \\frac{r_{i}}{\\beta} - \\log{\\left(Z \\right)}",
            "= - \\log",
        ),
    ],
)
def test_displays_in_the_papers_order(name, k, wanted, unwanted):
    shown = proofs.get(name).steps[k - 1].latex()
    assert wanted in shown and unwanted not in shown, shown


def citation_problems(proof: proofs.Proof) -> list[str]:
    """Every result step must cite a known paper and its equation (a restatement of the hypotheses is no
    result and needs none)."""
    out = []
    for k, step in enumerate(proof.steps, 1):
        if isinstance(step.claim, Positive) and step.claim.restates:
            continue
        key = step.paper or proof.source
        if not step.eq:
            out.append(f"{proof.name} step {k}: no equation label")
        if key not in papers.PAPERS:
            out.append(f"{proof.name} step {k}: cites no known paper ({key!r})")
    return out


@pytest.mark.parametrize("name", list(proofs.MODULES))
def test_every_result_step_has_an_equation_and_a_paper(name):
    proof = proofs.get(name)
    assert citation_problems(proof) == []
    for step in proof.steps:
        if step.eq:
            unverified = papers.label_status(step.paper or proof.source, step.eq) == "unverified"
            assert papers.citation(proof, step).endswith(", " + step.eq + (papers.UNVERIFIED_MARK * unverified))


def test_a_step_without_a_citation_is_caught():
    proof = proofs.get("init-ln2")
    no_label = dataclasses.replace(proof.steps[0], eq=None)
    unknown = dataclasses.replace(proof.steps[1], paper="no-such-paper")
    broken = dataclasses.replace(proof, steps=[no_label, unknown, *proof.steps[2:]])
    assert citation_problems(broken) == [
        "init-ln2 step 1: no equation label",
        "init-ln2 step 2: cites no known paper ('no-such-paper')",
    ]
    no_source = dataclasses.replace(proof, source=None)
    assert len(citation_problems(no_source)) == len(proof.steps)


def label_problems(proof: proofs.Proof) -> list[str]:
    """A numbered label (Eq., Thm., Lemma, Prop., App., §) must be in papers.VERIFIED_LABELS, with the sources
    it was checked against, or in papers.UNVERIFIED_LABELS, with why it is not verified (issue 24)."""
    out = []
    for k, step in enumerate(proof.steps, 1):
        key = step.paper or proof.source
        if step.eq and papers.label_status(key, step.eq) == "unlisted":
            out.append(f"{proof.name} step {k}: {step.eq!r} of {key!r} is neither verified nor marked unverified")
    return out


@pytest.mark.parametrize("name", list(proofs.MODULES))
def test_every_numbered_label_is_verified_or_marked(name):
    assert label_problems(proofs.get(name)) == []


def test_an_unlisted_label_is_caught():
    """A guessed number (DPO 'Eq. 9' for the DPO loss) and a right number cited in the wrong paper are rejected;
    a loss's name and a listed number are not."""
    proof = proofs.get("dpo-loss")
    guessed = dataclasses.replace(proof.steps[0], eq="Eq. 9")
    elsewhere = dataclasses.replace(proof.steps[1], paper="simpo")  # SimPO's Eq. 2 is not in either table
    named = dataclasses.replace(proof.steps[2], eq="DPO loss")
    broken = dataclasses.replace(proof, steps=[guessed, elsewhere, named, *proof.steps[3:]])
    assert label_problems(broken) == [
        "dpo-loss step 1: 'Eq. 9' of 'dpo' is neither verified nor marked unverified",
        "dpo-loss step 2: 'Eq. 2' of 'simpo' is neither verified nor marked unverified",
    ]
    for label in ("Thm. 3", "Lemma 4", "Prop. 2", "App. B", "§6"):
        assert papers.label_status("dpo", label) == "unlisted", label


def test_the_label_tables_are_sound():
    """Each entry is a numbered label, in one table only, used by some step, with known sources (a stale or
    doubly listed entry would misreport what is verified)."""
    verified, unverified = set(papers.VERIFIED_LABELS), set(papers.UNVERIFIED_LABELS)
    assert not verified & unverified
    used = {(s.paper or p.source, s.eq) for p in proofs.all_proofs() for s in p.steps if s.eq}
    assert verified | unverified <= used
    for key, label in verified | unverified:
        assert key in papers.PAPERS and papers.NUMBERED.search(label), (key, label)
    for meaning, sources in papers.VERIFIED_LABELS.values():
        assert meaning and sources and set(sources) <= set(papers.SOURCES), sources
    assert all(meaning and why for meaning, why in papers.UNVERIFIED_LABELS.values())


def test_an_unverified_number_is_marked_in_the_citation():
    proof = proofs.get("exo-cdpo")  # EXO's Eq. 16 rests on TRL's comment alone
    assert papers.citation(proof, proof.steps[0]) == "Ji et al. 2024, Eq. 16" + papers.UNVERIFIED_MARK
    dpo = proofs.get("dpo-loss")
    assert papers.citation(dpo, dpo.steps[-1]) == "Rafailov et al. 2023, Eq. 7"
    for lang in ("en", "zh"):
        assert papers.UNVERIFIED_MARK in papers.citations_note(lang)


def test_the_lesson_cites_the_paper_with_each_step():
    text = (core_root() / "docs" / "lesson.md").read_text(encoding="utf-8")
    for proof in proofs.all_proofs():
        for step in proof.steps:
            if step.eq:
                assert f"{step.name('en')} ({papers.citation(proof, step)})." in text, (proof.name, step.name.en)


# Different sympy symbols shown alike on purpose: the same quantity under two names in two proofs.
ALIASES = {"\\hat r": {"rhat", "u"}}  # the implicit rewards (reward-reparam, bt-cancellation; plackett-luce's u_k)


def display_collisions() -> dict[str, set]:
    """Displayed symbols that stand for more than one sympy symbol across all proofs (an overloaded letter)."""
    seen: dict[str, set] = {}
    for proof in proofs.all_proofs():
        for step in proof.steps:
            for obj in _objects(step):
                atoms = obj.atoms(sp.Symbol) | {i.base.label for i in obj.atoms(sp.Indexed)}
                for a in atoms - obj.atoms(sp.Dummy):
                    seen.setdefault(core.tex(a), set()).add(a.name)
    return {shown: names for shown, names in seen.items() if len(names) > 1 and ALIASES.get(shown) != names}


def test_no_letter_is_displayed_with_two_meanings():
    assert display_collisions() == {}


def test_an_overloaded_letter_is_caught(monkeypatch):
    """DiscoPOP's temperature shown as τ again would be IPO's τ with another meaning."""
    monkeypatch.setitem(core.NAMES, "tau_discopop", ("\\tau", "τ"))
    assert display_collisions() == {"\\tau": {"tau", "tau_discopop"}}


# r is a reward: r(x, y), r_i, r(y_w) (Bradley–Terry) and the implicit reward \hat r_w. The policy/reference
# log-ratios a_w - b_w, a_l - b_l are ρ_w, ρ_l (issue 24): an r_w, r_l, r_{w} or r_{l} written anywhere else, in a
# LaTeX display, in prose or in a registry formula string, is a log-ratio under the reward's letter again.
LOG_RATIO_AS_R = re.compile(r"(?<![A-Za-z0-9_\\])(?<!\\hat )r_(?:\{[wl]\}|[wl])(?![A-Za-z0-9])")


def log_ratios_written_as_r(text: str) -> list[str]:
    """Each line of `text` that writes r_w, r_l, r_{w} or r_{l} (not \\hat r_w, not a word such as chosen_r_w)."""
    return [line for line in text.splitlines() if LOG_RATIO_AS_R.search(line)]


def _rendered_lesson(lang: str) -> str:
    """The lesson as `dpo-ref prove` renders it: the markdown, then the notebook's cells (every step as held)."""
    results = [_all_held(p) for p in proofs.all_proofs()]
    cells = json.loads(notebook.notebook(results, lang))["cells"]
    return render.markdown(results, lang) + "\n".join("".join(c["source"]) for c in cells)


def _all_held(proof: proofs.Proof) -> ProofResult:
    return ProofResult(proof, [StepResult(s, k, True, "", 0.0) for k, s in enumerate(proof.steps, 1)])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_no_log_ratio_is_written_with_the_reward_letter(lang):
    text = _rendered_lesson(lang)
    # the log-ratios are there as ρ (displays, prose, the table's registry strings), the rewards as r
    assert all(s in text for s in ("\\rho_{w}", "$`\\rho_w", "beta rho_w", "r(y_w)")), "nothing to check"
    assert log_ratios_written_as_r(text) == []
    assert log_ratios_written_as_r("\n".join(v.formula for v in variants.RECORDS)) == []
    for name in ("variants.md", "formulas.md", "proofs.md"):  # the pages that quote the registry or the displays
        assert log_ratios_written_as_r((core_root() / "docs" / name).read_text(encoding="utf-8")) == [], name


def test_a_log_ratio_written_with_the_reward_letter_is_caught(monkeypatch):
    """A display printed from Symbol("r_w"), the prose and the registry strings as they were before issue 24 are
    each flagged, and so is the rendered lesson with the old notation row; the rewards r(y_w), \\hat r_w and
    words containing r_w are not."""
    si = shift_invariance
    old = dict(zip((si.rho_w, si.rho_l), sp.symbols("r_w r_l", real=True)))
    shown = core.tex(si.APO_DOWN.subs(old))
    assert "r_{w}" in shown and log_ratios_written_as_r(shown) == [shown]
    for written in ("$h = r_w - r_l$", "`1 - sigma(beta r_w) + sigma(beta r_l)`", "sort(r_l)", "$r_{l} \\to -\\infty$"):
        assert log_ratios_written_as_r(written) == [written], written
    for fine in ("$\\hat r_w = \\beta (a_w - b_w)$", "$r(y_w) - r(y_l)$", "chosen_r_w", "user_lookup", "$\\rho_w$"):
        assert log_ratios_written_as_r(fine) == [], fine
    row = ("h = r_w - r_l", core.Text("the preference margin", "偏好间隔"))
    monkeypatch.setattr(render, "NOTATION", [*render.NOTATION, row])
    assert log_ratios_written_as_r(render.markdown([_all_held(proofs.get("init-ln2"))], "en")) == [
        "| $`h = r_w - r_l`$ | the preference margin |"
    ]


def test_the_notation_table_lists_each_symbol_once():
    symbols = [sym for sym, _ in papers.NOTATION]
    assert len(symbols) == len(set(symbols))


def core_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
