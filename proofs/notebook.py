"""`dpo-ref prove --format notebook`: the lesson as a Jupyter notebook that re-checks itself when run.

Per step: a Markdown cell with the step's name, explanation and rendered formula, then a code cell
`lesson.recheck(name, index)` that decides that step with sympy again in the reader's kernel. Per
derivation: a closing code cell `lesson.compare(name)` that evaluates the derived result against dpo_ref's
code (`proofs.numeric`). The file is deterministic (fixed cell ids, no outputs), so a committed copy stays
in sync with the command, like the Markdown lessons.
"""

from __future__ import annotations

import json
import time

from .core import ProofResult, StepFailed, check_step
from .numeric import report as compare

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
lesson = importlib.import_module(proofs.__name__ + ".notebook")"""

NB_LABELS = {
    "en": {
        "how": (
            "Run this notebook top to bottom (*Restart & Run All*). Each step's formula is rendered from the "
            "claim that sympy checks, and the code cell under it checks that claim again, now, in your kernel: "
            "it prints how the step was decided, or raises naming the step. The last cell of each derivation "
            "evaluates the derived result to 50 significant digits and compares it with `dpo_ref`'s code in "
            "float64, within the tolerance derived in `proofs/numeric.py`. Sums over "
            "the responses to a prompt are checked for a symbolic number $n$ of responses where sympy can "
            "(steps marked “any n”), otherwise written out for $n = 3$ (the step says so)."
        ),
        "regenerate": "Regenerate with `dpo-ref prove --format notebook --output docs/lesson.ipynb`.",
        "setup": "Set-up: import the proofs (this checkout's, if the notebook is opened from one).",
        "compare": "Compare with the code",
        "compare_text": (
            "The derived result, evaluated to 50 significant digits, against `dpo_ref`'s float64 code at a few points."
        ),
    },
    "zh": {
        "how": (
            "请从头到尾运行本笔记本（*Restart & Run All*）。每一步的公式都由 sympy 所检验的命题渲染而来，"
            "其下方的代码单元会在你的内核中立即再次检验该命题：输出该步是如何判定的，若不成立则报错并指出是哪一步。"
            "每个推导的最后一个单元以 50 位有效数字计算推导结果，并在 `proofs/numeric.py` 推出的容差内与 `dpo_ref` 的 "
            "float64 代码相比较。"
            "对同一提示下各回答的求和，凡 sympy 能处理的都在回答数 $n$ 为符号变量时检验（标有“任意 n”），"
            "否则对 $n = 3$ 完整展开检验（步骤中会注明）。"
        ),
        "regenerate": "重新生成：`dpo-ref prove --format notebook --lang zh --output docs/lesson.zh.ipynb`。",
        "setup": "准备：导入证明（若从源码目录打开本笔记本，则使用该目录中的证明）。",
        "compare": "与代码比较",
        "compare_text": "以 50 位有效数字计算推导出的结果，在几个点上与 `dpo_ref` 的 float64 代码相比较。",
    },
}


def recheck(name: str, index: int) -> str:
    """Decide step `index` (1-based) of proof `name` with sympy; print how, or raise StepFailed naming it."""
    from . import get

    step = get(name).steps[index - 1]
    start = time.perf_counter()
    try:
        detail = check_step(step)
    except Exception as err:  # ClaimError: the step does not hold
        raise StepFailed(name, index, step.name.en, str(err)) from None
    print(f"✓ {name}, step {index}: {detail} ({time.perf_counter() - start:.2f} s)")
    return detail


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


def notebook(results: list[ProofResult], lang: str = "en") -> str:
    """The proofs as an nbformat 4.5 notebook (JSON text)."""
    from .render import LABELS

    L, N = LABELS[lang], NB_LABELS[lang]
    cells = [
        _markdown("title", f"# {L['title']}\n\n{N['how']}"),
        _markdown("setup-md", N["setup"]),
        _code("setup", SETUP),
    ]
    for i, r in enumerate(results, 1):
        proof = r.proof
        code = ", ".join(f"`{name}`" for name in proof.justifies)
        head = f"## {i}. {proof.title(lang)}\n\n{proof.intro(lang)}\n\n*{L['Justifies'].strip()}* {code}"
        cells.append(_markdown(f"{proof.name}", head))
        for k, step in enumerate(proof.steps, 1):
            text = (
                f"**{L['step']} {i}.{k} · {step.name(lang)}{L['end']}** {step.explain(lang)}\n\n$$\n{step.latex()}\n$$"
            )
            cells.append(_markdown(f"{proof.name}-{k}-md", text))
            cells.append(_code(f"{proof.name}-{k}", f'lesson.recheck("{proof.name}", {k})'))
        if proof.conclusion is not None:
            cells.append(_markdown(f"{proof.name}-end", f"**{L['conclusion']}{L['end']}** {proof.conclusion(lang)}"))
        cells.append(_markdown(f"{proof.name}-compare-md", f"### {N['compare']}\n\n{N['compare_text']}"))
        cells.append(_code(f"{proof.name}-compare", f'lesson.compare("{proof.name}");'))
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
