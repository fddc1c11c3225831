"""The lesson around the proofs: its core path, the table of the losses, the plots, the exercises, and the
functions the notebook's cells call (`lesson.recheck("ipo", 2)`, `lesson.edit`, `lesson.plot_losses(beta=...)`).

Layout is data, so a new proof or loss slots in without touching the renderers:

    CORE_PATH   the proofs of the core path, in reading order (Bradley–Terry to the DPO and IPO losses and
                their optima); every other proof of `proofs.MODULES` follows in Part 2, in MODULES order
    FIGURES     which plot follows which proof (a plot whose proof is not rendered goes after the table)
    FIXES       per registry variant, one line on what it changes or fixes; the rest of each row of the table
                (formula, paper, optimum) is read from `dpo_ref.variants` and from the proofs' checked claims
    EXERCISES   each with a starter cell, a solution cell and a check that runs the project's own checker

The plots read the one loss registry (`dpo_ref.variants`: each loss's own function, evaluated in float64 with
its autograd gradient), the proofs' own sympy expressions (the optimal policy), and the overfit experiment's
results file (docs/results/overfit.json, its per-epoch trajectory); nothing is re-typed here. matplotlib (the
`plot` extra) and torch are imported only when a plot is drawn: `import dpo_ref` never imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from .core import (
    BOUNDED,
    ClaimError,
    Equal,
    GlobalMinimum,
    Limit,
    Proof,
    StepFailed,
    SystemSolution,
    Text,
    check_step,
    tex,
)
from .numeric import report as compare

__all__ = [
    "CORE_PATH",
    "EXERCISES",
    "FIGURES",
    "check",
    "compare",
    "edit",
    "plot_losses",
    "plot_optimal_policy",
    "plot_overfit",
    "recheck",
    "restore",
    "symbols",
    "why_not",
    "write_figures",
]

# ---- the layout: data -----------------------------------------------------------------------------------

# From the optimal policy and Bradley–Terry to the DPO loss, its gradient and start, its failure on a certain
# preference, and the fixes with a finite optimum (IPO and the ΨPO objective behind it, cDPO). The rest: Part 2.
CORE_PATH: tuple[str, ...] = (
    "optimal-policy",
    "reward-reparam",
    "bt-cancellation",
    "dpo-loss",
    "dpo-gradient",
    "init-ln2",
    "deterministic-preference",
    "ipo",
    "ipo-psi",
    "cdpo",
)

FIGURES: dict[str, str] = {  # figure -> the proof it follows
    "optimal_policy": "optimal-policy",
    "losses": "dpo-gradient",
    "overfit": "ipo",
}
FIGURE_TEXT: dict[str, tuple[Text, str]] = {  # figure -> (caption, the notebook cell that draws it)
    "optimal_policy": (
        Text(
            "The optimal policy $\\pi^*(y) = \\pi_{\\mathrm{ref}}(y)\\, e^{r(y)/\\beta} / Z$ for three responses, "
            "against $\\beta$ (the proof's own expression, evaluated): small $\\beta$ puts all mass on the best "
            "response, large $\\beta$ returns to the reference (dotted). In the notebook, change `beta` and run "
            "the cell again.",
            "三个回答的最优策略 $\\pi^*(y) = \\pi_{\\mathrm{ref}}(y)\\, e^{r(y)/\\beta} / Z$ 随 $\\beta$ 的变化"
            "（直接计算证明中的表达式）：$\\beta$ 小时全部概率落在最好的回答上，$\\beta$ 大时回到参考策略（点线）。"
            "在笔记本中改变 `beta` 并重新运行该单元。",
        ),
        "lesson.plot_optimal_policy(beta=⟨beta⟩)  # change beta (and rewards=, reference=) and run again",
    ),
    "losses": (
        Text(
            "Every loss of the registry that is a function of the margin $h$ alone, and its gradient weight "
            "$-\\mathrm{d}L/\\mathrm{d}h$ (each loss's own function in `dpo_ref`, differentiated by autograd), "
            "at $\\beta = ⟨beta⟩$, $\\tau = ⟨tau⟩$; dotted: IPO's target $1/(2\\tau)$, where its weight changes "
            "sign. DPO's weight never reaches 0, so it keeps pushing $h$ up.",
            "注册表中只依赖间隔 $h$ 的每个损失及其梯度权重 $-\\mathrm{d}L/\\mathrm{d}h$（`dpo_ref` 中各损失自己的函数，"
            "由自动微分求导），取 $\\beta = ⟨beta⟩$、$\\tau = ⟨tau⟩$；点线：IPO 的目标 $1/(2\\tau)$，其权重在此变号。"
            "DPO 的权重永不为 0，所以它一直推高 $h$。",
        ),
        "lesson.plot_losses(beta=⟨beta⟩, tau=⟨tau⟩)  # change beta or tau and run again",
    ),
    "overfit": (
        Text(
            "One preference pair trained to convergence (`dpo-ref experiment overfit`, read from "
            "`docs/results/overfit.json`): DPO drives $\\pi(y_l)$ towards 0 and its margin up without bound, "
            "IPO stops at its fixed point $h = 1/(2\\tau)$ (dotted).",
            "在单个偏好对上训练到收敛（`dpo-ref experiment overfit`，读自 `docs/results/overfit.json`）："
            "DPO 把 $\\pi(y_l)$ 推向 0、间隔无界增长，IPO 停在其不动点 $h = 1/(2\\tau)$（点线）。",
        ),
        "lesson.plot_overfit()",
    ),
}
assert set(FIGURE_TEXT) == set(FIGURES)
FIGURE_DIR = "lesson"  # under docs/: docs/lesson/<figure>.png, embedded by docs/lesson*.md and the notebooks

FIXES: dict[str, Text] = {
    "dpo": Text(
        "the reward model and RL step, replaced by one classification loss", "用一个分类损失取代奖励模型和强化学习"
    ),
    "cdpo": Text("DPO's escape to infinity: labels flipped with probability ε", "DPO 间隔发散：假设标签以概率 ε 翻转"),
    "ipo": Text(
        "DPO's overfitting on certain preferences: a finite target margin", "DPO 在确定性偏好上的过拟合：有限的目标间隔"
    ),
    "ipo-mean": Text("IPO on per-token averages (TRL's ipo)", "对逐词平均的 IPO（TRL 的 ipo）"),
    "hinge": Text("a margin after which a pair stops contributing", "超过某个间隔后该样本对不再起作用"),
    "ipo-norm": Text("IPO independent of response length", "与回答长度无关的 IPO"),
    "exo_pair": Text("mode-seeking: reverse KL to the label distribution", "寻模：到标签分布的反向 KL"),
    "nca_pair": Text("the chosen response's likelihood falling: absolute rewards", "被选回答似然下降：使用绝对奖励"),
    "robust": Text("the bias of label noise: an unbiased loss", "标签噪声带来的偏差：无偏的损失"),
    "bco_pair": Text("pairs not needed: each response classified alone", "无需成对：每个回答单独分类"),
    "sppo_hard": Text("a target for each log-ratio, not only their difference", "为每个对数比值各设目标，而不只是其差"),
    "aot": Text("per-pair ordering: the distributions are aligned instead", "逐对排序：改为对齐分布"),
    "aot_unpaired": Text("AOT without pairing the responses", "不配对回答的 AOT"),
    "apo_zero": Text("chosen above the reference, rejected below it", "被选回答高于参考、被拒回答低于参考"),
    "apo_down": Text("both responses pushed down, the rejected more", "两个回答都被压低，被拒回答更多"),
    "discopop": Text(
        "a loss discovered by an LLM: logistic and exponential blended", "由大模型发现的损失：逻辑与指数的混合"
    ),
    "sft": Text("no preference: the chosen response's likelihood", "没有偏好：被选回答的似然"),
    "sigmoid_norm": Text("DPO independent of response length", "与回答长度无关的 DPO"),
    "simpo": Text("the reference model: a length-normalised reward and a margin γ", "参考模型：长度归一化奖励加间隔 γ"),
    "dpop": Text("the chosen likelihood falling below the reference's", "被选回答的似然低于参考"),
}

# where a variant's optimum is stated: a proof, or (proof, the prefix of its steps' names that are about this
# variant); `optimum_of` reads the claims. A variant not listed has none stated (a proof may cover several
# losses, so the record's own proof list is not enough)
OPTIMUM_FROM: dict[str, str | tuple[str, str]] = {
    "dpo": "deterministic-preference",
    "cdpo": "cdpo",
    "ipo": "ipo",
    "ipo-mean": "ipo",
    "hinge": "hinge",
    "exo_pair": "exo-cdpo",
    "nca_pair": ("bounded-losses", "NCA"),
    "robust": "robust-dpo",
    "sppo_hard": "sppo-hard",
    "discopop": "discopop",
    "simpo": ("simpo-sft-aot", "SimPO"),
    "aot": ("simpo-sft-aot", "AOT"),
}
# a minimiser in one of these (by name) is an optimum of a loss: the margin, the log-ratios, DiscoPOP's
# scaled margin u = beta h, AOT's quantile gap delta, SimPO's chosen log-probability A_w
_OPTIMUM_VARS = ("h", "rho_w", "rho_l", "u", "delta", "A_w")


def lesson_order(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(core, rest): the core path's proofs among `names` in CORE_PATH order, then the others in their order."""
    core = [n for n in CORE_PATH if n in names]
    return core, [n for n in names if n not in CORE_PATH]


def figures_after(proof: str) -> list[str]:
    return [f for f, after in FIGURES.items() if after == proof]


def figure_path(name: str) -> str:
    """The figure's path relative to docs/ (how the lesson embeds it)."""
    return f"{FIGURE_DIR}/{name}.png"


# ---- the table of the losses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Optimum:
    """A loss's optimum as checked claims state it: (display, step) pairs, all from one proof."""

    parts: tuple[tuple[str, int], ...]
    proof: str
    minimiser: dict = dataclasses.field(default_factory=dict)  # variable name -> the minimiser, as sympy


def _named(symbol: object) -> str:
    return getattr(symbol, "name", "")


def _star(symbol: sp.Symbol) -> str:
    return f"{tex(symbol)}^*"


def _solved(c: object) -> dict:
    """The minimiser a GlobalMinimum or SystemSolution claim states, by variable name ({} for other claims)."""
    if isinstance(c, GlobalMinimum):
        return {_named(c.var): sp.sympify(c.x0)}
    if isinstance(c, SystemSolution):
        return {_named(u): sp.sympify(c.expected[u]) for u in c.unknowns}
    return {}


def _minimiser(proof: Proof, k: int, c: object) -> str | None:
    """The display of claim `c` (step k of `proof`) if it states a minimiser or stationary point, else None."""
    if isinstance(c, GlobalMinimum) and _named(c.var) in _OPTIMUM_VARS:
        shown = f"{_star(c.var)} = {tex(c.x0)}"
        for later in proof.steps[k:]:
            lc = later.claim
            if isinstance(lc, Limit) and sp.sympify(lc.expr) == sp.sympify(c.x0):
                arrow = f"^{lc.direction}" if sp.sympify(lc.point).is_finite else ""
                shown += f" \\to {tex(lc.expected)} \\text{{ as }} {tex(lc.var)} \\to {tex(lc.point)}{arrow}"
        return shown
    if isinstance(c, SystemSolution) and all(_named(u) in _OPTIMUM_VARS for u in c.unknowns):
        return ",\\ ".join(f"{_star(u)} = {tex(c.expected[u])}" for u in c.unknowns)
    if isinstance(c, Equal) and sp.sympify(c.rhs) == 0 and isinstance(c.lhs, sp.Subs):
        (var,), (point,) = c.lhs.variables, c.lhs.point
        if _named(var) in _OPTIMUM_VARS and c.lhs.expr.has(sp.Derivative):
            return f"{_star(var)} = {tex(point)}"
    if isinstance(c, Equal) and sp.sympify(c.rhs) == 0 and c.given and len(c.given) == 1:
        ((var, at),) = c.given.items()
        if _named(var) in _OPTIMUM_VARS:
            free = sorted((s for s in sp.sympify(at).free_symbols if s in BOUNDED), key=str)
            cond = ", ".join(f"{tex(s)} > {tex(BOUNDED[s].inf)}" for s in free)
            return f"L = 0 \\text{{ at }} {tex(var)} = {tex(at)}" + (f",\\ {cond}" if cond else "")
    return None


def _escape(c: object) -> str | None:
    """The display of a limit as an optimum variable grows without bound: where the infimum is approached
    (a limit towards -oo may be a supremum, as EXO's bound: not taken)."""
    if isinstance(c, Limit) and _named(c.var) in _OPTIMUM_VARS and sp.sympify(c.point) == sp.oo:
        at = f"\\text{{ as }} {tex(c.var)} \\to \\infty"
        if sp.sympify(c.expected) == -sp.oo:
            return f"\\text{{no minimiser: }} L \\to -\\infty {at}"
        if sp.sympify(c.expected).is_finite:
            return f"\\text{{none finite: }} L \\to {tex(c.expected)} {at}"
    return None


def optimum_of(proof: Proof, prefix: str = "") -> Optimum | None:
    """What the claims of `proof` (its steps named `prefix`...) state about an optimum in the margin (or a
    log-ratio): the first limit showing where the infimum lies (at infinity), and the first minimiser (with the
    limit of that minimiser, if a later step takes one), a solved stationary point, a stationary point by
    substitution, or the region where the loss is zero."""
    escape = minimiser = None
    solved: dict = {}
    for k, step in enumerate(proof.steps, 1):
        if not step.name.en.startswith(prefix):
            continue
        if escape is None and (shown := _escape(step.claim)) is not None:
            escape = (shown, k)
        if minimiser is None and (shown := _minimiser(proof, k, step.claim)) is not None:
            minimiser, solved = (shown, k), _solved(step.claim)
    parts = tuple(p for p in (escape, minimiser) if p is not None)
    return Optimum(parts, proof.name, solved) if parts else None


@dataclass(frozen=True)
class LossRow:
    variant: str
    formula: str
    paper: str
    optimum: Optimum | None
    why: str  # the proof to read, or the registry's reason there is none
    fixes: str


def summary_rows(lang: str = "en", available: Sequence[str] | None = None) -> list[LossRow]:
    """One row per registry variant, in registry order: formula and paper from the record, the optimum from
    the claims of its OPTIMUM_FROM proof (if that proof is `available`), what it fixes from FIXES."""
    from dpo_ref import variants

    from . import MODULES, get

    names = list(MODULES) if available is None else list(available)
    rows = []
    for v in variants.RECORDS:
        where = OPTIMUM_FROM.get(v.name)
        slug, prefix = (where, "") if isinstance(where, str) or where is None else where
        optimum = optimum_of(get(slug), prefix) if slug in names else None
        own = [p for p in v.proofs if p in names]
        if not own:  # a proof that derives the record's function, though the record does not list it (yet)
            function = v.function.replace(":", ".")
            own = [p for p in names if function in get(p).justifies]
        why = ", ".join(own) or v.no_proof
        fixes = FIXES[v.name](lang) if v.name in FIXES else ""
        rows.append(LossRow(v.name, v.formula, v.paper, optimum, why, fixes))
    return rows


# ---- the notebook's functions: re-check, edit, restore ---------------------------------------------------

_ORIGINAL: dict[tuple[str, int], object] = {}


def _proof_step(name: str, index: int):
    from . import MODULES, get

    if name not in MODULES:
        raise KeyError(f"no proof {name!r}; choose from {', '.join(MODULES)}")
    proof = get(name)
    if not 1 <= index <= len(proof.steps):
        raise IndexError(f"proof {name!r} has steps 1 to {len(proof.steps)}, not {index}")
    return proof, proof.steps[index - 1]


def recheck(name: str, index: int) -> str:
    """Decide step `index` (1-based) of proof `name`, as it is now (edited or not), with sympy; print how, or
    raise StepFailed naming it."""
    _, step = _proof_step(name, index)
    start = time.perf_counter()
    try:
        detail = check_step(step)
    except ClaimError as err:
        raise StepFailed(name, index, step.name.en, str(err)) from None
    print(f"✓ {name}, step {index}: {detail} ({time.perf_counter() - start:.2f} s)")
    return detail


def why_not(name: str, index: int) -> str | None:
    """Like `recheck`, but never raises: the checker's reason if the step fails now, else None (printed)."""
    _, step = _proof_step(name, index)
    try:
        check_step(step)
    except ClaimError as err:
        print(f"✗ {name}, step {index} '{step.name.en}' fails: {err}")
        return str(err)
    print(f"✓ {name}, step {index} holds")
    return None


def edit(name: str, index: int, **fields: object) -> None:
    """Replace fields of step `index`'s claim (e.g. `edit("ipo", 2, x0=1/tau)`); prints the new display.
    `restore(name, index)` puts the proof's own claim back."""
    proof, step = _proof_step(name, index)
    known = {f.name for f in dataclasses.fields(step.claim)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"{type(step.claim).__name__} has fields {', '.join(sorted(known))}, not {', '.join(unknown)}")
    _ORIGINAL.setdefault((name, index), step)
    edited = dataclasses.replace(step, claim=dataclasses.replace(step.claim, **fields))
    proof.steps[index - 1] = edited
    print(f"{name}, step {index} now claims:\n{edited.unicode()}")


def restore(name: str | None = None, index: int | None = None) -> None:
    """Undo `edit` for one step, every edited step of one proof, or (no arguments) every edit."""
    from . import get

    for key in [k for k in _ORIGINAL if (name is None or k[0] == name) and (index is None or k[1] == index)]:
        get(key[0]).steps[key[1] - 1] = _ORIGINAL.pop(key)


def symbols(*names: str) -> tuple[sp.Symbol, ...]:
    """The proofs' own symbols, with their assumptions (`h, tau, eps = lesson.symbols("h", "tau", "eps")`)."""
    from . import common

    table = {"h": common.h, "beta": common.beta, "tau": common.tau, "eps": common.eps, "epsilon": common.eps}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise KeyError(f"no symbol {', '.join(unknown)}; choose from {', '.join(table)}")
    return tuple(table[n] for n in names)


# ---- exercises ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """A question, the cell the learner starts from, the solution cell, and `check(answer)`: a message when
    the answer is right, AssertionError saying why when it is wrong (decided by the project's own checker or
    by running the code, never by comparing with a stored answer alone)."""

    name: str
    title: Text
    prompt: Text
    starter: str
    solution: str
    check: Callable[[object], str]


def _slope_at_wrong_ipo_target(answer: object) -> str:
    """Ex. 1: IPO's step 2 with the minimiser 1/tau must fail, and the answer must be f'(1/tau)."""
    h, tau = symbols("h", "tau")
    step = _original_step("ipo", 2)
    assert isinstance(step.claim, GlobalMinimum), "ipo step 2 is no longer the per-pair minimiser"
    broken = dataclasses.replace(step, claim=dataclasses.replace(step.claim, x0=1 / tau))
    try:
        check_step(broken)
    except ClaimError as err:
        reason = str(err)
    else:
        raise AssertionError("the edited step holds: the checker accepted x0 = 1/tau")
    slope = sp.diff(sp.sympify(step.claim.f), h).subs(h, 1 / tau)  # the true f'(x0) at the wrong x0
    if sp.simplify(sp.sympify(answer) - slope) != 0:
        raise AssertionError(f"f'(1/tau) is not {answer}: differentiate (h - 1/(2 tau))^2 and put h = 1/tau")
    return f"right: the checker refuses x0 = 1/tau because {reason}"


def _proofs_catching(function: str, replacement: Callable) -> set[str]:
    """The proofs whose comparison with the code fails when `function` is replaced (run, not looked up)."""
    from . import MODULES, get

    module, _, attr = function.rpartition(".")
    owner = importlib.import_module(module)
    caught = set()
    original = getattr(owner, attr)
    setattr(owner, attr, replacement)
    try:
        for name in MODULES:
            if function not in get(name).justifies:
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    compare(name)
                except AssertionError:
                    caught.add(name)
    finally:
        setattr(owner, attr, original)
    return caught


def _ipo_target_one_over_tau(margin, tau):
    """The `ipo-target-1/tau` mistake: (h - 1/tau)^2."""
    return (margin - 1.0 / tau) ** 2


def _which_comparisons_fail(answer: object) -> str:
    """Ex. 2: the proofs whose comparison fails with the broken ipo_losses_from_margin, found by running them."""
    got = {answer} if isinstance(answer, str) else set(answer or ())
    want = _proofs_catching("dpo_ref.losses.ipo_losses_from_margin", _ipo_target_one_over_tau)
    assert want, "no comparison catches the broken IPO loss"
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        parts = ([f"also failing: {', '.join(missing)}"] if missing else []) + (
            [f"not failing: {', '.join(extra)}"] if extra else []
        )
        raise AssertionError("; ".join(parts))
    return f"right: {', '.join(sorted(want))} compare(s) the broken loss with the derivation and fail"


def _ipo_noise_optimum(answer: object) -> str:
    """Ex. 3: the answer must be the unique minimiser of the noisy IPO loss, as the checker decides it."""
    from .ipo_noise import POPULATION

    h, tau, eps = symbols("h", "tau", "eps")
    try:
        GlobalMinimum(POPULATION, h, sp.sympify(answer)).check()
    except (ClaimError, TypeError, sp.SympifyError) as err:
        raise AssertionError(f"{answer} is not the minimiser: {err}") from None
    return f"right: {answer} is the unique minimiser (strictly convex, zero slope there)"


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "break-a-step",
        Text("Break a step and see which check fails", "改坏一步，看哪项检验失败"),
        Text(
            "Step 2 of `ipo` claims the per-pair minimiser $1/(2\\tau)$. Replace it by $1/\\tau$, the mistake "
            "the oracle names `ipo-target-1/tau`, and ask the checker why it refuses the step. Which slope "
            "$f'(x_0)$ does it report?",
            "`ipo` 的第 2 步断言单个样本对的最小值点是 $1/(2\\tau)$。把它换成 $1/\\tau$（检验器称之为 "
            "`ipo-target-1/tau` 的错误），再让检验器说明为何拒绝这一步。它报告的斜率 $f'(x_0)$ 是多少？",
        ),
        'h, tau = lesson.symbols("h", "tau")\n'
        'lesson.edit("ipo", 2, x0=1 / tau)\n'
        'lesson.why_not("ipo", 2)\n'
        'lesson.restore("ipo", 2)\n'
        "answer = None  # your answer: an expression in tau\n"
        'lesson.check("break-a-step", answer)',
        'h, tau = lesson.symbols("h", "tau")\nlesson.check("break-a-step", 1 / tau)',
        _slope_at_wrong_ipo_target,
    ),
    Exercise(
        "break-the-code",
        Text("Break the code and see which comparison fails", "改坏代码，看哪个比较失败"),
        Text(
            "Suppose `dpo_ref.losses.ipo_losses_from_margin` computed $(h - 1/\\tau)^2$, the same mistake in the "
            "code. Which proofs' closing comparisons with the code (`lesson.compare(name)`) would fail? The check "
            "puts the broken function in, runs every comparison and compares the failures with your answer.",
            "假设 `dpo_ref.losses.ipo_losses_from_margin` 计算的是 $(h - 1/\\tau)^2$，即代码里的同一个错误。"
            "哪些证明最后与代码的比较（`lesson.compare(name)`）会失败？检验会换入这个错误的函数，运行所有比较，"
            "再与你的答案对照。",
        ),
        'answer = set()  # your answer: the proof names, e.g. {"ipo"}\nlesson.check("break-the-code", answer or None)',
        "# a comparison calls the functions its proof justifies\n"
        'broken = "dpo_ref.losses.ipo_losses_from_margin"\n'
        "answer = {name for name in proofs.MODULES if broken in proofs.get(name).justifies}\n"
        'lesson.check("break-the-code", answer)',
        _which_comparisons_fail,
    ),
    Exercise(
        "derive-an-optimum",
        Text("Derive a variant's optimum", "推导一个变体的最优点"),
        Text(
            "If a pair's label is flipped with probability $\\varepsilon$, IPO's expected loss is "
            "$(1 - \\varepsilon)(h - 1/(2\\tau))^2 + \\varepsilon (h + 1/(2\\tau))^2$. Derive its minimiser "
            "$h^*$; the check decides it with the same `GlobalMinimum` claim the proofs use (Part 2, `ipo-noise`, "
            "derives it step by step).",
            "若一对样本的标签以概率 $\\varepsilon$ 翻转，IPO 的期望损失是 "
            "$(1 - \\varepsilon)(h - 1/(2\\tau))^2 + \\varepsilon (h + 1/(2\\tau))^2$。推导它的最小值点 $h^*$；"
            "检验用证明所用的同一个 `GlobalMinimum` 命题来判定（第 2 部分的 `ipo-noise` 逐步推导了它）。",
        ),
        'h, tau, eps = lesson.symbols("h", "tau", "eps")\n'
        "answer = None  # your answer: an expression in tau and eps\n"
        'lesson.check("derive-an-optimum", answer)',
        'h, tau, eps = lesson.symbols("h", "tau", "eps")\nlesson.check("derive-an-optimum", (1 - 2 * eps) / (2 * tau))',
        _ipo_noise_optimum,
    ),
)


def _original_step(name: str, index: int):
    return _ORIGINAL.get((name, index)) or _proof_step(name, index)[1]


def check(name: str, answer: object) -> bool | None:
    """Check an exercise's answer: None (printed "not answered yet") for None, True (printed why) when right,
    AssertionError saying why when wrong."""
    exercise = next((e for e in EXERCISES if e.name == name), None)
    if exercise is None:
        raise KeyError(f"no exercise {name!r}; choose from {', '.join(e.name for e in EXERCISES)}")
    if answer is None:
        print(f"· {name}: not answered yet")
        return None
    print(f"✓ {name}: {exercise.check(answer)}")
    return True


# ---- plots ----------------------------------------------------------------------------------------------


class Plot:
    """A drawn figure: shown inline by Jupyter (`_repr_png_`, no backend set-up needed), saved by `save`."""

    def __init__(self, figure):
        self.figure = figure

    def png(self) -> bytes:
        buf = io.BytesIO()
        # no Software/date metadata: the same data and matplotlib give the same bytes
        self.figure.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def save(self, path: str) -> None:
        from dpo_ref.atomic import atomic_path

        data = self.png()
        with atomic_path(path, suffix=".png") as tmp, open(tmp, "wb") as f:
            f.write(data)


def _figure(ncols: int, width: float = 6.0, height: float = 4.0):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the lesson's plots need matplotlib: pip install -e '.[plot]'") from None
    fig = Figure(figsize=(width * ncols, height))
    return fig, fig.subplots(1, ncols) if ncols > 1 else [fig.subplots(1, 1)]


def margin_losses() -> list:
    """The registry's losses that are functions of the margin h alone: per example, no lengths, with a
    reference, invariant under adding f(x) to both policy log-probs (so a function of rho_w - rho_l = h);
    one per loss function (`key`), in registry order."""
    from dpo_ref import variants

    seen, out = set(), []
    for v in variants.RECORDS:
        if v.shift_invariant == variants.YES and v.per_example and not v.needs_lengths and not v.reference_free:
            if v.key not in seen:
                seen.add(v.key)
                out.append(v)
    return out


def _coefficients(v, beta: float, tau: float) -> dict[str, float]:
    """The record's defaults, with beta for its beta and tau for its IPO tau (DiscoPOP's tau is a temperature)."""
    from dpo_ref import variants

    c = v.defaults()
    for p in v.params:
        if p.name == "beta":
            c["beta"] = beta
        elif p.means == variants.TAU.means:
            c[p.name] = tau
    return c


def loss_curves(margins: Sequence[float], beta: float = 0.1, tau: float = 0.1) -> dict[str, dict]:
    """Per margin loss: its coefficients, L(h) and the gradient weight -dL/dh at each margin, from the
    registry's own function in float64 with torch autograd. Each loss is evaluated at two splits of h into
    log-ratios (rho_w, rho_l) = (h, 0) and (h/2 + 1, 1 - h/2); ValueError if they disagree (not a margin loss)."""
    import torch

    out = {}
    for v in margin_losses():
        c = _coefficients(v, beta, tau)
        fn = v.bind(**c)
        h = torch.tensor(list(margins), dtype=torch.float64, requires_grad=True)  # (M,)
        zero = torch.zeros_like(h)
        losses = fn(h, zero, zero, zero)  # (M,): rho_w = h, rho_l = 0
        (grad,) = torch.autograd.grad(losses.sum(), h)
        other = fn(h.detach() / 2 + 1, 1 - h.detach() / 2, zero, zero)  # rho_w - rho_l = h again
        if not torch.allclose(losses.detach(), other, rtol=1e-12, atol=1e-12):
            raise ValueError(f"{v.name} is not a function of the margin alone")
        out[v.name] = {"coefficients": c, "loss": losses.detach().tolist(), "weight": (-grad).tolist()}
    return out


def _grid(lo: float, hi: float, n: int = 401) -> list[float]:
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


def plot_losses(beta: float = 1.0, tau: float = 0.25) -> Plot:
    """Loss and gradient weight -dL/dh against the margin h for every margin loss of the registry, IPO's
    target 1/(2 tau) marked. Change beta or tau and call it again."""
    from dpo_ref.losses import ipo_target_margin

    target = ipo_target_margin(tau)
    margins = _grid(-3.0 / beta, max(6.0 / beta, 2.0 * target))
    curves = loss_curves(margins, beta, tau)
    fig, (ax_loss, ax_weight) = _figure(2)
    bounded = [max(abs(w) for w in c["weight"]) for n, c in curves.items() if n != "ipo"]
    for name, c in curves.items():
        label = name + " (" + ", ".join(f"{k}={v:g}" for k, v in c["coefficients"].items()) + ")"
        ax_loss.plot(margins, c["loss"], label=label)
        ax_weight.plot(margins, c["weight"], label=name)
    for ax in (ax_loss, ax_weight):
        ax.axvline(target, color="grey", ls=":", lw=1)
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xlabel("margin h")
    ax_loss.annotate(f"IPO target 1/(2τ) = {target:g}", (target, 0.05), xycoords=("data", "axes fraction"))
    ax_loss.set(title="loss L(h)", ylim=(-1.0, 4.0))
    ax_weight.set(
        title="gradient weight −dL/dh (0 where a loss is minimal)", ylim=(-1.5 * max(bounded), 1.5 * max(bounded))
    )
    ax_loss.legend(fontsize=7)
    return Plot(fig)


def optimal_policy(betas: Sequence[float], rewards: Sequence[float], reference: Sequence[float]) -> list[list[float]]:
    """pi*(y_i) at each beta: the proof's own expression (optimal-policy, n = 3) evaluated numerically."""
    from .common import beta as b
    from .optimal_policy import p, pistar, r

    values = {**dict(zip(p, reference)), **dict(zip(r, rewards))}
    fns = [sp.lambdify(b, e.subs(values), "mpmath") for e in pistar]  # mpmath: e^{r/beta} overflows no float
    return [[float(fn(x)) for x in betas] for fn in fns]


def plot_optimal_policy(
    beta: float = 1.0, rewards: Sequence[float] = (1.0, 0.5, 0.0), reference: Sequence[float] = (0.2, 0.3, 0.5)
) -> Plot:
    """The optimal policy pi*(y) = pi_ref(y) e^{r(y)/beta} / Z against beta, three responses; the chosen beta
    marked, and the two limits (beta -> 0: the best response; beta -> oo: the reference)."""
    if len(rewards) != 3 or len(reference) != 3 or abs(sum(reference) - 1) > 1e-9 or min(reference) <= 0:
        raise ValueError("rewards and reference: three numbers each, the reference positive and summing to 1")
    betas = [10 ** (-2 + 4 * k / 200) for k in range(201)]
    curves = optimal_policy(betas, rewards, reference)
    at = [c[0] for c in optimal_policy([beta], rewards, reference)]
    fig, (ax,) = _figure(1, 7.0)
    for i, c in enumerate(curves):
        (line,) = ax.plot(betas, c, label=f"y_{i + 1}: r = {rewards[i]:g}, π_ref = {reference[i]:g}")
        ax.axhline(reference[i], color=line.get_color(), ls=":", lw=1)
        ax.plot([beta], [at[i]], "o", color=line.get_color())
    ax.axvline(beta, color="grey", ls="--", lw=1)
    ax.set(xscale="log", xlabel="β", ylabel="π*(y)", ylim=(0, 1.02),
           title=f"optimal policy against β (dotted: π_ref, its limit as β → ∞); at β = {beta:g}: "
           + ", ".join(f"{x:.3f}" for x in at))  # fmt: skip
    ax.legend(fontsize=8)
    return Plot(fig)


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "overfit.json"


def overfit_trajectory(path: str | os.PathLike | None = None) -> dict[str, dict[str, list]]:
    """The overfit experiment's per-epoch pi(y_l) and margin per run, from its results file (the checked-in
    docs/results/overfit.json); the experiment is run (about 5 s) only if no file with a trajectory is found."""
    target = Path(path) if path is not None else RESULTS
    if target.is_file():
        data = json.loads(target.read_text(encoding="utf-8"))
        if "trajectory" in data:
            return data["trajectory"]
    from dpo_ref.experiments.run import overfit_trajectory as from_rows
    from dpo_ref.experiments.run import run_overfit

    return from_rows(run_overfit())


def plot_overfit(path: str | os.PathLike | None = None) -> Plot:
    """pi(y_l) and the margin h per epoch on one preference pair: DPO drives pi(y_l) to 0 and h up without
    bound; IPO stops at its fixed point h = 1/(2 tau) (dotted)."""
    from dpo_ref.losses import ipo_target_margin

    runs = overfit_trajectory(path)
    fig, (ax_p, ax_h) = _figure(2)
    for name, run in runs.items():
        loss, _, param = name.partition("_")
        label = f"{loss.upper()} {'β' if loss == 'dpo' else 'τ'} = {param}"
        (line,) = ax_p.plot(run["epoch"], run["p_rejected"], label=label)
        ax_h.plot(run["epoch"], run["margin"], label=label, color=line.get_color())
        if loss == "ipo":
            ax_h.axhline(ipo_target_margin(float(param)), color=line.get_color(), ls=":", lw=1)
    ax_p.set(yscale="log", xlabel="epoch (SGD step on the one pair)", title="π(y_l): the rejected response")
    ax_h.set(xlabel="epoch", title="margin h (dotted: IPO's fixed point 1/(2τ))")
    ax_p.legend(fontsize=8)
    return Plot(fig)


PLOTS: dict[str, Callable[[], Plot]] = {
    "optimal_policy": plot_optimal_policy,
    "losses": plot_losses,
    "overfit": plot_overfit,
}
assert set(PLOTS) == set(FIGURES), "every figure the lesson places has a plot function"


def _defaults(name: str) -> dict[str, object]:
    import inspect

    sig = inspect.signature(PLOTS[name])
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _fill(text: str, name: str, code: bool = False) -> str:
    for key, value in _defaults(name).items():
        shown = repr(value) if code else f"{value:g}" if isinstance(value, float) else str(value)
        text = text.replace(f"⟨{key}⟩", shown)
    return text


def caption(name: str, lang: str = "en") -> str:
    """The figure's caption, with the plot function's default coefficients filled in."""
    return _fill(FIGURE_TEXT[name][0](lang), name)


def figure_cell(name: str) -> str:
    """The notebook cell that draws the figure (the defaults written out, for the learner to change)."""
    return _fill(FIGURE_TEXT[name][1], name, code=True)


def write_figures(folder: str) -> list[str]:
    """Draw every figure with its defaults and write folder/<name>.png atomically; returns the paths."""
    written = []
    for name, draw in PLOTS.items():
        path = os.path.join(folder, f"{name}.png")
        draw().save(path)
        written.append(path)
    return written


@contextlib.contextmanager
def _edits_undone() -> Iterator[None]:
    """For tests and exercises: every `edit` made inside is undone on the way out."""
    try:
        yield
    finally:
        restore()
