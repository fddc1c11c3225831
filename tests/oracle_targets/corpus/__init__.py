"""A corpus of DPO / cDPO / IPO implementations written in styles the project's authors did not choose.

Each `Case` names a target (`file.py:function`, relative to the repository root), the level and variant it
claims, whether it conforms, and for a broken one the diagnosis the oracle must name: the known alternative
it computes instead, or None when its mistake has no named alternative (the oracle must still reject it).
The labels are proved right without the oracle by tests/test_corpus_selfcheck.py (closed forms and a loop
reference written in that test).

Diagnosis names (loss level): plain-dpo, robust-dpo, cdpo-weights-exchanged, ipo-target-1/tau,
chosen-rejected-swapped, beta-ignored, beta-squared, no-reference, batch-sum, ipo-not-dpo, dpo-not-ipo,
reference-sign. Log-prob level: no-shift, mean-not-sum, sum-not-mean, prompt-counted, padding-counted,
last-token-dropped, float16-scoring. Their formulas are in `DIAGNOSES`.
"""

from __future__ import annotations

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
}


@dataclass(frozen=True)
class Case:
    target: str  # "tests/oracle_targets/corpus/loss_correct.py:softplus_default"
    level: str  # "loss" | "logps"
    variant: str  # "dpo" | "cdpo" | "ipo" | "ipo-mean"
    conforms: bool
    diagnosis: str | None = None  # broken only: a key of DIAGNOSES, or None if no known alternative applies
    options: dict = field(default_factory=dict)  # verify() options, e.g. {"reduction": "sum"}, {"adapter": ...}
    style: str = ""  # one line: the style (correct) or the bug (broken)

    @property
    def name(self) -> str:
        return self.target.rsplit(":", 1)[1]


_DIR = "tests/oracle_targets/corpus/"


def _c(module: str, name: str, level: str, variant: str, style: str, **options) -> Case:
    return Case(f"{_DIR}{module}.py:{name}", level, variant, True, None, dict(options), style)


def _b(module: str, name: str, level: str, variant: str, diagnosis: str | None, style: str, **options) -> Case:
    return Case(f"{_DIR}{module}.py:{name}", level, variant, False, diagnosis, dict(options), style)


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
    _oc("loss_mask_roll", "dpo", "loss_mask", "(logits, labels, loss_mask): torch.roll shift, float32"),
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
]
