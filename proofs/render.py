"""Render proof results as terminal text or as a Markdown lesson (LaTeX math that GitHub renders)."""

from __future__ import annotations

import re

from .core import Proof, ProofResult, StepResult
from .papers import NOTATION, PAPERS

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
            "This lesson derives DPO from the KL-regularised RL objective and shows why the reparameterisation "
            "loses nothing (Theorem 1), then the loss, its ranking (Plackett–Luce) form, its gradient and "
            "behaviour, the RPO term the trainer adds, DPO's failure on deterministic preferences, and the "
            "fixes: IPO (with the ΨPO objective behind it) and conservative DPO; then the wider loss family: the "
            "optimum EXO shares with cDPO, IPO under label flips, robust DPO's unbiasedness and missing minimiser, "
            "the hinge's zero region, hard SPPO's targets, which losses are invariant under adding f(x), and the "
            "bounds of NCA and APO. A runnable version that "
            "re-checks every step is `docs/lesson.ipynb` (`dpo-ref prove --format notebook`). "
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
        "regenerate": "Regenerate with `dpo-ref prove --format markdown --output docs/lesson.md`.",
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
            "本讲义从 KL 正则化的强化学习目标出发推导 DPO，并说明重参数化没有损失（定理 1）；然后是损失、"
            "它的排序（普拉克特-卢斯）形式、梯度与性质、训练器附加的 RPO 项、DPO 在确定性偏好下的失效，"
            "以及两种修正：IPO（及其背后的 ΨPO 目标）和保守 DPO；最后是更广的损失函数族：EXO 与 cDPO 共有的最优点、"
            "标签翻转噪声下的 IPO、稳健 DPO 的无偏性及其没有有限最小值点、铰链损失的零区域、硬 SPPO 的目标值、"
            "哪些损失在加上 f(x) 后不变，以及 NCA 与 APO 的界。可运行并逐步重新检验的版本是 "
            "`docs/lesson.ipynb`（`dpo-ref prove --format notebook`）。"
            "下面每一个展示出来的公式都是一个命题，在用 `dpo-ref prove --format markdown --lang zh` "
            "生成本文件时由 sympy 检验过：恒等式只有当两边独立构造、其差恰好化简为 0 时才被接受；"
            "不等式必须由 sympy 的假设系统证明（必要时先用一个恒等式化成显然的形式）；极限由 `sympy.limit` 计算；"
            "解集由 `sympy.solveset` 求出；最优点由严格凸性加导数为零来确定。没有任何一步使用浮点容差。每个证明都注明了"
            "它所支撑的 `dpo_ref` 代码，"
            "与证明关联的测试会把这些代码和这里推导出的公式相比较。对同一提示下各回答的求和，凡 sympy 能处理的，"
            "都在回答数 $n$ 为符号变量时检验（标有“任意 n”的步骤）；否则对三个回答、以符号概率完整展开检验"
            "（$n = 3$，排序则为 $K = 3$）；只涉及任意一个回答 $i$ 的步骤对所有 $n$ 都成立。"
        ),
        "regenerate": "重新生成：`dpo-ref prove --format markdown --lang zh --output docs/lesson.zh.md`。",
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
        lines.append(f"  {mark} {index}. {step.name(lang)}")
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


def markdown(results: list[ProofResult], lang: str = "en") -> str:
    """The proofs as a Markdown lesson. Deterministic (no timings), so a committed copy stays stable."""
    L = LABELS[lang]
    out = [f"# {L['title']}", "", _gh(L["how_to_read"]), "", f"## {L['notation']}", ""]
    out += [f"| {L['symbol']} | {L['meaning']} |", "| --- | --- |"]
    out += [f"| $`{sym}`$ | {_gh(meaning(lang))} |" for sym, meaning in NOTATION]
    out += ["", f"## {L['contents']}", ""]
    for i, r in enumerate(results, 1):
        out.append(f"{i}. [{r.proof.title(lang)}](#{r.proof.name}) (`{r.proof.name}`)")
    out.append("")
    for i, r in enumerate(results, 1):
        proof = r.proof
        out += [f'<a id="{proof.name}"></a>', "", f"## {i}. {proof.title(lang)}", "", _gh(proof.intro(lang)), ""]
        code = ", ".join(f"`{name}`" for name in proof.justifies)
        out += [f"*{L['Justifies'].strip()}* {code} · *{L['run_one'].strip()}* `dpo-ref prove --only {proof.name}`", ""]
        if proof.source is not None:
            out += [f"*{L['source'].strip()}* {PAPERS[proof.source]}", ""]
        out += [f"*{hypotheses_line(proof, lang, latex=True)}*", ""]
        done = {s.index: s for s in r.steps}
        for index, step in enumerate(proof.steps, 1):
            res = done.get(index)
            cite = f" ({step.eq})" if step.eq else ""
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
    out += ["---", "", f"<sub>{L['regenerate']}</sub>", ""]
    return "\n".join(out)
