"""`dpo-ref experiment overfit|displacement|bandit`: the experiments that show how DPO behaves.

    overfit       one preference pair, tiny Llama, SGD: DPO drives pi(y_l) to 0 and sigma(beta h) to 1
                  for every beta; IPO stops at the margin h = 1/(2 tau) with pi(y_l) bounded away from 0.
    displacement  the built-in task with plain DPO and with the chosen-NLL (RPO) term: plain DPO lowers
                  the chosen response's likelihood too, and greedy generation suffers.
    bandit        Azar et al. (2023) section 5.4: three actions, a tabular softmax policy, Adam; DPO's
                  optimum ignores the reference when preferences are deterministic, IPO's has a closed form.

Each writes CSV and JSON to --out and, when matplotlib is installed (`pip install dpo-ref[plot]`), a PNG.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch

from dpo_ref.atomic import STDOUT, atomic_path, write_output, write_text_atomic
from dpo_ref.errors import InputError
from dpo_ref.losses import check_positive_scalar, dpo_loss, ipo_loss, ipo_target_margin
from dpo_ref.progress import progress

# what each experiment writes in --out (an --out holding any of them is replaced only with --overwrite)
OVERFIT_FILES = ("overfit.csv", "overfit.json", "overfit.png")
DISPLACEMENT_FILES = ("displacement.csv", "displacement.json", "displacement.png", "plain", "rpo")
BANDIT_FILES = ("bandit.csv", "bandit.json", "bandit.png")

ACTIONS = ("a", "b", "c")
# preference datasets of the bandit, (winner, loser) pairs of action indices
BANDIT_DATASETS = {
    "D1": ((0, 1), (1, 2), (0, 2)),  # a > b, b > c, a > c: a total order
    "D3": ((0, 1), (1, 0), (1, 2)),  # a > b, b > a, b > c: a tie between a and b
}


# ---------------------------------------------------------------------------------------------- output


def _write_csv(path: str, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _write_json(path: str, obj) -> None:
    if path != STDOUT:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_output(path, json.dumps(obj, indent=2) + "\n")


def _say(args, text: str) -> None:
    """A line for the reader: on stdout, or on stderr when `--json -` puts the JSON alone on stdout."""
    print(text, file=sys.stderr if args.json == STDOUT else sys.stdout)


def _pyplot():
    """matplotlib.pyplot with a file-only backend, or None when the `plot` extra is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_figure(fig, path: str) -> None:
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:  # the suffix tells savefig the format
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------- overfit


def run_overfit(
    *,
    betas=(0.1, 0.5),
    taus=(0.05, 0.1),
    epochs: int = 100,
    lr: float = 0.1,
    max_grad_norm: float | None = 0.3,
    seed: int = 0,
    show_progress: bool = False,
) -> list[dict]:
    """One preference pair, tiny Llama, plain SGD: per-epoch pi(y_w), pi(y_l), margin h for DPO and IPO.

    The reference is the initial model (frozen). Each epoch is one SGD step on the single pair; the
    recorded values are measured before that step (epoch 0 is the reference itself, h = 0). The gradient
    norm is clipped at `max_grad_norm`: at lr 0.1 IPO's quadratic loss otherwise overshoots and wrecks the
    tiny model in its first steps.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a single pair: intra-op threads only add overhead
    try:
        return _overfit(betas, taus, epochs, lr, max_grad_norm, seed, show_progress)
    finally:
        torch.set_num_threads(threads)


def _overfit(betas, taus, epochs: int, lr: float, max_grad_norm: float | None, seed: int, show_progress: bool):
    from dpo_ref.train.data import PreferenceCollator, tokenize_pair
    from dpo_ref.train.loop import SequenceScorer
    from dpo_ref.train.model import build_tiny_model
    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    pair = tokenize_pair({"prompt": "Which letter? ", "chosen": "A", "rejected": "B"}, tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)([pair])
    runs = [("dpo", b) for b in betas] + [("ipo", t) for t in taus]
    rows = []
    if show_progress:
        runs = progress(runs, "dpo-ref experiment overfit", lambda r: f"{r[0]} {r[1]:g}")
    for loss_type, param in runs:
        option = f"--{'betas' if loss_type == 'dpo' else 'taus'} {param:g}"
        policy = build_tiny_model(tokenizer, seed)
        with torch.no_grad():
            ref_logps, _ = SequenceScorer(policy)(batch["input_ids"], batch["attention_mask"], batch["labels"])
        scorer = SequenceScorer(policy)
        optimizer = torch.optim.SGD(policy.parameters(), lr=lr)
        for epoch in range(epochs + 1):
            logps, _ = scorer(batch["input_ids"], batch["attention_mask"], batch["labels"])  # (2,)
            lp = logps.detach()
            if not bool(torch.isfinite(lp).all()):
                raise InputError(
                    f"--lr {lr:g} with {option}: the weights became non-finite after {epoch} SGD steps; expected a "
                    f"smaller --lr (default 0.1) or {option.split()[0]}"
                )
            args = (logps[:1], logps[1:], ref_logps[:1], ref_logps[1:])
            try:
                result = dpo_loss(*args, beta=param) if loss_type == "dpo" else ipo_loss(*args, tau=param)
            except InputError as err:  # the coefficient overflows the loss: name the option, not the internals
                raise InputError(f"{option}: {err}") from None
            margin = float((result.chosen_rewards - result.rejected_rewards) / param)  # h
            rows.append(
                {
                    "loss_type": loss_type,
                    "param": param,
                    "epoch": epoch,
                    "loss": float(result.losses.detach()),
                    "margin": margin,
                    "sigmoid_beta_margin": 0.5 * (1.0 + math.tanh(0.5 * param * margin)),  # stable sigma
                    "target_margin": ipo_target_margin(param) if loss_type == "ipo" else "",
                    "p_chosen": math.exp(float(lp[0])),
                    "p_rejected": math.exp(float(lp[1])),
                    "logp_chosen": float(lp[0]),
                    "logp_rejected": float(lp[1]),
                }
            )
            if epoch == epochs:
                break
            optimizer.zero_grad()
            result.losses.mean().backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
            optimizer.step()
    return rows


def overfit_trajectory(rows: list[dict]) -> dict[str, dict[str, list]]:
    """Per run (`dpo_0.1`, `ipo_0.05`, ...): the epochs and, per epoch, pi(y_l) and the margin h (the lesson's
    plot of pi(y_l) -> 0 under DPO against IPO's fixed point reads these from docs/results/overfit.json)."""
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        run = out.setdefault(f"{r['loss_type']}_{r['param']:g}", {"epoch": [], "p_rejected": [], "margin": []})
        for key in run:
            run[key].append(r[key])
    return out


def _plot_overfit(rows: list[dict], path: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in sorted({(r["loss_type"], r["param"]) for r in rows}):
        sel = [r for r in rows if (r["loss_type"], r["param"]) == key]
        label = f"{key[0].upper()} {'beta' if key[0] == 'dpo' else 'tau'}={key[1]}"
        epochs = [r["epoch"] for r in sel]
        axes[0].plot(epochs, [r["p_rejected"] for r in sel], label=label)
        axes[1].plot(epochs, [r["margin"] for r in sel], label=label)
        if key[0] == "dpo":
            axes[2].plot(epochs, [r["sigmoid_beta_margin"] for r in sel], label=label)
        else:
            axes[1].axhline(ipo_target_margin(key[1]), ls=":", color="grey")
    axes[0].set(title="pi(y_l): probability of the rejected answer", xlabel="epoch", yscale="log")
    axes[1].set(title="margin h (dotted: IPO target 1/(2 tau))", xlabel="epoch")
    axes[2].set(title="DPO: sigma(beta h)", xlabel="epoch")
    for ax in axes:
        ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- displacement


def run_displacement(out: str, *, rpo_alpha: float | None = None, **overrides) -> list[dict]:
    """Train the built-in task twice, plain DPO (rpo_alpha = 0) and with the chosen-NLL term; rows per step."""
    from dpo_ref.train.config import RECIPES
    from dpo_ref.train.loop import TrainConfig, check_config, check_out_dir, train

    default_alpha = RECIPES["builtin"]["rpo_alpha"] if rpo_alpha is None else rpo_alpha
    runs = []
    for variant, alpha in (("dpo", 0.0), (f"dpo+nll(alpha={default_alpha:g})", default_alpha)):
        # the experiment owns its two run directories: a rerun replaces them (--overwrite)
        out_dir = os.path.join(out, "plain" if alpha == 0 else "rpo")
        cfg = TrainConfig(out=out_dir, rpo_alpha=alpha, overwrite=True, **overrides)
        cfg.log_every = min(cfg.log_every, cfg.eval_every)
        runs.append((variant, alpha, check_config(cfg)))
        check_out_dir(cfg)  # both runs' settings are checked before either starts
    rows = []
    for i, (variant, alpha, cfg) in enumerate(runs, start=1):
        if cfg.progress:  # about 15 s each: say what runs (train itself adds a line or a bar per phase)
            print(f"dpo-ref experiment displacement: run {i}/{len(runs)}, {variant}", file=sys.stderr, flush=True)
        history = train(cfg)["history"]
        for r in history:
            rows.append(
                {
                    "variant": variant,
                    "rpo_alpha": alpha,
                    "step": r["step"],
                    "logratio_chosen": r.get("logratio/chosen", ""),
                    "logratio_rejected": r.get("logratio/rejected", ""),
                    "eval_accuracy": r.get("eval/accuracy", ""),
                    "generation_accuracy": r.get("eval/generation_accuracy", ""),
                }
            )
    return rows


def _plot_displacement(rows: list[dict], path: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        logged = [r for r in sel if r["logratio_chosen"] != ""]
        evals = [r for r in sel if r["generation_accuracy"] != ""]
        axes[0].plot([r["step"] for r in logged], [r["logratio_chosen"] for r in logged], label=variant)
        axes[1].plot([r["step"] for r in logged], [r["logratio_rejected"] for r in logged], label=variant)
        axes[2].plot([r["step"] for r in evals], [r["generation_accuracy"] for r in evals], "o-", label=variant)
    axes[0].set(title="chosen log-ratio log pi(y_w)/pi_ref(y_w)", xlabel="step")
    axes[1].set(title="rejected log-ratio log pi(y_l)/pi_ref(y_l)", xlabel="step")
    axes[2].set(title="greedy generation accuracy (held out)", xlabel="step", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- bandit


def bandit_closed_form(pairs, tau: float) -> np.ndarray:
    """IPO's optimum for a tabular softmax policy with a uniform reference, as probabilities (3,).

    With logits theta and a uniform reference, the margin of pair (w, l) is h = theta_w - theta_l, so the
    expected IPO loss is the least-squares objective sum_pairs (theta_w - theta_l - 1/(2 tau))^2
    (Azar et al. 2023, Eq. 17, averaged over the dataset). Solved with numpy's least squares (logits are
    defined up to a constant, which the softmax ignores).
    """
    A = np.zeros((len(pairs), len(ACTIONS)))
    for row, (w, l) in enumerate(pairs):
        A[row, w], A[row, l] = 1.0, -1.0
    b = np.full(len(pairs), ipo_target_margin(tau))
    theta, *_ = np.linalg.lstsq(A, b, rcond=None)
    p = np.exp(theta - theta.max())
    return p / p.sum()


def run_bandit(
    pairs, *, loss: str, tau: float, steps: int = 18_000, seeds: int = 10, batch: int = 9, lr: float = 0.01
) -> np.ndarray:
    """Final policy probabilities (seeds, 3): Adam on the logits from 0, mini-batches drawn with replacement.

    All seeds run at once as a (seeds, 3) parameter; each seed draws its own mini-batches. The loss is
    dpo_ref's DPO (beta = tau) or IPO on the log-probs of the softmax policy against a uniform reference.
    """
    if loss not in ("dpo", "ipo"):
        raise InputError(f"--loss must be dpo or ipo, got {loss!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (seeds, 3) tensors: intra-op threads only add overhead
    try:
        return _adam_bandit(pairs, loss, tau, steps, seeds, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _adam_bandit(pairs, loss: str, tau: float, steps: int, seeds: int, batch: int, lr: float) -> np.ndarray:
    pairs_t = torch.tensor(pairs, dtype=torch.long)  # (P, 2)
    theta = torch.zeros(seeds, len(ACTIONS), dtype=torch.float64, requires_grad=True)  # (S, 3)
    optimizer = torch.optim.Adam([theta], lr=lr)
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(len(pairs), (steps, seeds, batch), generator=generator)  # (steps, S, n)
    ref_logp = torch.full((seeds * batch,), -math.log(len(ACTIONS)), dtype=torch.float64)  # uniform reference
    rows = torch.arange(seeds).unsqueeze(1).expand(seeds, batch).reshape(-1)  # (S*n,)
    for step in range(steps):
        chosen_pairs = pairs_t[draws[step]].reshape(-1, 2)  # (S*n, 2)
        logp = torch.log_softmax(theta, dim=-1)  # (S, 3)
        pc, pr = logp[rows, chosen_pairs[:, 0]], logp[rows, chosen_pairs[:, 1]]  # (S*n,)
        if loss == "dpo":
            losses = dpo_loss(pc, pr, ref_logp, ref_logp, beta=tau, validate=False).losses
        else:
            losses = ipo_loss(pc, pr, ref_logp, ref_logp, tau=tau, validate=False).losses
        optimizer.zero_grad()
        # mean over each seed's mini-batch, summed over seeds: the seeds' parameters are independent
        (losses.view(seeds, batch).mean(-1).sum()).backward()
        optimizer.step()
    return torch.softmax(theta.detach(), dim=-1).numpy()


# ---------------------------------------------------------------------------------------------- CLI


def _check_out(args, names: tuple[str, ...]) -> None:
    """Refuse, before the run, an --out that cannot be written or already holds what this experiment writes
    (`names`) unless --overwrite, and a --json that would write over one of them; creates nothing."""
    from dpo_ref.atomic import check_apart
    from dpo_ref.train.rundir import check_writable_dir

    check_writable_dir(args.out, "--out")
    check_apart({}, {"--out": args.out, "--json": args.json}, owned={"--out": names})
    found = [n for n in names if os.path.lexists(os.path.join(args.out, n))]
    if found and not args.overwrite:
        raise InputError(
            f"--out {args.out!r} already holds {', '.join(found)} from an earlier run: replace them with --overwrite, "
            "or choose another --out"
        )


def _check_json(args) -> dict | None:
    """Check `--json` before the run, not after it; returns the machine as it was before the run."""
    if not args.json:
        return None
    from dpo_ref.docgen.results import check_results_path, machine

    check_results_path(args.json)
    return machine()


def _hold_outputs(args) -> None:
    """Lock --out and --json (`dpo_ref.atomic`) once every argument is checked: one experiment at a time writes
    them. A --out created for the lock and left empty (the run failed) is removed again."""
    from dpo_ref.atomic import hold

    hold({"--out": args.out, "--json": args.json}, directories=("--out",))


def _results_json(
    args, results: dict, lines: list[str], started: float, before: dict | None, extra: dict | None = None
) -> None:
    """`--json PATH`: the experiment's results with its settings, time and machine (`docs/results/`), and any
    `extra` keys (the overfit run's per-epoch trajectory, which the lesson plots)."""
    if not args.json:
        return
    from dpo_ref.docgen.results import write_results

    settings = {k: v for k, v in vars(args).items() if k not in ("func", "json", "command", "experiment")}
    write_results(
        args.json,
        {
            "experiment": args.experiment,
            "machine": {**before, "torch": torch.__version__},
            "settings": settings,
            "seconds": time.perf_counter() - started,
            "results": results,
            "printed": lines,
            **(extra or {}),
        },
    )


def _overfit_handler(args) -> int:
    from dpo_ref.train.config import check_seed

    for name, values in (("--betas", args.betas), ("--taus", args.taus)):
        for value in values:
            check_positive_scalar(value, name)
    check_positive_scalar(args.lr, "--lr")
    check_positive_scalar(args.max_grad_norm, "--max-grad-norm")
    if args.epochs < 1:
        raise InputError(f"--epochs must be a positive integer, got {args.epochs}")
    check_seed(args.seed)
    _check_out(args, OVERFIT_FILES)
    before = _check_json(args)
    _hold_outputs(args)
    started = time.perf_counter()
    rows = run_overfit(
        betas=args.betas,
        taus=args.taus,
        epochs=args.epochs,
        lr=args.lr,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        show_progress=True,
    )
    os.makedirs(args.out, exist_ok=True)  # only once the run has succeeded: a failed one leaves no empty --out
    csv_path = os.path.join(args.out, "overfit.csv")
    _write_csv(csv_path, rows)
    final = {}
    for r in rows:
        if r["epoch"] == args.epochs:
            run = [x for x in rows if (x["loss_type"], x["param"]) == (r["loss_type"], r["param"])]
            first = run[0]
            final[f"{r['loss_type']}_{r['param']:g}"] = {
                "p_rejected_start": first["p_rejected"],
                "p_rejected_end": r["p_rejected"],
                "p_chosen_end": r["p_chosen"],
                "margin_end": r["margin"],
                "margin_mean_last10": sum(x["margin"] for x in run[-10:]) / len(run[-10:]),
                "sigmoid_beta_margin_end": r["sigmoid_beta_margin"],
                "target_margin": r["target_margin"] or None,
            }
    _write_json(os.path.join(args.out, "overfit.json"), final)
    lines = [
        f"{'run':<10} {'pi(y_l) start':>14} {'pi(y_l) end':>12} {'h end':>8} {'h last 10':>10} "
        f"{'sigma(beta h)':>14} {'1/(2tau)':>9}"
    ]
    for name, f in final.items():
        target = f"{f['target_margin']:.3f}" if f["target_margin"] else "-"
        lines.append(
            f"{name:<10} {f['p_rejected_start']:>14.3e} {f['p_rejected_end']:>12.3e} {f['margin_end']:>8.3f} "
            f"{f['margin_mean_last10']:>10.3f} "
            f"{f['sigmoid_beta_margin_end']:>14.4f} {target:>9}"
        )
    _say(args, "\n".join(lines))
    _results_json(args, final, lines, started, before, {"trajectory": overfit_trajectory(rows)})
    png = os.path.join(args.out, "overfit.png")
    _say(args, f"wrote {csv_path}, overfit.json" + (", overfit.png" if _plot_overfit(rows, png) else ""))
    return 0


def _displacement_handler(args) -> int:
    _check_out(args, DISPLACEMENT_FILES)
    before = _check_json(args)
    _hold_outputs(args)
    started = time.perf_counter()
    overrides = {"steps": args.steps, "sft_steps": args.sft_steps, "eval_every": args.eval_every}
    rows = run_displacement(args.out, rpo_alpha=args.rpo_alpha, **overrides)
    csv_path = os.path.join(args.out, "displacement.csv")
    _write_csv(csv_path, rows)
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        logged = [r for r in sel if r["logratio_chosen"] != ""]
        evals = [r for r in sel if r["generation_accuracy"] != ""]
        summary[variant] = {
            "logratio_chosen_end": logged[-1]["logratio_chosen"],
            "logratio_rejected_end": logged[-1]["logratio_rejected"],
            "generation_accuracy_start": evals[0]["generation_accuracy"],
            "generation_accuracy_end": evals[-1]["generation_accuracy"],
            "eval_accuracy_end": evals[-1]["eval_accuracy"],
        }
    _write_json(os.path.join(args.out, "displacement.json"), summary)
    lines = [
        f"{variant:<22} chosen log-ratio {s['logratio_chosen_end']:+8.3f}"
        f"  rejected {s['logratio_rejected_end']:+8.3f}"
        f"  generation accuracy {s['generation_accuracy_start']:.3f} -> {s['generation_accuracy_end']:.3f}"
        f"  eval/accuracy {s['eval_accuracy_end']:.3f}"
        for variant, s in summary.items()
    ]
    _say(args, "\n".join(lines))
    _results_json(args, summary, lines, started, before)
    png = os.path.join(args.out, "displacement.png")
    _say(args, f"wrote {csv_path}, displacement.json" + (", displacement.png" if _plot_displacement(rows, png) else ""))
    return 0


def bandit_figure(results: list[dict]):
    """One panel per run: the policy's mean probabilities as bars, IPO's closed form as black ticks.

    Both axes are labelled; the legend sits below the panels, outside every axes, so it never covers a bar
    (a policy near 1 fills the whole panel height). None without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        ax.bar(ACTIONS, [r["policy"][a] for a in ACTIONS], color="tab:blue", label="policy (mean over seeds)")
        if r["closed_form"]:
            ax.plot(ACTIONS, [r["closed_form"][a] for a in ACTIONS], "k_", markersize=30, label="IPO closed form")
        ax.set(title=f"{r['dataset']} {r['loss'].upper()} tau={r['tau']:g}", ylim=(0, 1))
        ax.set(xlabel="action", ylabel="probability")
    handles: dict = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = list(handles)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # leave the bottom tenth for the legend
    fig.legend(
        [handles[k] for k in labels],
        labels,
        loc="lower center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
        markerscale=0.4,
    )
    return fig


def _plot_bandit(results: list[dict], path: str) -> bool:
    fig = bandit_figure(results)
    if fig is None:
        return False
    _save_figure(fig, path)
    _pyplot().close(fig)
    return True


def _bandit_handler(args) -> int:
    check_tau = float(args.tau)
    if not (check_tau > 0 and math.isfinite(check_tau)):
        raise InputError(f"--tau must be a positive finite number, got {args.tau}")
    if args.steps < 1 or args.seeds < 1:
        raise InputError("--steps and --seeds must be positive integers")
    _check_out(args, BANDIT_FILES)
    if args.json:  # checked now, not after the runs
        from dpo_ref.atomic import check_output_file
        from dpo_ref.train.rundir import check_writable_dir

        target = check_output_file(args.json, "--json")
        if target != "-":
            check_writable_dir(os.path.dirname(target), "--json")
    _hold_outputs(args)
    results = []
    configurations = [(d, loss) for d in args.datasets for loss in args.losses]
    for dataset, loss in progress(configurations, "dpo-ref experiment bandit", lambda c: f"{c[0]} {c[1]}"):
        probs = run_bandit(BANDIT_DATASETS[dataset], loss=loss, tau=args.tau, steps=args.steps, seeds=args.seeds)
        mean = probs.mean(0)
        record = {"dataset": dataset, "loss": loss, "tau": args.tau, "policy": dict(zip(ACTIONS, mean.tolist()))}
        record["closed_form"] = (
            dict(zip(ACTIONS, bandit_closed_form(BANDIT_DATASETS[dataset], args.tau).tolist()))
            if loss == "ipo"
            else None
        )
        results.append(record)
        cf = record["closed_form"]
        _say(
            args,
            f"{dataset} {loss:<3} tau={args.tau:g}  policy "
            + " ".join(f"{a}={p:.4f}" for a, p in record["policy"].items())
            + ("   closed form " + " ".join(f"{a}={p:.4f}" for a, p in cf.items()) if cf else ""),
        )
    os.makedirs(args.out, exist_ok=True)
    _write_csv(
        os.path.join(args.out, "bandit.csv"),
        [
            {
                "dataset": r["dataset"],
                "loss": r["loss"],
                "tau": r["tau"],
                "action": a,
                "policy": r["policy"][a],
                "closed_form": r["closed_form"][a] if r["closed_form"] else "",
            }  # fmt: skip
            for r in results
            for a in ACTIONS
        ],
    )
    json_path = args.json or os.path.join(args.out, "bandit.json")
    _write_json(json_path, results[0] if len(results) == 1 else results)
    written = [os.path.join(args.out, "bandit.csv"), json_path]
    png = os.path.join(args.out, "bandit.png")
    if _plot_bandit(results, png):
        written.append(png)
    _say(args, "wrote " + ", ".join(written))
    return 0


OVERWRITE_HELP = "replace the results an earlier run left in --out (without it, they are refused)"


def register(subparsers) -> None:
    """Add `dpo-ref experiment {overfit,displacement,bandit}` to the CLI."""
    p = subparsers.add_parser(
        "experiment",
        help="experiments showing DPO's and IPO's behaviour",
        description="Experiments that reproduce DPO's and IPO's published behaviour; each writes CSV, JSON and a PNG.",
    )
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True

    o = sub.add_parser(
        "overfit",
        help="one preference pair: DPO collapses pi(y_l), IPO stops at 1/(2 tau)",
        description="One preference pair, the tiny Llama, SGD: DPO drives pi(y_l) to 0, IPO stops at margin 1/(2 tau).",
    )
    o.add_argument("--out", default="runs/overfit", help="output directory")
    o.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5], help="DPO betas, one run each")
    o.add_argument("--taus", type=float, nargs="+", default=[0.05, 0.1], help="IPO taus, one run each")
    o.add_argument("--epochs", type=int, default=100, help="SGD steps on the one pair")
    o.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    o.add_argument("--max-grad-norm", type=float, default=0.3, help="gradient-norm clipping")
    o.add_argument("--seed", type=int, default=0, help="seed of the tiny model's weights")
    o.add_argument("--json", metavar="PATH", help="also write the results with their settings and machine as JSON")
    o.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    o.set_defaults(func=_overfit_handler)

    d = sub.add_parser(
        "displacement",
        help="plain DPO vs DPO + chosen NLL on the built-in task",
        description="The built-in task trained twice, plain DPO and DPO + chosen NLL: likelihood displacement.",
    )
    d.add_argument("--out", default="runs/displacement", help="output directory")
    d.add_argument("--rpo-alpha", type=float, default=None, help="NLL weight of the second run (default: train's)")
    d.add_argument("--steps", type=int, default=150, help="DPO updates per run")
    d.add_argument("--sft-steps", type=int, default=600, help="SFT warm-up updates (shared by both runs)")
    d.add_argument("--eval-every", type=int, default=25, help="evaluate every N updates")
    d.add_argument("--json", metavar="PATH", help="also write the results with their settings and machine as JSON")
    d.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    d.set_defaults(func=_displacement_handler)

    b = sub.add_parser(
        "bandit",
        help="Azar et al. 2023 section 5.4: three-action bandit, DPO vs IPO",
        description="The IPO paper's three-action bandit (Azar et al. 2023, section 5.4): DPO, IPO, closed form.",
    )
    b.add_argument("--out", default="runs/bandit", help="output directory")
    b.add_argument(
        "--datasets", nargs="+", choices=sorted(BANDIT_DATASETS), default=["D1", "D3"], help="preference datasets"
    )
    b.add_argument("--losses", nargs="+", choices=("dpo", "ipo"), default=["dpo", "ipo"], help="losses to run")
    b.add_argument("--tau", type=float, default=0.1, help="IPO tau (and DPO beta)")
    b.add_argument("--steps", type=int, default=18_000, help="Adam steps per seed")
    b.add_argument("--seeds", type=int, default=10, help="seeds averaged")
    b.add_argument("--json", metavar="PATH", help="write the JSON result here (default OUT/bandit.json)")
    b.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    b.set_defaults(func=_bandit_handler)
