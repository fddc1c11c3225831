"""`dpo-ref prove --format notebook`: the lesson as a Jupyter notebook that re-checks itself when run.

The layout of the Markdown lesson (proofs/render.py, proofs/lesson.py): Part 1, the core path, with its
plots; the table of the losses; the exercises; Part 2. Per step: a Markdown cell with the step's name,
explanation and rendered formula, then a code cell `lesson.recheck(name, index)` that decides that step with
sympy again in the reader's kernel (after `lesson.edit(name, index, ...)`, the edited step). Per derivation:
a closing code cell `lesson.compare(name)` that evaluates the derived result against dpo_ref's code
(`proofs.numeric`). Per plot: the committed image, then a cell that redraws it (change β there). Per
exercise: a starter cell and a solution cell, each running the exercise's check. The file is deterministic
(fixed cell ids, no outputs), so a committed copy stays in sync with the command, like the Markdown lessons.
"""

from __future__ import annotations

import json

from .core import ProofResult
from .lesson import compare, recheck
from .papers import PAPERS, citation, citations_note

__all__ = ["compare", "notebook", "recheck"]

SETUP = """\
import importlib
import sys
from pathlib import Path

# Opened from a checkout (docs/ next to proofs/): use that checkout's proofs/; else the installed dpo_ref.proofs.
root = next((d for d in (Path.cwd(), Path.cwd().parent) if (d / "proofs" / "core.py").is_file()), None)
if root is not None:
    sys.path.insert(0, str(root))
proofs = importlib.import_module("proofs" if root is not None else "dpo_ref.proofs")
lesson = importlib.import_module(proofs.__name__ + ".lesson")  # recheck, edit, compare, plots, exercises"""

NB_LABELS = {
    "en": {
        "how": (
            "Run this notebook top to bottom (*Restart & Run All*). Each step's formula is rendered from the "
            "claim that sympy checks, and the code cell under it checks that claim again, now, in your kernel: "
            "it prints how the step was decided, or raises naming the step. The last cell of each derivation "
            "evaluates the derived result to 50 significant digits and compares it with `dpo_ref`'s code in "
            "float64, within the tolerance derived in `proofs/numeric.py`. Sums over "
            "the responses to a prompt are checked for a symbolic number $n$ of responses where sympy can "
            "(steps marked “any n”), otherwise written out for $n = 3$ (the step says so).\n\n"
            'To experiment: `lesson.edit("ipo", 2, x0=1/tau)` changes a step\'s claim, '
            '`lesson.recheck("ipo", 2)` re-checks it (raising, naming the step, if it no longer holds), '
            '`lesson.why_not("ipo", 2)` prints the reason without raising, and `lesson.restore()` undoes every '
            "edit. The plot cells take β and τ as arguments: change them and run the cell again. The exercises "
            "check your answers with the same checker."
        ),
        "regenerate": "Regenerate with `dpo-ref prove --format notebook --output docs/lesson.ipynb`.",
        "setup": "Set-up: import the proofs (this checkout's, if the notebook is opened from one).",
        "compare": "Compare with the code",
        "compare_text": (
            "The derived result, evaluated to 50 significant digits, against `dpo_ref`'s float64 code at a few points."
        ),
        "redraw": "Above, the committed image; the cell below redraws it (change the arguments and run it again):",
    },
    "zh": {
        "how": (
            "请从头到尾运行本笔记本（*Restart & Run All*）。每一步的公式都由 sympy 所检验的命题渲染而来，"
            "其下方的代码单元会在你的内核中立即再次检验该命题：输出该步是如何判定的，若不成立则报错并指出是哪一步。"
            "每个推导的最后一个单元以 50 位有效数字计算推导结果，并在 `proofs/numeric.py` 推出的容差内与 `dpo_ref` 的 "
            "float64 代码相比较。"
            "对同一提示下各回答的求和，凡 sympy 能处理的都在回答数 $n$ 为符号变量时检验（标有“任意 n”），"
            "否则对 $n = 3$ 完整展开检验（步骤中会注明）。\n\n"
            '动手试试：`lesson.edit("ipo", 2, x0=1/tau)` 修改某一步的命题，`lesson.recheck("ipo", 2)` 重新检验它'
            '（若不再成立则报错并指出是哪一步），`lesson.why_not("ipo", 2)` 只输出原因而不报错，'
            "`lesson.restore()` 撤销所有修改。画图单元以 β 和 τ 为参数：改变它们并重新运行该单元。"
            "练习用同一个检验器检验你的答案。"
        ),
        "regenerate": "重新生成：`dpo-ref prove --format notebook --lang zh --output docs/lesson.zh.ipynb`。",
        "setup": "准备：导入证明（若从源码目录打开本笔记本，则使用该目录中的证明）。",
        "compare": "与代码比较",
        "compare_text": "以 50 位有效数字计算推导出的结果，在几个点上与 `dpo_ref` 的 float64 代码相比较。",
        "redraw": "上图是提交的图片；下面的单元重新画它（改变参数再运行）：",
    },
}


def _source(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def _markdown(cell_id: str, text: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": _source(text)}


def _code(cell_id: str, text: str) -> dict:
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": cell_id,
        "metadata": {},
        "outputs": [],
        "source": _source(text),
    }


def _proof_cells(r: ProofResult, i: int, lang: str) -> list[dict]:
    from .render import LABELS

    L, N = LABELS[lang], NB_LABELS[lang]
    proof = r.proof
    code = ", ".join(f"`{name}`" for name in proof.justifies)
    head = f"### {i}. {proof.title(lang)}\n\n{proof.intro(lang)}\n\n*{L['Justifies'].strip()}* {code}"
    if proof.source is not None:
        head += f"\n\n*{L['source'].strip()}* {PAPERS[proof.source]}"
    cells = [_markdown(f"{proof.name}", head)]
    for k, step in enumerate(proof.steps, 1):
        cite = f" ({c})" if (c := citation(proof, step)) else ""
        name = f"{step.name(lang)}{cite}{L['end']}"
        text = f"**{L['step']} {i}.{k} · {name}** {step.explain(lang)}\n\n$$\n{step.latex()}\n$$"
        cells.append(_markdown(f"{proof.name}-{k}-md", text))
        cells.append(_code(f"{proof.name}-{k}", f'lesson.recheck("{proof.name}", {k})'))
    if proof.conclusion is not None:
        cells.append(_markdown(f"{proof.name}-end", f"**{L['conclusion']}{L['end']}** {proof.conclusion(lang)}"))
    cells.append(_markdown(f"{proof.name}-compare-md", f"#### {N['compare']}\n\n{N['compare_text']}"))
    cells.append(_code(f"{proof.name}-compare", f'lesson.compare("{proof.name}");'))
    return cells


def _figure_cells(name: str, lang: str) -> list[dict]:
    from . import lesson
    from .render import LABELS

    text = f"![{name}]({lesson.figure_path(name)})\n\n*{LABELS[lang]['figure']}: {lesson.caption(name, lang)}*"
    text += f"\n\n{NB_LABELS[lang]['redraw']}"
    return [_markdown(f"figure-{name}-md", text), _code(f"figure-{name}", lesson.figure_cell(name))]


def notebook(results: list[ProofResult], lang: str = "en") -> str:
    """The proofs as an nbformat 4.5 notebook (JSON text), in the lesson's layout."""
    from . import lesson
    from .render import LABELS, _step_counts, losses_table

    L, N = LABELS[lang], NB_LABELS[lang]
    by_name = {r.proof.name: r for r in results}
    core_names, rest_names = lesson.lesson_order(list(by_name))
    core, rest = [by_name[n] for n in core_names], [by_name[n] for n in rest_names]
    numbers = {r.proof.name: i for i, r in enumerate(core + rest, 1)}
    cells = [
        _markdown("title", f"# {L['title']}\n\n{N['how']}\n\n{citations_note(lang)}"),
        _markdown("setup-md", N["setup"]),
        _code("setup", SETUP),
    ]
    placed = set()
    if core:
        glance = [
            f"{numbers[r.proof.name]}. **{r.proof.title(lang)}.** {r.proof.conclusion(lang) or ''}".rstrip()
            for r in core
        ]
        intro = L["core_intro"].format(n=len(core), steps=_step_counts(core))
        cells.append(_markdown("core-path", f"## {L['core']}\n\n{intro}\n\n" + "\n".join(glance)))
        for r in core:
            cells += _proof_cells(r, numbers[r.proof.name], lang)
            for fig in lesson.figures_after(r.proof.name):
                cells += _figure_cells(fig, lang)
                placed.add(fig)
    table = "\n".join(losses_table(numbers, lang)).replace("$`", "$").replace("`$", "$")
    cells.append(_markdown("losses", f"## {L['losses']}\n\n{L['losses_intro']}\n\n{table}"))
    for fig in lesson.FIGURES:
        if fig not in placed and lesson.FIGURES[fig] not in rest_names:
            cells += _figure_cells(fig, lang)
    cells.append(_markdown("exercises", f"## {L['exercises']}\n\n{L['exercises_intro']}"))
    for k, ex in enumerate(lesson.EXERCISES, 1):
        cells.append(
            _markdown(f"exercise-{ex.name}-md", f"### {L['exercise']} {k} · {ex.title(lang)}\n\n{ex.prompt(lang)}")
        )
        cells.append(_code(f"exercise-{ex.name}", ex.starter))
        cells.append(_markdown(f"exercise-{ex.name}-solution-md", f"#### {L['solution']}"))
        cells.append(_code(f"exercise-{ex.name}-solution", ex.solution))
    if rest:
        intro = L["further_intro"].format(n=len(rest), steps=_step_counts(rest))
        cells.append(_markdown("further", f"## {L['further']}\n\n{intro}"))
        for r in rest:
            cells += _proof_cells(r, numbers[r.proof.name], lang)
            for fig in lesson.figures_after(r.proof.name):
                cells += _figure_cells(fig, lang)
    cells.append(_markdown("regenerate", f"---\n\n<sub>{N['regenerate']}</sub>"))
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
