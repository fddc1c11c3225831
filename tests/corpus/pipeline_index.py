"""The index of the pipeline and packed corpus: one record per function, with its label.

`conforms` says whether the function is correct; `diagnosis` names the bug of a broken one (the name the oracle
must give); `convention` is the tokenisation convention a correct pipeline uses (and, for a broken pipeline, the
one its bug departs from: everything else about it follows that convention). tests/test_pipeline_corpus_selfcheck.py
proves every label here without the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One corpus function and its label."""

    target: str  # "tests/corpus/<module>.py:<fn>"
    level: str  # "pipeline" | "packed"
    conforms: bool
    diagnosis: str | None
    convention: dict | None = field(default=None, hash=False, compare=False)
    description: str = ""

    @property
    def module(self) -> str:
        return self.target.split(":")[0].rsplit("/", 1)[1].removesuffix(".py")

    @property
    def function(self) -> str:
        return self.target.split(":")[1]


def _conv(tokenize: str, bos: bool, eos: bool) -> dict:
    return {"tokenize": tokenize, "bos": bos, "eos": eos}


def _p(module: str, fn: str, conforms: bool, diagnosis, convention, description: str) -> Entry:
    return Entry(f"tests/corpus/{module}.py:{fn}", "pipeline", conforms, diagnosis, convention, description)


def _k(module: str, fn: str, conforms: bool, diagnosis, description: str) -> Entry:
    return Entry(f"tests/corpus/{module}.py:{fn}", "packed", conforms, diagnosis, None, description)


SEP_BOS_EOS = _conv("separate", True, True)

PIPELINE_CORRECT = [
    _p("pipeline_correct", "trl_concatenated_forward", True, None, SEP_BOS_EOS,
       "TRL-style 2B concatenated forward, right padding, loss mask"),
    _p("pipeline_correct", "torchtune_style", True, None, SEP_BOS_EOS,
       "torchtune-style token lists, ignore_index labels, no attention mask (right padding)"),
    _p("pipeline_correct", "left_padded_with_position_ids", True, None, _conv("separate", False, False),
       "left padding with position_ids = cumsum(mask) - 1, clamped"),
    _p("pipeline_correct", "row_by_row_joint", True, None, _conv("joint", True, False),
       "one unpadded row at a time, joint tokenisation"),
    _p("pipeline_correct", "joint_tokenization_batched", True, None, _conv("joint", True, True),
       "old-TRL build_tokenized_answer, EOS appended, -100 labels"),
    _p("pipeline_correct", "no_pad_token_pad_with_eos", True, None, _conv("separate", False, True),
       "no pad token: pads with EOS, masks by length so the appended EOS is scored"),
    _p("pipeline_correct", "separate_forward_passes", True, None, _conv("separate", True, False),
       "chosen and rejected in two forward passes"),
    _p("pipeline_correct", "sorted_by_length_restored", True, None, SEP_BOS_EOS,
       "rows sorted by length, order restored with the inverse permutation"),
    _p("pipeline_correct", "openrlhf_style", True, None, _conv("joint", True, True),
       "OpenRLHF-style prompt_id_lens masking, EOS as text, position ids from the mask"),
    _p("pipeline_correct", "llamafactory_style", True, None, _conv("separate", False, True),
       "LLaMA-Factory-style IGNORE_INDEX labels, 2B batch split in halves"),
    _p("pipeline_correct", "packed_block_diagonal_mask", True, None, _conv("separate", True, False),
       "padding-free single row, reset positions, 4-D block-diagonal bool mask"),
    _p("pipeline_correct", "padding_free_position_ids", True, None, _conv("separate", False, True),
       "padding-free via transformers' packed detection (position ids, no mask, use_cache=False)"),
    _p("pipeline_correct", "chunked_vocab_logsoftmax", True, None, _conv("joint", False, False),
       "log-softmax normaliser over vocabulary chunks"),
    _p("pipeline_correct", "float32_logits_cast", True, None, SEP_BOS_EOS,
       "logits.float() before the log-softmax (float32 tolerance)"),
    _p("pipeline_correct", "trl_flush_left", True, None, SEP_BOS_EOS,
       "newer-TRL prompt left-padded + completion right-padded, flushed left"),
    _p("pipeline_correct", "nanogpt_cross_entropy", True, None, _conv("separate", False, False),
       "nanoGPT-like interleaved rows, -cross_entropy(reduction='none') summed"),
]  # fmt: skip

PIPELINE_BROKEN = [
    _p("pipeline_broken", "left_pad_no_position_ids", False, "left-padding-without-position-ids",
       _conv("separate", False, False), "left padding and a mask, default positions"),
    _p("pipeline_broken", "trl_left_padding_no_position_ids", False, "left-padding-without-position-ids",
       SEP_BOS_EOS, "TRL-style 2B batch left-padded, positions forgotten"),
    _p("pipeline_broken", "left_pad_mask_forgotten", False, "attention-mask-ignored",
       _conv("separate", False, False), "left padding with position ids but no attention mask"),
    _p("pipeline_broken", "packed_rows_all_ones_mask", False, "depends-on-batch",
       _conv("separate", True, False), "packed rows with an all-ones 2-D mask: rows attend to earlier rows"),
    _p("pipeline_broken", "pads_scored_right_padding", False, "pads-scored",
       SEP_BOS_EOS, "loss mask = every position after the prompt, pads included"),
    _p("pipeline_broken", "torchtune_labels_padded_with_pad_id", False, "pads-scored",
       SEP_BOS_EOS, "labels padded with the pad id instead of ignore_index"),
    _p("pipeline_broken", "prompt_scored_attention_mask_as_loss_mask", False, "prompt-scored",
       SEP_BOS_EOS, "the attention mask reused as the loss mask"),
    _p("pipeline_broken", "llamafactory_labels_not_masked", False, "prompt-scored",
       _conv("separate", False, True), "labels = input_ids.clone(), only pads ignored"),
    _p("pipeline_broken", "mask_applied_after_shift", False, "first-completion-token-dropped",
       SEP_BOS_EOS, "prompt masked on the shifted labels, one position too far"),
    _p("pipeline_broken", "separator_token_masked", False, "first-completion-token-dropped",
       _conv("separate", False, True), "the completion's first token masked as a 'separator'"),
    _p("pipeline_broken", "truncated_to_max_length", False, "truncated",
       SEP_BOS_EOS, "rows cut to 16 tokens"),
    _p("pipeline_broken", "tokenizer_truncation", False, "truncated",
       _conv("joint", True, False), "tokenizer truncation=True, max_length=16"),
    _p("pipeline_broken", "bos_in_the_middle", False, "bos-in-the-middle",
       SEP_BOS_EOS, "completion tokenised with special tokens (a BOS after the prompt, scored)"),
    _p("pipeline_broken", "eos_masked_as_pad", False, "eos-scored-as-pad",
       _conv("separate", False, True), "pad = EOS when no pad token; labels == pad masked, the appended EOS lost"),
    _p("pipeline_broken", "sorted_not_restored", False, "rows-reordered",
       SEP_BOS_EOS, "rows sorted by length and never put back"),
    _p("pipeline_broken", "chosen_rejected_swapped", False, "chosen-rejected-swapped",
       SEP_BOS_EOS, "rejected, chosen = logps.chunk(2)"),
    _p("pipeline_broken", "rows_shifted_by_one", False, "rows-shifted",
       SEP_BOS_EOS, "rejected taken from rows B-1 .. 2B-2"),
    _p("pipeline_broken", "first_row_prompt_length", False, "depends-on-batch",
       SEP_BOS_EOS, "the first row's prompt length masks every row"),
    _p("pipeline_broken", "normalised_by_batch_tokens", False, "batch-normalised",
       SEP_BOS_EOS, "divided by the batch's total completion-token count"),
    _p("pipeline_broken", "scaled_by_mean_length", False, "batch-normalised",
       _conv("separate", False, True), "divided by the batch's mean completion length"),
    _p("pipeline_broken", "per_token_mean", False, "mean-not-sum",
       SEP_BOS_EOS, "per-row mean instead of sum"),
    _p("pipeline_broken", "llamafactory_average_log_prob", False, "mean-not-sum",
       _conv("separate", False, True), "all_logps / valid_length, split in halves"),
    _p("pipeline_broken", "detached_logps", False, "detached",
       SEP_BOS_EOS, ".detach() before returning"),
    _p("pipeline_broken", "scored_under_no_grad", False, "detached",
       _conv("separate", True, False), "the policy scored under torch.no_grad()"),
    _p("pipeline_broken", "leaves_train_mode", False, "model-left-in-train-mode",
       SEP_BOS_EOS, "model.train() never undone"),
    _p("pipeline_broken", "backward_inside", False, "model-grad-left",
       SEP_BOS_EOS, "backward inside for a grad-norm check, .grad left"),
    _p("pipeline_broken", "freezes_embeddings", False, "requires-grad-changed",
       SEP_BOS_EOS, "input embeddings frozen and left frozen"),
]  # fmt: skip

PACKED_CORRECT = [
    _k("packed_correct", "packed_loop_over_segments", True, None, "loop over segments, shift inside each"),
    _k("packed_correct", "packed_segment_ids_index_add", True, None, "segment ids by repeat_interleave, index_add_"),
    _k("packed_correct", "packed_global_shift_mask_starts", True, None, "global shift, segment starts set to -100"),
    _k("packed_correct", "packed_segment_reduce", True, None, "torch.segment_reduce over segment lengths"),
    _k("packed_correct", "packed_position_ids_from_cu_seqlens", True, None, "flash-attn varlen style position ids"),
    _k("packed_correct", "packed_cross_entropy_chunked", True, None, "per-segment loop, vocab-chunked logsumexp"),
]

PACKED_BROKEN = [
    _k("packed_broken", "packed_global_shift_unmasked", False, "cross-boundary", "global shift, starts not masked"),
    _k("packed_broken", "packed_window_one_past_end", False, "cross-boundary", "window takes the next first label"),
    _k("packed_broken", "packed_no_shift", False, "no-shift", "labels[t] scored with logits[t]"),
    _k("packed_broken", "packed_double_shift", False, "double-shift", "logits[t] scores labels[t+2]"),
    _k("packed_broken", "packed_mean_not_sum", False, "mean-not-sum", "per-segment mean"),
    _k("packed_broken", "packed_holes_clamped", False, "holes-scored", "-100 clamped to token 0 and scored"),
    _k("packed_broken", "packed_boundaries_off_by_one", False, "segments-misread",
       "boundaries from cu_seqlens[1:-2]: last segment merged"),
    _k("packed_broken", "packed_cu_seqlens_as_lengths", False, "segments-misread",
       "cu_seqlens[1:] misread as lengths"),
    _k("packed_broken", "packed_segment_last_dropped", False, "segment-last-dropped",
       "each segment's last position never scored"),
    _k("packed_broken", "packed_half_precision", False, "float16-scoring", "log_softmax in float16"),
]  # fmt: skip

INDEX: list[Entry] = PIPELINE_CORRECT + PIPELINE_BROKEN + PACKED_CORRECT + PACKED_BROKEN

PIPELINE_DIAGNOSES = (
    "left-padding-without-position-ids", "attention-mask-ignored", "pads-scored", "prompt-scored",
    "first-completion-token-dropped", "truncated", "rows-reordered", "chosen-rejected-swapped", "rows-shifted",
    "detached", "batch-normalised", "mean-not-sum", "model-left-in-train-mode", "model-grad-left",
    "requires-grad-changed", "bos-in-the-middle", "eos-scored-as-pad", "depends-on-batch",
)  # fmt: skip
PACKED_DIAGNOSES = (
    "cross-boundary", "no-shift", "double-shift", "mean-not-sum", "holes-scored", "segments-misread",
    "segment-last-dropped", "float16-scoring",
)  # fmt: skip
