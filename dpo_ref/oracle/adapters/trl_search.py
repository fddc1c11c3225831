"""TRL's DPOTrainer searched, not fixed: Hypothesis draws the rows, TRL tokenises and collates them.

Each example is a batch of 1-3 preference rows drawn from the tiny vocabulary (`tiny.WORDS`): empty
prompts, one-word completions, completions of very different lengths in one batch, `max_length` cuts
(both truncation modes) and conversational rows rendered with a local chat template. TRL prepares them
with its own `DPOTrainer._prepare_dataset` (EOS appended, chat template applied, prompt/completion split,
fully truncated rows dropped) and collates them with its own `DataCollatorForPreference`. On that batch
every TRL 1.16 loss type (and a `loss_weights` combination) computed by `DPOTrainer.compute_loss` is
compared with `dpo_ref.family` on log-probs dpo_ref computes itself from the same model and tokens
(`sequence_logps`), the length-normalised losses on the counts of *scored* tokens (those with a log-prob:
a completion token at position 0 has none).

Tolerance: relative 1e-5 (TRL's fused LM head computes log-probs in float32 whatever the model dtype).
When a loss type disagrees, Hypothesis shrinks the batch to the smallest that still shows it, and the
value TRL gives is matched against the family formula on the unshifted completion-mask counts
(`count-plus-one`), the off-by-one this search exists to find.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from dpo_ref.family import LOSS_FAMILY, TRL_LOSS_TYPES
from dpo_ref.logps import sequence_logps
from dpo_ref.oracle.adapters import tiny
from dpo_ref.oracle.adapters.trl_trainer import build
from dpo_ref.oracle.report import FAILED, PASSED, CheckResult

RTOL = 1e-5
SEARCH_EXAMPLES = 8  # Hypothesis batches per loss type: `verify trl` and `matrix` search the same ones (derandomised)
COEFFICIENTS = {"beta": 0.5, "tau": 0.5, "label_smoothing": 0.1, "delta": 0.0}
TRL_EXTRA = {"exo_pair": {"label_smoothing": 1e-3}, "discopop": {"tau": 0.05}}
DISCOPOP_TAU = 0.05
COMBINATION = (("sigmoid", 1.0), ("sft", 0.5), ("ipo", 0.25))  # a loss_weights combination (RPO-like + IPO)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


@dataclass(frozen=True)
class Draw:
    """One searched batch: rows of (prompt, chosen, rejected) word lists, and how TRL is configured."""

    rows: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...]
    conversational: bool = False
    max_length: int | None = None
    truncation_mode: str = "keep_start"

    def dataset(self) -> dict:
        """The rows as a TRL preference dataset (standard or conversational format)."""
        prompts = [" ".join(p) for p, _, _ in self.rows]
        chosen = [" ".join(c) for _, c, _ in self.rows]
        rejected = [" ".join(r) for _, _, r in self.rows]
        if self.conversational:
            user = [[{"role": "user", "content": p}] for p in prompts]
            return {
                "prompt": user,
                "chosen": [[{"role": "assistant", "content": c}] for c in chosen],
                "rejected": [[{"role": "assistant", "content": r}] for r in rejected],
            }
        return {"prompt": prompts, "chosen": [" " + c for c in chosen], "rejected": [" " + r for r in rejected]}

    def describe(self) -> str:
        rows = "; ".join(
            f"prompt {' '.join(p)!r}, chosen {' '.join(c)!r}, rejected {' '.join(r)!r}" for p, c, r in self.rows
        )
        how = "conversational" if self.conversational else "standard"
        cut = f", max_length={self.max_length} ({self.truncation_mode})" if self.max_length else ""
        return f"{how} rows [{rows}]{cut}"


def _words(min_size: int, max_size: int) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(tiny.WORDS), min_size=min_size, max_size=max_size).map(tuple)


def draws() -> st.SearchStrategy[Draw]:
    """Batches of 1-3 rows: prompts of 0-4 words (0: the empty prompt), completions of 1-8 words."""
    row = st.tuples(_words(0, 4), _words(1, 8), _words(1, 8))
    return st.builds(
        Draw,
        rows=st.lists(row, min_size=1, max_size=3).map(tuple),
        conversational=st.booleans(),
        max_length=st.one_of(st.none(), st.integers(3, 10)),
        truncation_mode=st.sampled_from(["keep_start", "keep_end"]),
    )


@contextlib.contextmanager
def _quiet():
    import datasets

    was = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        if was:
            datasets.utils.logging.enable_progress_bar()


def build_search(beta: float = 0.5):
    """The TRL adapter's trainer (tiny model, float64) with a local chat template on its tokenizer."""
    trainer, _ = build("dpo", beta=beta, label_smoothing=COEFFICIENTS["label_smoothing"])
    trainer.processing_class.chat_template = CHAT_TEMPLATE
    trainer.args.discopop_tau = DISCOPOP_TAU
    return trainer


def collate(trainer, draw: Draw) -> dict | None:
    """TRL's own preparation and collation of `draw`; None when TRL drops every row (fully truncated)."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    args = trainer.args
    saved = args.max_length, args.truncation_mode
    args.max_length, args.truncation_mode = draw.max_length, draw.truncation_mode
    try:
        with _quiet():
            ds = trainer._prepare_dataset(Dataset.from_dict(draw.dataset()), trainer.processing_class, args, "search")
    finally:
        args.max_length, args.truncation_mode = saved
    if len(ds) == 0:
        return None
    collator = DataCollatorForPreference(
        pad_token_id=trainer.processing_class.pad_token_id,
        max_length=draw.max_length,
        truncation_mode=draw.truncation_mode,
    )
    return collator([ds[i] for i in range(len(ds))])


def trl_value(trainer, batch: dict, loss_types: tuple[tuple[str, float], ...]) -> float:
    """`DPOTrainer.compute_loss` on `batch` with `loss_types` ((type, weight), ...) set on the trainer."""
    trainer.loss_types = [t for t, _ in loss_types]
    trainer.loss_weights = [w for _, w in loss_types]
    trainer.beta = COEFFICIENTS["beta"]
    trainer.label_smoothing = COEFFICIENTS["label_smoothing"]
    if loss_types == (("exo_pair", 1.0),):
        trainer.label_smoothing = TRL_EXTRA["exo_pair"]["label_smoothing"]
    with _quiet(), torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def scored_inputs(trainer, batch: dict) -> tuple[torch.Tensor, ...]:
    """(pc, pr, rc, rr, nc, nr, mask_nc, mask_nr): dpo_ref's log-probs on TRL's tokens, the scored-token counts,
    and the completion-mask counts TRL's ipo / sigmoid_norm divide by."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # (2B, T)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        policy = sequence_logps(trainer.model(**kw).logits, labels)  # (2B,)
        reference = sequence_logps(trainer.ref_model(**kw).logits, labels)  # (2B,)
    scored = (labels[:, 1:] != -100).sum(dim=1)  # (2B,) position 0 never has a log-prob
    masked = batch["completion_mask"].sum(dim=1)  # (2B,) what TRL's ipo / sigmoid_norm count
    return (*policy.chunk(2), *reference.chunk(2), *scored.chunk(2), *masked.chunk(2))


def family_value(name: str, inputs: tuple[torch.Tensor, ...], counts: str = "scored") -> float:
    """The batch mean of dpo_ref.family's TRL loss type `name` (counts: "scored" or "mask")."""
    variant = next(v for v in LOSS_FAMILY.values() if v.trl == name)
    coefficients = {k: COEFFICIENTS[k] for k in variant.coefficients} | TRL_EXTRA.get(name, {})
    if name == "ipo":
        coefficients = {"tau": COEFFICIENTS["beta"]}  # TRL's beta stands for tau
    pc, pr, rc, rr, nc, nr, mc, mr = inputs
    lengths = (nc, nr) if counts == "scored" else (mc, mr)
    return float(variant.bind(**coefficients)(pc, pr, rc, rr, *lengths).mean())


def compare(trainer, draw: Draw, loss_types: tuple[tuple[str, float], ...]) -> dict | None:
    """TRL's and dpo_ref's values on `draw` for one loss type or combination; None if TRL drops every row."""
    batch = collate(trainer, draw)
    if batch is None:
        return None
    inputs = scored_inputs(trainer, batch)
    ours = sum(w * family_value(t, inputs) for t, w in loss_types)
    theirs = trl_value(trainer, batch, loss_types)
    return {
        "trl": theirs,
        "dpo_ref": ours,
        "agree": abs(theirs - ours) <= RTOL * (1.0 + abs(ours)),
        "scored_counts": [int(x) for x in torch.cat(inputs[4:6])],
        "trl_counts": [int(x) for x in torch.cat(inputs[6:8])],
        "trl_equals_mask_counts": abs(theirs - sum(w * family_value(t, inputs, _counts(t)) for t, w in loss_types))
        <= RTOL * (1.0 + abs(theirs)),
    }


def _counts(loss_type: str) -> str:
    """Which counts TRL 1.16 divides by: the completion mask for ipo and sigmoid_norm (dpo_trainer.py:1399-1400,
    1505-1507), the shifted (scored) mask for sft (1496-1498)."""
    return "mask" if loss_type in ("ipo", "sigmoid_norm") else "scored"


def _name(loss_types) -> str:
    if len(loss_types) == 1:
        return loss_types[0][0]
    return "loss_weights:" + "+".join(f"{w:g}*{t}" for t, w in loss_types)


def search(trainer, loss_types: tuple[tuple[str, float], ...], max_examples: int) -> CheckResult:
    """One check: Hypothesis searches draws on which TRL's `loss_types` disagrees with dpo_ref; the shrunk one
    is reported with a reproduction."""
    from hypothesis import given

    from dpo_ref.oracle.runner import hypothesis_settings

    name = _name(loss_types)
    count, failing = [0], {}

    @hypothesis_settings(max_examples)
    @given(draw=draws())
    def prop(draw):
        out = compare(trainer, draw, loss_types)
        if out is None:
            return
        count[0] += 1
        if not out["agree"]:
            failing["draw"], failing["out"] = draw, out
            raise AssertionError(name)

    description = f"DPOTrainer.compute_loss with loss_type {name} equals dpo_ref.family on searched rows"
    try:
        prop()
    except AssertionError:
        draw, out = failing["draw"], failing["out"]
        diff = abs(out["trl"] - out["dpo_ref"])
        message = (
            f"on {draw.describe()}: TRL {out['trl']!r}, dpo_ref {out['dpo_ref']!r} (|diff| {diff:.3g}, relative "
            f"{diff / max(abs(out['dpo_ref']), 1e-300):.3g})"
        )
        if out["trl_equals_mask_counts"] and out["trl_counts"] != out["scored_counts"]:
            message += (
                f"; count-plus-one: TRL divides by the completion-mask counts {out['trl_counts']} where "
                f"{out['scored_counts']} tokens are scored (a completion token at position 0 has no log-prob)"
            )
        return CheckResult(f"search:{name}", FAILED, description, message, _repro(draw, loss_types), count[0])
    return CheckResult(f"search:{name}", PASSED, description, examples=count[0])


def _repro(draw: Draw, loss_types) -> str:
    return "\n".join(
        [
            "from dpo_ref.oracle.adapters.trl_search import Draw, build_search, compare",
            "trainer = build_search()",
            f"draw = {draw!r}",
            f"out = compare(trainer, draw, {tuple(loss_types)!r})",
            "print(out)  # TRL vs dpo_ref on TRL's own tokens; counts: scored vs TRL's",
            "assert out['agree'], out",
        ]
    )


def run_search(max_examples: int = 8, loss_types: tuple[str, ...] = TRL_LOSS_TYPES, combination: bool = True):
    """One `search` check per TRL loss type (and the `loss_weights` combination), on one trainer."""
    trainer = build_search()
    checks = [search(trainer, ((t, 1.0),), max_examples) for t in loss_types]
    if combination:
        checks.append(search(trainer, COMBINATION, max_examples))
    return checks
