"""THE corpus: every implementation the suite's meta-tests run the oracle and the checks on, and one index of them.

Modules, per level and kind: loss_correct.py, loss_broken.py (DPO / cDPO / IPO at the loss level),
logps_correct.py, logps_broken.py, logps_other_signatures.py (sequence log-probs), family_correct.py,
family_broken.py (one of each per family variant of the registry). Every implementation is written as
third-party code would be (none imports dpo_ref) and has one `Case` in `CASES` below: its target
(`file.py:function`, relative to the repository root), the level and variant it claims, whether it conforms,
and for a broken one what must catch it: the diagnosis the oracle must name and/or the checks that must fail.

Three groups, told apart by `Case.group`:
- "outside": written by a separate session in its own styles, labelled before the oracle's diagnoses existed;
  the labels are proved right without the oracle by tests/meta/test_corpus_selfcheck.py (closed forms and a loop
  reference written in that test); tests/oracle/test_corpus.py runs the oracle on them. A broken one names
  the diagnosis (a key of `DIAGNOSES`), or None when its mistake has no named alternative (the oracle must
  still reject it).
- "suite": the suite's own set, one bug per check of the catalogue: a broken one lists the checks that must
  fail (`fails`; `strict_fails` for the advisory checks, which fail only under strict=True);
  tests/oracle/test_oracle.py runs them, tests/checks/test_properties_bite.py keeps the set covering every check.
- "family": one correct and one broken implementation per family variant; the diagnosis is the oracle's
  (a registry variant or a known mistake). tests/oracle/test_family.py runs them and refuses a registry
  variant without both.
- "family-heldout": broken family implementations held out of the diagnoses' tuning (family_heldout.py),
  labelled before the family diagnoses were tuned on family_broken.py; tests/oracle/test_family_diagnoses.py
  measures the share right on each set.
- "family-extra": broken family implementations beyond the one per variant, each for a coverage hole of issue 21
  (a batch-coupled loss right only on small batches, wrong rewards, ...): the checks it must fail (`fails`);
  tests/oracle/test_family_holes.py runs them.

Diagnosis names of the outside group (loss level): plain-dpo, robust-dpo, cdpo-weights-exchanged,
ipo-target-1/tau, chosen-rejected-swapped, beta-ignored, beta-squared, no-reference, batch-sum, ipo-not-dpo,
dpo-not-ipo, reference-sign. Log-prob level: no-shift, mean-not-sum, sum-not-mean, prompt-counted,
padding-counted, last-token-dropped, float16-scoring, first-label-wrapped. Their formulas are in `DIAGNOSES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

DIAGNOSES = {
    # loss level; h = (pc - rc) - (pr - rr), L_v(h; beta, eps) the claimed variant's per-example loss
    "plain-dpo": "cdpo claimed; computes DPO softplus(-beta h), ignoring eps",
    "robust-dpo": "cdpo claimed; computes rDPO ((1 - eps) softplus(-beta h) - eps softplus(beta h)) / (1 - 2 eps)",
    "cdpo-weights-exchanged": "cdpo claimed; computes eps softplus(-beta h) + (1 - eps) softplus(beta h)",
    "ipo-target-1/tau": "ipo claimed; computes (h - 1/tau)^2",
    "chosen-rejected-swapped": "computes the claimed variant at -h",
    "beta-ignored": "computes the claimed variant with beta = 1",
    "beta-squared": "computes the claimed variant with beta^2 for beta",
    "no-reference": "computes the claimed variant at h = pc - pr",
    "batch-sum": "per-example or mean claimed; returns the sum over the batch",
    "ipo-not-dpo": "dpo claimed; computes IPO (h - 1/(2 beta))^2",
    "dpo-not-ipo": "ipo claimed; computes DPO softplus(-tau h)",
    "reference-sign": "computes the claimed variant at h = (pc - pr) + (rc - rr)",
    # log-prob level; right-padded rows, an unscored position scored with token 0
    "no-shift": "scores labels[t] with the logits at t",
    "mean-not-sum": "sum claimed; returns the mean over the scored tokens",
    "sum-not-mean": "mean (ipo-mean) claimed; returns the sum over the scored tokens",
    "prompt-counted": "also scores the positions before the response (the prompt), as token 0",
    "padding-counted": "also scores the positions after the response (the right padding), as token 0",
    "last-token-dropped": "never scores the last position (labels[:, T - 1])",
    "float16-scoring": "log_softmax done in float16 or bfloat16",
    "first-label-wrapped": "also scores a row's first label (set when it has no prompt) with the row's last logits",
}


@dataclass(frozen=True)
class Case:
    target: str  # "tests/corpus/loss_correct.py:softplus_default"
    level: str  # "loss" | "logps"
    variant: str  # the variant it claims: "dpo" | "cdpo" | "ipo" | "ipo-mean" | a family variant ("hinge", ...)
    conforms: bool
    diagnosis: str | None = None  # broken: the diagnosis the oracle must name (None: none required)
    options: dict = field(default_factory=dict)  # verify() options, e.g. {"reduction": "sum"}, {"adapter": ...}
    style: str = ""  # one line: the style (correct) or the bug (broken)
    group: str = "outside"  # "outside" | "suite" | "family" (see the module docstring)
    fails: tuple[str, ...] = ()  # broken: checks that must fail
    strict_fails: tuple[str, ...] = ()  # broken: advisory checks that are advice by default and fail under strict

    @property
    def name(self) -> str:
        return self.target.rsplit(":", 1)[1]

    @property
    def module(self) -> str:
        """The module's stem: "loss_correct"."""
        return self.target.rsplit(":", 1)[0].rsplit("/", 1)[1][: -len(".py")]

    @property
    def average(self) -> bool:
        """Log-prob level: whether the claimed convention is the mean over the scored tokens."""
        return self.variant == "ipo-mean"


DIR = "tests/corpus/"


def target(module: str, name: str) -> str:
    """The target string of `name` in the corpus module `module`: "tests/corpus/loss_broken.py:wrong_sign"."""
    return f"{DIR}{module}.py:{name}"


def load(case: Case):
    """The function a case names, imported from its module (`tests.corpus.<module>`)."""
    return getattr(importlib.import_module(f"tests.corpus.{case.module}"), case.name)


def select(group: str | None = None, level: str | None = None, conforms: bool | None = None) -> list[Case]:
    """The cases of one group / level / verdict (None: any)."""
    return [
        c
        for c in CASES
        if (group is None or c.group == group)
        and (level is None or c.level == level)
        and (conforms is None or c.conforms == conforms)
    ]


def find(module: str, name: str) -> Case:
    """The case of `name` in the corpus module `module`."""
    wanted = target(module, name)
    return next(c for c in CASES if c.target == wanted)


def family(conforms: bool) -> dict[str, Case]:
    """The family group's cases of one verdict by variant (one each; refused if a variant has two)."""
    cases = select("family", conforms=conforms)
    by_variant = {c.variant: c for c in cases}
    assert len(by_variant) == len(cases), "two family cases for one variant and verdict"
    return by_variant


def _c(module: str, name: str, level: str, variant: str, style: str, **options) -> Case:
    return Case(f"{DIR}{module}.py:{name}", level, variant, True, None, dict(options), style)


def _b(module: str, name: str, level: str, variant: str, diagnosis: str | None, style: str, **options) -> Case:
    return Case(f"{DIR}{module}.py:{name}", level, variant, False, diagnosis, dict(options), style)


def _lc(name, variant, style, **o):
    return _c("loss_correct", name, "loss", variant, style, **o)


def _lb(name, variant, diagnosis, style, **o):
    return _b("loss_broken", name, "loss", variant, diagnosis, style, **o)


def _pc(name, variant, style, **o):
    return _c("logps_correct", name, "logps", variant, style, **o)


def _pb(name, variant, diagnosis, style, **o):
    return _b("logps_broken", name, "logps", variant, diagnosis, style, **o)


def _oc(name, variant, adapter, style):
    return _c("logps_other_signatures", name, "logps", variant, style, adapter=adapter)


def _slc(name, variant, style, **options):
    return Case(target("loss_correct", name), "loss", variant, True, None, options, style, "suite")


def _slb(name, variant, fails, style, strict_fails=()):
    return Case(target("loss_broken", name), "loss", variant, False, None, {}, style, "suite", fails, strict_fails)


def _spc(name, variant, style):
    return Case(target("logps_correct", name), "logps", variant, True, None, {}, style, "suite")


def _spb(name, variant, fails, style, strict_fails=()):
    return Case(target("logps_broken", name), "logps", variant, False, None, {}, style, "suite", fails, strict_fails)


def _fc(name, variant, style):
    return Case(target("family_correct", name), "loss", variant, True, None, {}, style, "family")


def _fb(name, variant, diagnosis, style):
    return Case(target("family_broken", name), "loss", variant, False, diagnosis, {}, style, "family")


CASES: list[Case] = [
    # ------------------------------------------------------------------ loss level, correct
    _lc("logsigmoid_standard", "dpo", "-logsigmoid(beta * (pi_logratios - ref_logratios)), per example"),
    _lc("softplus_default", "dpo", "F.softplus with its default threshold=20 (2e-9 approximation above 20)"),
    _lc("softplus_own_beta", "dpo", "beta * F.softplus(-h, beta=beta): softplus's own beta argument, threshold 20"),
    _lc("bce_with_logits", "dpo", "binary_cross_entropy_with_logits(beta h, ones)"),
    _lc("two_class_cross_entropy", "dpo", "cross_entropy over stacked [chosen, rejected] rewards, class 0"),
    _lc("logaddexp_form", "dpo", "logaddexp(0, -beta h)"),
    _lc("einsum_margin", "dpo", "margin as einsum of stacked log-probs with signs (+1, -1, -1, +1)"),
    _lc("float32_internal", "dpo", ".float() on every input: float32 intermediates and result for float64 inputs"),
    _lc("batch_mean", "dpo", "returns the batch mean"),
    _lc("declared_sum", "dpo", "returns the batch sum, declared with reduction='sum'", reduction="sum"),
    _lc("tuple_with_rewards", "dpo", "plain tuple (mean loss, chosen_rewards, rejected_rewards), rewards detached"),
    _lc("dict_return", "dpo", 'dict with "losses" (per example) and detached rewards'),
    _lc("reordered_parameters", "dpo", "standard names in the order (rc, rr, pc, pr): must be called by name"),
    _lc("module_named_tuple", "dpo", "nn.LogSigmoid module, **kwargs, NamedTuple(losses, rewards)"),
    _lc("cdpo_softplus", "cdpo", "(1 - eps) softplus(-z) + eps softplus(z)"),
    _lc("cdpo_bce_soft_targets", "cdpo", "binary_cross_entropy_with_logits against soft targets 1 - eps"),
    _lc("cdpo_cross_entropy_label_smoothing", "cdpo", "two-class cross_entropy with label_smoothing = 2 eps"),
    _lc("cdpo_float32_mean", "cdpo", "float32 intermediates, batch mean, beta and eps from **kwargs"),
    _lc("ipo_squared_error", "ipo", "(h - 1/(2*beta))**2, beta standing for tau"),
    _lc("ipo_mse_loss", "ipo", "F.mse_loss(h, full(1/(2 tau)), reduction='none') with a tau keyword"),
    _lc("ipo_scaled", "ipo", "((beta h - 0.5)**2 / beta**2).mean()"),
    _lc("ipo_stack_pow", "ipo", "torch.diff over stacked [rejected, chosen] log-ratios, (1/(2 tau) - h).pow(2)"),
    # ------------------------------------------------------------------ loss level, broken
    _lb("cdpo_ignores_eps", "cdpo", "plain-dpo", "accepts label_smoothing and never uses it"),
    _lb("cdpo_hard_bce_targets", "cdpo", "plain-dpo", "BCE-with-logits against hard targets 1 (smoothing forgotten)"),
    _lb("cdpo_is_robust", "cdpo", "robust-dpo", "TRL-style robust loss: rDPO with 1/(1 - 2 eps)"),
    _lb("cdpo_is_robust_softplus", "cdpo", "robust-dpo", "rDPO in softplus form"),
    _lb("cdpo_weights_exchanged", "cdpo", "cdpo-weights-exchanged", "-eps logsigmoid(z) - (1 - eps) logsigmoid(-z)"),
    _lb("cdpo_bce_target_eps", "cdpo", "cdpo-weights-exchanged", "BCE-with-logits against target eps, not 1 - eps"),
    _lb("ipo_target_one_over_tau", "ipo", "ipo-target-1/tau", "(h - 1/beta)**2: the 2 of 1/(2 tau) dropped"),
    _lb("ipo_target_one_over_tau_scaled", "ipo", "ipo-target-1/tau", "(tau h - 1)**2 / tau**2, batch mean"),
    _lb("ipo_swapped", "ipo", "chosen-rejected-swapped", "IPO on the rejected-minus-chosen margin"),
    _lb("swapped_chosen_rejected", "dpo", "chosen-rejected-swapped", "pi_logratios = rejected - chosen"),
    _lb("swapped_bce_target_zero", "dpo", "chosen-rejected-swapped", "BCE-with-logits with target 0"),
    _lb("beta_ignored", "dpo", "beta-ignored", "softplus(-h): beta accepted and unused"),
    _lb("beta_ignored_shadowed", "cdpo", "beta-ignored", "a leftover local beta = 1.0 shadows the argument (cDPO)"),
    _lb("beta_squared", "dpo", "beta-squared", "beta on the rewards and again on their difference"),
    _lb("beta_squared_cdpo", "cdpo", "beta-squared", "cDPO on beta * (beta-scaled rewards difference)"),
    _lb("no_reference", "dpo", "no-reference", "reference log-probs accepted and unused"),
    _lb("reference_free_default", "dpo", "no-reference", "reference_free=True default left on"),
    _lb("batch_sum", "dpo", "batch-sum", ".sum() over the batch where the mean was meant"),
    _lb("batch_sum_in_dict", "dpo", "batch-sum", 'dict whose "loss" is the batch sum'),
    _lb("ipo_default_loss_type", "dpo", "ipo-not-dpo", 'loss_type switch defaulting to "ipo", called for DPO'),
    _lb("dpo_default_loss_type", "ipo", "dpo-not-ipo", 'loss_type switch defaulting to "sigmoid", called for IPO'),
    _lb("reference_sign", "dpo", "reference-sign", "pi_logratios + ref_logratios"),
    _lb("reference_sign_product", "dpo", "reference-sign", "log(pi * pi_ref) per response, batch mean"),
    _lb("ipo_precedence", "ipo", None, "1/2*tau parses as tau/2: target tau/2"),
    _lb("half_precision_margin", "dpo", None, "log-probs cast to float16 before the margin"),
    _lb("beta_floored", "dpo", None, "beta = max(beta, 0.01): wrong for beta < 0.01"),
    _lb("nan_on_ties", "dpo", None, "hand-made softplus with sign z/|z|: NaN when h = 0"),
    _lb("inplace_inputs", "dpo", None, "pc -= rc in place: the caller's log-probs overwritten (values right)"),
    _lb("detached_policy", "dpo", None, ".detach() on the policy log-probs: no gradient (values right)"),
    _lb("batch_centred_margin", "dpo", None, "subtracts the batch-mean margin: each loss depends on the batch"),
    _lb("naive_log_sigmoid", "dpo", None, "log(sigmoid(z)) underflows: inf for z < -745 (float64)"),
    # advice by default (the loss and its gradients are right); rejected when robustness is demanded
    _lb("rewards_not_detached", "dpo", None, "returned rewards not detached (rejected under strict)", strict=True),
    _lb("rewards_without_beta", "dpo", None, "returned rewards are the raw log-ratios, without beta"),
    # ------------------------------------------------------------------ log-prob level, correct
    _pc("gather_log_softmax", "dpo", "slice shift, gather(log_softmax), torch.where masking"),
    _pc("logsumexp_gather", "dpo", "logits.gather - logsumexp, masked_fill"),
    _pc("negative_cross_entropy", "dpo", "-F.cross_entropy(reduction='none', ignore_index=-100) on (B, V, T-1)"),
    _pc("mask_multiply_original", "dpo", "original DPO repo: -100 -> 0 on a copy, (per_token * mask).sum(-1)"),
    _pc("float32_scoring", "dpo", "logits.float(): float32 scoring for any input dtype"),
    _pc("chunked_float32", "dpo", "float32 log_softmax in chunks over the batch, take_along_dim"),
    _pc("one_hot_dot", "dpo", "one-hot dot product over the vocabulary (einsum)"),
    _pc("index_add_scored", "dpo", "scores only the scored positions (boolean index), index_add into rows"),
    _pc("averaged_eps_guard", "ipo-mean", "mean with the guard sum / (n + 1e-6) (relative change 1e-6/n)"),
    _pc("averaged_masked_fill", "ipo-mean", "masked_fill, sum / n"),
    _pc("averaged_cross_entropy_float32", "ipo-mean", "float32 cross_entropy, -nll.sum / n"),
    _oc("loss_mask_slice", "dpo", "loss_mask", "(logits, labels, loss_mask): slice shift, where-masking"),
    _oc("loss_mask_roll", "dpo", "loss_mask", "(logits, labels, loss_mask): torch.roll shift, the wrap masked"),
    _b(
        "logps_other_signatures",
        "loss_mask_roll_unmasked_wrap",
        "logps",
        "dpo",
        "first-label-wrapped",
        "(logits, labels, loss_mask): torch.roll shift, the wrapped last position left scored",
        adapter="loss_mask",
    ),
    _oc("input_ids_response_mask", "dpo", "input_ids_mask", "(logits, input_ids, response_mask): mask multiply"),
    _oc("concatenated_halves", "dpo", "concatenated", "(2B rows chosen then rejected) -> (chosen, rejected)"),
    _oc("hidden_states_full", "dpo", "hidden_states", "hidden @ W.T then -cross_entropy"),
    _oc("hidden_states_chunked_float32", "dpo", "hidden_states", "LM head in float32 over chunks of positions"),
    # ------------------------------------------------------------------ log-prob level, broken
    _pb("no_shift", "dpo", "no-shift", "labels[t] scored with the logits at t"),
    _pb("no_shift_tutorial", "dpo", "no-shift", "tutorial get_probs: gather(log_softmax(logits), labels), no shift"),
    _pb("mean_not_sum", "dpo", "mean-not-sum", "divides by the number of scored tokens"),
    _pb("mean_not_sum_cross_entropy", "dpo", "mean-not-sum", "minus a per-row mean cross-entropy"),
    _pb("sum_not_mean", "ipo-mean", "sum-not-mean", "returns the sum where the mean is claimed"),
    _pb("sum_not_mean_flag", "ipo-mean", "sum-not-mean", "average_log_prob=False default kept for ipo-mean"),
    _pb("prompt_counted", "dpo", "prompt-counted", "mask = positions up to the last scored one (attention-like)"),
    _pb("padding_counted", "dpo", "padding-counted", "mask = positions from the first scored one on"),
    _pb("last_token_dropped", "dpo", "last-token-dropped", "slices logits[:, :-2], labels[:, 1:-1]"),
    _pb("last_token_dropped_loop", "dpo", "last-token-dropped", "loop over range(1, T - 1)"),
    _pb("float16_scoring", "dpo", "float16-scoring", "logits.half().log_softmax"),
    _pb("bfloat16_scoring", "dpo", "float16-scoring", "cross_entropy on bfloat16 logits"),
    _pb("shift_wrong_way", "dpo", None, "labels[t] scored with the logits at t + 1"),
    _pb("divides_by_full_length", "ipo-mean", None, "divides by T - 1 instead of the number of scored tokens"),
    _pb("unmasked_zero_labels", "dpo", None, "-100 replaced by 0 and never masked"),
    _pb("logits_modified_in_place", "dpo", None, "logits -= logsumexp in place (values right, input destroyed)"),
    # ------------------------------------------------------------------ the suite's set, loss level, correct
    _slc("per_example", "dpo", "per-example losses, logsigmoid form, long argument names"),
    _slc("scalar_mean", "dpo", "the batch mean, as most trainers return it"),
    _slc("scalar_sum", "dpo", "the batch sum, keyword-only beta, declared reduction='sum'", reduction="sum"),
    _slc("named_tuple_with_rewards", "dpo", "NamedTuple (losses, chosen_rewards, rejected_rewards)"),
    _slc("softplus_form", "dpo", "softplus(-beta h), beta from **kwargs"),
    _slc("float32_promoted", "dpo", "at least float32 via promote_types and explicit casts"),
    _slc("cdpo", "cdpo", "cDPO, per example, logsigmoid form"),
    _slc("ipo", "ipo", "(h - 1/(2 beta))**2, beta standing for tau"),
    _slc("ipo_tau_mean", "ipo", "a tau keyword, torch.square, batch mean"),
    # ------------------------------------------------------------------ the suite's set, loss level, broken
    _slb("wrong_now_and_then", "dpo", ("repeatable",), "1 % off on one call in 40"),
    _slb("wrong_sign", "dpo", ("values", "gradient_signs", "swap", "monotone"), "prefers the rejected response"),
    _slb("reference_unused", "dpo", ("values", "init"), "forgets the reference model"),
    _slb("beta_outside", "dpo", ("values", "gradients"), "beta multiplies the loss, not the margin"),
    _slb("beta_divides", "dpo", ("values",), "beta divides the margin (a temperature)"),
    _slb("beta_unused", "dpo", ("values", "gradients"), "accepts beta and never uses it"),
    _slb("reference_added", "dpo", ("values",), "adds the reference log-ratio"),
    _slb("log_of_sigmoid", "dpo", ("finite",), "log(sigmoid(x)): -inf once sigmoid underflows"),
    _slb("clamped_logits", "dpo", ("values",), "beta h clamped to [-50, 50]"),
    _slb("margin_in_float16", "dpo", ("values_float32",), "the margin computed in float16"),
    _slb("detached_policy_plus_zero", "dpo", ("gradients",), "policy detached (+ 0 * pc): right values, no training"),
    _slb("wrong_custom_backward", "dpo", ("gradients",), "right forward, custom backward without beta"),
    _slb("inplace_mutation", "dpo", ("inputs_unmodified",), "writes the log-ratios into its inputs"),
    _slb("batch_centered", "dpo", ("batch_independence",), "subtracts the batch-mean margin"),
    _slb("batch_sorted", "dpo", ("permutation",), "per-example losses returned sorted"),
    _slb("only_chosen_reward", "dpo", ("z_cancellation",), "drops the rejected reward"),
    _slb("absolute_margin", "dpo", ("swap", "monotone"), "uses |h|"),
    _slb("divides_by_fixed_batch", "dpo", ("reduction",), "sum / 8 instead of the mean"),
    _slb("cdpo_eps_swapped", "cdpo", ("values", "optimum"), "eps and 1 - eps exchanged"),
    _slb("ipo_target_inverse_tau", "ipo", ("values", "optimum"), "target margin 1/tau, not 1/(2 tau)"),
    _slb("ipo_tau_as_beta", "ipo", ("values", "gradients"), "(tau h - 1/2)^2: tau^2 times the loss"),
    _slb("ipo_absolute", "ipo", ("gradients",), "absolute instead of squared error"),
    _slb("chunked_off_by_chunk", "dpo", ("large_batch",), "chunks of 64, each chunk's reference from the start"),
    _slb("raises_always", "dpo", ("call",), "cannot be called"),
    _slb("wrong_shape", "dpo", ("call",), "returns (B, 1)"),
    _slb("raw_log_ratios_as_rewards", "dpo", ("rewards",), "returned rewards without beta"),
    _slb("rewards_with_graph", "dpo", (), "rewards keep the graph", strict_fails=("rewards_detached",)),
    # ------------------------------------------------------------------ the suite's set, log-prob level, correct
    _spc("shift_gather_where", "dpo", "shift, log_softmax, gather, torch.where masking"),
    _spc("cross_entropy_based", "dpo", "minus the unreduced cross-entropy, summed per row"),
    _spc("per_row_loop", "dpo", "a loop over rows and positions"),
    _spc("averaged", "ipo-mean", "length-averaged (TRL's IPO convention)"),
    _spc("mask_by_multiplying", "dpo", "(per_token * mask).sum(-1): advice only (0 * -inf)"),
    # ------------------------------------------------------------------ the suite's set, log-prob level, broken
    _spb("vocab_chunks_first_only", "dpo", ("logps_large_shapes",), "vocabulary chunks, normalised over the first"),
    _spb("wrong_now_and_then", "dpo", ("logps_repeatable",), "0.01 off on one call in 40"),
    _spb("unshifted", "dpo", ("logps_values",), "label t scored with the logits at t"),
    _spb("shifted_wrong_way", "dpo", ("logps_values",), "label t scored with the logits at t + 1"),
    _spb(
        "no_mask",
        "dpo",
        ("logps_values", "logps_unscored_ignored"),
        "-100 scored as token 0",
        strict_fails=("logps_neg_inf_unscored",),
    ),
    _spb("mean_over_scored", "dpo", ("logps_values",), "the mean where the sum is expected"),
    _spb("drops_last_position", "dpo", ("logps_last_position",), "never scores the last position"),
    _spb("naive_softmax", "dpo", ("logps_values_float32",), "log(exp(z) / sum exp(z)) overflows"),
    _spb("inplace_labels", "dpo", ("logps_inputs_unmodified",), "-100 replaced by 0 in the caller's labels"),
    _spb("detached_logits", "dpo", ("logps_gradients",), "computed under no_grad"),
    _spb("assumes_left_padding", "dpo", ("logps_padding",), "scores the last n positions of each row"),
    _spb("divided_by_all_tokens", "dpo", ("logps_values",), "a mean over all T - 1 positions"),
    _spb("softmax_over_positions", "dpo", ("logps_values", "logps_gradients"), "normalises over the sequence"),
    # ------------------------------------------------------------------ the family, correct
    _fc("hinge_clamp_mean", "hinge", "clamp(1 - beta h, min=0), batch mean"),
    _fc(
        "ipo_norm_trl_style",
        "ipo-norm",
        "TRL style: beta standing for tau, log-ratios divided by the lengths, batch mean",
    ),
    _fc("exo_two_class_kl", "exo_pair", "KL of a two-class log_softmax against (1 - eps, eps)"),
    _fc("nca_softplus", "nca_pair", "softplus form of -logsigmoid(w) - (logsigmoid(-w) + logsigmoid(-l)) / 2"),
    _fc("robust_bce", "robust", "two BCE-with-logits terms (targets 1 and 0) weighted and divided by 1 - 2 eps"),
    _fc("bco_softplus", "bco_pair", "softplus of the shifted chosen and rejected rewards"),
    _fc("sppo_expanded", "sppo_hard", "the two squares expanded into a polynomial"),
    _fc("aot_argsort", "aot", "argsort + gather of both log-ratio differences, label-smoothed softplus, batch mean"),
    _fc(
        "aot_unpaired_argsort",
        "aot_unpaired",
        "argsort + gather of the chosen and the rejected log-ratios, per example",
    ),
    _fc("apo_zero_sigmoid", "apo_zero", "sigmoids of the chosen and rejected rewards"),
    _fc("apo_down_sigmoid", "apo_down", "sigmoids of the chosen reward and the margin"),
    _fc("discopop_stable", "discopop", "sigmoid mixing written with softplus (no exp overflow)"),
    _fc("sft_token_mean", "sft", "minus the chosen log-probs summed over the batch, over the total token count"),
    _fc("sigmoid_norm_mean", "sigmoid_norm", "softplus of the length-normalised margin, batch mean"),
    _fc(
        "simpo_rewards", "simpo", "softplus(gamma - (chosen_rewards - rejected_rewards)), rewards beta * logp / length"
    ),
    _fc("dpop_where_softplus", "dpop", "Smaug's form: softplus of minus the penalised logits, torch.where penalty"),
    # ------------------------------------------------------------------ the family, broken
    _fb("hinge_is_dpo", "hinge", "dpo", "computes DPO"),
    _fb("ipo_norm_counts_plus_one", "ipo-norm", "count-plus-one", "TRL's count: the unshifted completion mask (n + 1)"),
    _fb("exo_is_cdpo", "exo_pair", "cdpo", "computes cDPO"),
    _fb("nca_is_dpo", "nca_pair", "dpo", "computes DPO"),
    _fb("robust_is_cdpo", "robust", "cdpo", "computes cDPO (the label-smoothing confusion)"),
    _fb("bco_swapped", "bco_pair", "chosen-rejected-swapped", "chosen and rejected exchanged"),
    _fb("sppo_no_reference", "sppo_hard", "no-reference", "the reference log-probs ignored"),
    _fb(
        "aot_is_unpaired",
        "aot",
        "aot_unpaired",
        "sorts the chosen and rejected log-ratios apart (the unpaired variant)",
    ),
    _fb("aot_unpaired_is_paired", "aot_unpaired", "aot", "sorts the log-ratio differences (the paired variant)"),
    _fb("apo_zero_is_down", "apo_zero", "apo_down", "computes APO-down"),
    _fb("apo_down_is_zero", "apo_down", "apo_zero", "computes APO-zero"),
    _fb("discopop_is_dpo", "discopop", "dpo", "computes DPO"),
    _fb("sft_counts_plus_one", "sft", "count-plus-one", "the token count one too many per row"),
    _fb("sigmoid_norm_on_sums", "sigmoid_norm", "not-length-normalised", "log-probs not length-normalised"),
    _fb("simpo_on_sums", "simpo", "not-length-normalised", "log-probs not length-normalised"),
    _fb("dpop_is_dpo", "dpop", "dpo", "the penalty forgotten: plain DPO"),
    # ------------------------------------------------------------------ the family's coverage holes (issue 21)
    Case(
        target("family_broken", "aot_sorted_per_chunk"),
        "loss",
        "aot",
        False,
        None,
        {},
        "sorted per chunk of 4 pairs: exact on every batch of <= 4, wrong on larger ones",
        "family-extra",
        fails=("large_batch",),
    ),  # fmt: skip
    Case(
        target("family_correct", "hinge_with_rewards"),
        "loss",
        "hinge",
        True,
        None,
        {},
        "(losses, chosen_rewards, rejected_rewards), rewards beta (log pi - log pi_ref) detached",
        "family-extra",
    ),
    Case(
        target("family_correct", "simpo_with_rewards"),
        "loss",
        "simpo",
        True,
        None,
        {},
        'dict with "loss" and SimPO\'s rewards beta log pi / n',
        "family-extra",
    ),
    Case(
        target("family_broken", "nca_rewards_without_beta"),
        "loss",
        "nca_pair",
        False,
        None,
        {},
        "right losses; rewards are the raw log-ratios (not scaled by beta)",
        "family-extra",
        fails=("rewards",),
    ),
    Case(
        target("family_broken", "simpo_rewards_with_reference"),
        "loss",
        "simpo",
        False,
        None,
        {},
        "right loss; rewards are DPO's beta (log pi - log pi_ref), not beta log pi / n",
        "family-extra",
        fails=("rewards",),
    ),
    Case(
        target("family_correct", "sft_token_mean_expanded"),
        "loss",
        "sft",
        True,
        None,
        {},
        "TRL's sft shape: the batch's token-mean NLL .expand()-ed to (B,)",
        "family-extra",
    ),
    Case(
        target("family_broken", "sft_expanded_counts_plus_one"),
        "loss",
        "sft",
        False,
        "count-plus-one",
        {},
        "TRL's sft shape with every count one too many",
        "family-extra",
        fails=("values", "values_float32", "large_batch", "gradients"),
    ),
]


def _hb(name, variant, diagnosis, style):
    return Case(target("family_heldout", name), "loss", variant, False, diagnosis, {}, style, "family-heldout")


# Held out of the family diagnoses' tuning (family_heldout.py): labelled before diagnosis.py was changed.
CASES += [
    _hb("hinge_relu_no_beta", "hinge", "beta-ignored", "beta accepted and forgotten, batch mean"),
    _hb("sigmoid_norm_reference_added", "sigmoid_norm", "reference-sign", "pi_logratios + ref_logratios per token"),
    _hb("ipo_norm_tau_squared", "ipo-norm", "beta-squared", "tau squared by a helper"),
    _hb("simpo_gamma_dropped", "simpo", "gamma-ignored", "the target margin never subtracted"),
    _hb("exo_is_dpo", "exo_pair", "dpo", "DPO's BCE-with-logits for EXO's KL"),
    _hb("robust_eps_unused", "robust", "dpo", "label_smoothing never reaches the loss: plain DPO, batch mean"),
    _hb("bco_delta_forgotten", "bco_pair", "delta-ignored", "the reward shift never applied"),
    _hb("sppo_swapped_arguments", "sppo_hard", "chosen-rejected-swapped", "chosen and rejected read the other way"),
    _hb("apo_zero_beta_twice", "apo_zero", "beta-squared", "rewards scaled by beta twice"),
    _hb("nca_policy_only", "nca_pair", "no-reference", "the reference log-probs unused"),
    _hb("discopop_temperature_one", "discopop", "beta-ignored", "the temperature tau hard-coded to 1"),
    _hb("dpop_reference_sign", "dpop", "reference-sign", "the reference log-ratio added"),
    _hb("sigmoid_norm_is_ipo", "sigmoid_norm", "ipo-norm", "falls through to TRL's ipo branch"),
    _hb("aot_unpaired_unsorted", "aot_unpaired", "dpo", "the sort forgotten: per-pair DPO, batch mean"),
    _hb("ipo_norm_target_inverse_tau", "ipo-norm", "ipo-target-1/tau", "target 1/tau, not 1/(2 tau)"),
    _hb("simpo_beta_outside", "simpo", "beta-outside", "beta multiplies the loss"),
    _hb("sft_mean_of_sequence_means", "sft", "mean-of-sequence-means", "per-sequence means, then their mean"),
    _hb("sppo_beta_as_temperature", "sppo_hard", "beta-inverted", "targets +-beta/2: beta used as its reciprocal"),
]


def _pipeline_cases() -> list[Case]:
    """The pipeline and packed levels' cases, labelled in pipeline_index.py (with each correct pipeline's
    tokenisation convention, which tests/meta/test_pipeline_corpus_selfcheck.py proves without the oracle)."""
    from tests.corpus.pipeline_index import INDEX

    return [Case(e.target, e.level, "dpo", e.conforms, e.diagnosis, {}, e.description, "pipeline") for e in INDEX]


CASES += _pipeline_cases()
