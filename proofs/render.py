"""Render proof results as terminal text or as a Markdown lesson (LaTeX math that GitHub renders)."""

from __future__ import annotations

import re

from .core import Proof, ProofResult, StepResult
from .papers import NOTATION, PAPERS, citation, citations_note

_INLINE_MATH = re.compile(r"\$([^$\n]+?)\$")


def _gh(text: str) -> str:
    """Inline math as $`...`$, GitHub's form that keeps Markdown (*, _) from touching the LaTeX."""
    return _INLINE_MATH.sub(lambda m: "$`" + m.group(1) + "`$", text)


LABELS = {
    "en": {
        "title": "Executable proofs: DPO, IPO, cDPO and the loss family, step by step",
        "banner": "dpo-ref prove: every step of each derivation is checked by sympy",
        "Justifies": "Justifies: ",
        "hypotheses": "Hypotheses: ",
        "none": "none",
        "steps_word": "steps",
        "uses": "uses ",
        "end": ".",
        "step": "Step",
        "conclusion": "Conclusion",
        "checked": "checked: ",
        "failed": "FAILED",
        "failed_md": "FAILED: ",
        "not_run": "not checked (an earlier step failed)",
        "contents": "Contents",
        "run_one": "run it alone: ",
        "summary_ok": "Every step holds: {n} {proofs}, {steps} steps checked in {secs:.1f} s.",
        "summary_bad": "{bad} of {n} proofs FAILED.",
        "failed_at": "proof '{proof}', step {index} '{step}' failed: {reason}",
        "how_to_read": (
            "Read Part 1, the core path, first: from the Bradley–Terry model to the DPO and IPO losses and their "
            "optima, with plots, then the table of every loss and a few exercises. Part 2 holds the rest: "
            "Theorem 1, rankings, the β limits, the RPO term and the wider loss family. A runnable version "
            "that re-checks every step, redraws the plots for your β and checks your exercise answers is "
            "`docs/lesson.ipynb` (`dpo-ref prove --format notebook`; the README says how to open it). "
            "Every displayed formula below is a claim that sympy checked when "
            "this file was generated with `dpo-ref prove --format markdown`: an identity is accepted only if "
            "the difference of its two sides, built independently, rewrites to exactly 0; an inequality only "
            "if sympy's assumption system proves it (after an identity that puts it in a manifest form); a "
            "limit by `sympy.limit`; a solution set by `sympy.solveset`; an optimum by strict convexity plus a "
            "vanishing derivative. No step uses "
            "a floating-point tolerance. Each proof names the `dpo_ref` code it justifies, and the "
            "proof-linked tests compare that code with the formulas derived here. Sums over the responses "
            "to a prompt are checked with a symbolic number of responses $n$ where sympy can (steps marked "
            "“any n”); otherwise they are written out for three responses with symbolic probabilities "
            "($n = 3$, or $K = 3$ for rankings), and steps about one generic response $i$ hold for all $n$."
        ),
        "regenerate": (
            "Regenerate with `dpo-ref prove --format markdown --output docs/lesson.md --figures docs/lesson` "
            "(the figures need the `plot` extra)."
        ),
        "core": "Part 1 · The core path",
        "core_intro": (
            "From the optimal policy of KL-regularised reward maximisation and the Bradley–Terry model to the "
            "DPO loss, its gradient, its start at ln 2, its failure on a certain preference, and the fixes with a "
            "finite optimum: IPO (with the ΨPO objective behind it) and cDPO: {n} proofs, {steps} checked steps. "
            "Each result in one line:"
        ),
        "further": "Part 2 · Going further: more theory and the loss family",
        "further_intro": (
            "Theorem 1 and the equivalence of rewards, rankings (Plackett–Luce), the β limits, the RPO term, "
            "and the other losses of `dpo_ref.family`: {n} proofs, {steps} checked steps."
        ),
        "losses": "The losses side by side",
        "losses_intro": (
            "One row per loss of the registry (`dpo_ref/variants.py`): its formula as the registry states it, "
            "its optimum as a checked claim of the proofs states it (the step is linked), and what it changes."
        ),
        "table_head": "| loss | formula | optimum | fixes or changes | derivation |",
        "no_optimum": "not stated",
        "step_ref": "step",
        "exercises": "Exercises",
        "exercises_intro": (
            "Run them in the notebook (`lesson` is set up there), or in Python from a checkout with "
            "`from proofs import lesson`. Each check runs the project's own checker or code: a wrong answer "
            "raises and says why, `None` prints “not answered yet”."
        ),
        "exercise": "Exercise",
        "solution": "Solution",
        "figure": "Figure",
        "source": "Source: ",
        "notation": "Notation",
        "symbol": "Symbol",
        "meaning": "Meaning",
    },
    "zh": {
        "title": "可执行的证明：一步一步推导 DPO、IPO、cDPO 与损失函数族",
        "banner": "dpo-ref prove：每个推导的每一步都由 sympy 检验",
        "Justifies": "对应代码：",
        "hypotheses": "假设：",
        "none": "无",
        "steps_word": "步骤",
        "uses": "用到 ",
        "end": "。",
        "step": "步骤",
        "conclusion": "结论",
        "checked": "检验方式：",
        "failed": "失败",
        "failed_md": "失败：",
        "not_run": "未检验（前面的步骤已失败）",
        "contents": "目录",
        "run_one": "单独运行：",
        "summary_ok": "全部 {n} 个证明成立（共检验 {steps} 步），用时 {secs:.1f} 秒。",
        "summary_bad": "{n} 个证明中有 {bad} 个失败。",
        "failed_at": "证明 '{proof}' 的第 {index} 步 '{step}' 不成立：{reason}",
        "how_to_read": (
            "请先读第 1 部分，即核心路径：从布拉德利-特里模型到 DPO 与 IPO 损失及其最优点，配有图，然后是所有损失的"
            "一览表和几道练习。第 2 部分是其余内容：定理 1、排序、β 的极限、RPO 项以及更广的损失函数族。"
            "可运行的版本会重新检验每一步、按你的 β 重画图并检验你的练习答案：`docs/lesson.zh.ipynb`"
            "（`dpo-ref prove --format notebook --lang zh`；README 说明了如何打开）。"
            "下面每一个展示出来的公式都是一个命题，在用 `dpo-ref prove --format markdown --lang zh` "
            "生成本文件时由 sympy 检验过：恒等式只有当两边独立构造、其差恰好化简为 0 时才被接受；"
            "不等式必须由 sympy 的假设系统证明（必要时先用一个恒等式化成显然的形式）；极限由 `sympy.limit` 计算；"
            "解集由 `sympy.solveset` 求出；最优点由严格凸性加导数为零来确定。没有任何一步使用浮点容差。每个证明都注明了"
            "它所支撑的 `dpo_ref` 代码，"
            "与证明关联的测试会把这些代码和这里推导出的公式相比较。对同一提示下各回答的求和，凡 sympy 能处理的，"
            "都在回答数 $n$ 为符号变量时检验（标有“任意 n”的步骤）；否则对三个回答、以符号概率完整展开检验"
            "（$n = 3$，排序则为 $K = 3$）；只涉及任意一个回答 $i$ 的步骤对所有 $n$ 都成立。"
        ),
        "regenerate": (
            "重新生成：`dpo-ref prove --format markdown --lang zh --output docs/lesson.zh.md --figures docs/lesson`"
            "（图需要 `plot` 额外依赖）。"
        ),
        "core": "第 1 部分 · 核心路径",
        "core_intro": (
            "从 KL 正则化奖励最大化的最优策略和布拉德利-特里模型出发，到 DPO 损失、它的梯度、它在 ln 2 处的起点、"
            "它在确定性偏好上的失效，以及具有有限最优点的修正：IPO（及其背后的 ΨPO 目标）和 cDPO：共 {n} 个证明、"
            "{steps} 个检验过的步骤。"
            "每个结果一行："
        ),
        "further": "第 2 部分 · 进一步：更多理论与损失函数族",
        "further_intro": (
            "定理 1 与奖励的等价性、排序（普拉克特-卢斯）、β 的极限、RPO 项，以及 `dpo_ref.family` "
            "中的其他损失：共 {n} 个证明、{steps} 个检验过的步骤。"
        ),
        "losses": "各损失一览",
        "losses_intro": (
            "注册表（`dpo_ref/variants.py`）中每个损失一行：注册表给出的公式，证明中检验过的命题给出的最优点"
            "（附步骤链接），以及它改变了什么。"
        ),
        "table_head": "| 损失 | 公式 | 最优点 | 修正或改变 | 推导 |",
        "no_optimum": "未给出",
        "step_ref": "步骤",
        "exercises": "练习",
        "exercises_intro": (
            "在笔记本中运行（其中已准备好 `lesson`），或在源码目录中用 `from proofs import lesson` 在 Python 中运行。"
            "每个检验都运行本项目自己的检验器或代码：答错会报错并说明原因，`None` 会输出“not answered yet”。"
        ),
        "exercise": "练习",
        "solution": "答案",
        "figure": "图",
        "source": "出处：",
        "notation": "记号",
        "symbol": "符号",
        "meaning": "含义",
    },
}


def _failure_line(result: ProofResult, lang: str) -> str:
    bad = result.failed
    assert bad is not None
    return LABELS[lang]["failed_at"].format(
        proof=result.proof.name, index=bad.index, step=bad.step.name(lang), reason=bad.detail
    )


def failure_lines(results: list[ProofResult], lang: str = "en") -> list[str]:
    return [_failure_line(r, lang) for r in results if not r.ok]


def _hyp_items(proof: Proof, lang: str, latex: bool) -> list[str]:
    L = LABELS[lang]
    out = []
    for hp, steps in proof.hypotheses():
        shown = f"$`{hp.tex()}`$" if latex else str(hp)
        out.append(shown + (f" ({L['steps_word']} {', '.join(map(str, steps))})" if steps else ""))
    return out


def hypotheses_line(proof: Proof, lang: str = "en", latex: bool = False) -> str:
    """The proof's hypotheses, collected from its symbols' assumptions and declared ranges."""
    L = LABELS[lang]
    return L["hypotheses"] + ("; ".join(_hyp_items(proof, lang, latex)) or L["none"])


def uses_text(step_result: StepResult, lang: str = "en", latex: bool = False) -> str:
    used = step_result.step.hypotheses_used() if step_result.ok else ()
    if not used:
        return ""
    return LABELS[lang]["uses"] + ", ".join(f"$`{hp.tex()}`$" if latex else str(hp) for hp in used)


def text_header(lang: str = "en") -> str:
    return LABELS[lang]["banner"] + "\n"


def text_proof(result: ProofResult, position: int, total: int, lang: str = "en", verbose: bool = False) -> str:
    """One proof as terminal text: a check mark per step with its name and LaTeX statement."""
    L = LABELS[lang]
    proof = result.proof
    lines = [f"[{position}/{total}] {proof.name}: {proof.title(lang)}"]
    lines.append(f"    {L['Justifies']}{', '.join(proof.justifies)}")
    lines.append(f"    {hypotheses_line(proof, lang)}")
    done = {s.index: s for s in result.steps}
    for index, step in enumerate(proof.steps, 1):
        res: StepResult | None = done.get(index)
        mark = "·" if res is None else ("✓" if res.ok else "✗")
        cite = f" ({c})" if (c := citation(proof, step)) else ""
        lines.append(f"  {mark} {index}. {step.name(lang)}{cite}")
        lines += ["       " + line for line in step.unicode().split("\n")]
        if res is None:
            lines.append(f"       ({L['not_run']})")
        elif not res.ok:
            lines.append(f"       {L['failed_md']}{res.detail}")
        elif verbose:
            lines.append(f"       [{res.detail}; {res.seconds:.2f} s]")
        elif res.step.hypotheses_used():
            lines.append(f"       ({uses_text(res, lang)})")
    return "\n".join(lines) + "\n"


def text_summary(results: list[ProofResult], seconds: float, lang: str = "en") -> str:
    L = LABELS[lang]
    bad = [r for r in results if not r.ok]
    if not bad:
        steps = sum(len(r.steps) for r in results)
        word = "proof" if len(results) == 1 else "proofs"
        return L["summary_ok"].format(n=len(results), proofs=word, steps=steps, secs=seconds) + "\n"
    lines = [L["summary_bad"].format(bad=len(bad), n=len(results))]
    lines += ["  " + line for line in failure_lines(results, lang)]
    return "\n".join(lines) + "\n"


def _step_counts(results: list[ProofResult]) -> int:
    return sum(len(r.proof.steps) for r in results)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _proof_section(r: ProofResult, i: int, lang: str) -> list[str]:
    L = LABELS[lang]
    proof = r.proof
    out = [f'<a id="{proof.name}"></a>', "", f"### {i}. {proof.title(lang)}", "", _gh(proof.intro(lang)), ""]
    code = ", ".join(f"`{name}`" for name in proof.justifies)
    out += [f"*{L['Justifies'].strip()}* {code} · *{L['run_one'].strip()}* `dpo-ref prove --only {proof.name}`", ""]
    if proof.source is not None:
        out += [f"*{L['source'].strip()}* {PAPERS[proof.source]}", ""]
    out += [f"*{hypotheses_line(proof, lang, latex=True)}*", ""]
    done = {s.index: s for s in r.steps}
    for index, step in enumerate(proof.steps, 1):
        res = done.get(index)
        cite = f" ({c})" if (c := citation(proof, step)) else ""
        out += [f"**{L['step']} {i}.{index} · {step.name(lang)}{cite}{L['end']}** {_gh(step.explain(lang))}", ""]
        out += ["```math", step.statement, "```", ""]
        if res is None:
            out += [f"<sub>· {L['not_run']}</sub>", ""]
        elif res.ok:
            uses = uses_text(res, lang, latex=True)
            uses = f" · {uses}" if uses else ""
            out += [f"<sub>✓ {L['checked']}{step.claim.method(lang, latex=True)}{uses}</sub>", ""]
        else:
            out += [f"<sub>✗ {L['failed_md']}{res.detail}</sub>", ""]
    if proof.conclusion is not None:
        out += [f"**{L['conclusion']}{L['end']}** {_gh(proof.conclusion(lang))}", ""]
    return out


def _figure(name: str, lang: str) -> list[str]:
    from . import lesson

    return [
        f"![{name}]({lesson.figure_path(name)})",
        "",
        f"*{LABELS[lang]['figure']}: {_gh(lesson.caption(name, lang))}*",
        "",
    ]


def losses_table(numbers: dict[str, int], lang: str = "en") -> list[str]:
    """The table of the losses (lesson.summary_rows), linking each optimum to the step that states it;
    `numbers` maps each rendered proof to its number in the lesson."""
    from . import lesson

    L = LABELS[lang]
    out = [L["table_head"], "|---|---|---|---|---|"]
    for row in lesson.summary_rows(lang, available=list(numbers)):
        if row.optimum is not None:
            o = row.optimum
            shown = [f"$`{t}`$ ([{L['step_ref']} {numbers[o.proof]}.{k}](#{o.proof}))" for t, k in o.parts]
            optimum = "; ".join(shown)
        else:
            optimum = L["no_optimum"]
        proofs = [p for p in row.why.split(", ") if p in numbers]
        why = ", ".join(f"[{p}](#{p})" for p in proofs) if proofs else row.why
        cells = [f"`{row.variant}`", f"`{row.formula}`", optimum, row.fixes, why]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out + [""]


def _exercises(lang: str) -> list[str]:
    from . import lesson

    L = LABELS[lang]
    out = ['<a id="exercises"></a>', "", f"## {L['exercises']}", "", L["exercises_intro"], ""]
    for k, ex in enumerate(lesson.EXERCISES, 1):
        out += [f"### {L['exercise']} {k} · {ex.title(lang)}", "", _gh(ex.prompt(lang)), ""]
        out += ["```python", ex.starter, "```", ""]
        out += [
            f"<details><summary>{L['solution']}</summary>",
            "",
            "```python",
            ex.solution,
            "```",
            "",
            "</details>",
            "",
        ]
    return out


def markdown(results: list[ProofResult], lang: str = "en") -> str:
    """The proofs as a Markdown lesson: the core path (with its plots), the table of the losses, the exercises,
    then the rest. Deterministic (no timings), so a committed copy stays stable."""
    from . import lesson

    L = LABELS[lang]
    by_name = {r.proof.name: r for r in results}
    core_names, rest_names = lesson.lesson_order(list(by_name))
    core, rest = [by_name[n] for n in core_names], [by_name[n] for n in rest_names]
    numbers = {r.proof.name: i for i, r in enumerate(core + rest, 1)}
    out = [f"# {L['title']}", "", _gh(L["how_to_read"]), "", f"## {L['contents']}", ""]
    if core:
        out.append(f"**[{L['core']}](#core-path)**")
        out.append("")
        out += [f"{numbers[r.proof.name]}. [{r.proof.title(lang)}](#{r.proof.name}) (`{r.proof.name}`)" for r in core]
        out.append("")
    out += [f"**[{L['losses']}](#losses)** · **[{L['exercises']}](#exercises)** · **[{L['notation']}](#notation)**", ""]
    if rest:
        out += [f"**[{L['further']}](#further)**", ""]
        out += [f"{numbers[r.proof.name]}. [{r.proof.title(lang)}](#{r.proof.name}) (`{r.proof.name}`)" for r in rest]
        out.append("")
    out += ['<a id="notation"></a>', "", f"## {L['notation']}", ""]
    out += [f"| {L['symbol']} | {L['meaning']} |", "| --- | --- |"]
    out += [f"| $`{sym}`$ | {_gh(meaning(lang))} |" for sym, meaning in NOTATION]
    out += ["", citations_note(lang), ""]
    placed = set()
    if core:
        out += ['<a id="core-path"></a>', "", f"## {L['core']}", ""]
        out += [L["core_intro"].format(n=len(core), steps=_step_counts(core)), ""]
        for r in core:
            line = f" {_gh(r.proof.conclusion(lang))}" if r.proof.conclusion is not None else ""
            out.append(f"{numbers[r.proof.name]}. **[{r.proof.title(lang)}](#{r.proof.name}).**{line}")
        out.append("")
        for r in core:
            out += _proof_section(r, numbers[r.proof.name], lang)
            for fig in lesson.figures_after(r.proof.name):
                out += _figure(fig, lang)
                placed.add(fig)
    out += ['<a id="losses"></a>', "", f"## {L['losses']}", "", L["losses_intro"], ""]
    out += losses_table(numbers, lang)
    for fig in lesson.FIGURES:  # a figure whose proof is in Part 2 or not rendered: after the table
        if fig not in placed and lesson.FIGURES[fig] not in rest_names:
            out += _figure(fig, lang)
            placed.add(fig)
    out += _exercises(lang)
    if rest:
        out += ['<a id="further"></a>', "", f"## {L['further']}", ""]
        out += [L["further_intro"].format(n=len(rest), steps=_step_counts(rest)), ""]
        for r in rest:
            out += _proof_section(r, numbers[r.proof.name], lang)
            for fig in lesson.figures_after(r.proof.name):
                out += _figure(fig, lang)
    out += ["---", "", f"<sub>{L['regenerate']}</sub>", ""]
    return "\n".join(out)
