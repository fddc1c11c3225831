"""Every bad input answered clearly: a table of bad inputs to the Python API and to the CLI.

API: each case raises `InputError` (a ValueError) or `InputTypeError` (also a TypeError) whose message
names the argument, field, file or row. CLI: each case exits 2 with ONE line on stderr naming the
problem, no traceback, and leaves nothing (new or changed) in the output directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dpo_ref import dpo_loss, ipo_loss, sequence_logps
from dpo_ref.cli import main
from dpo_ref.errors import InputError, InputTypeError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD = {"prompt": "abc>", "chosen": "cba", "rejected": "cbb"}


def _four(values=(-1.0, -2.0, -1.5, -1.5)):
    return tuple(torch.tensor([v]) for v in values)


def _logps(**override):
    args = dict(
        policy_chosen_logps=torch.zeros(2),
        policy_rejected_logps=torch.zeros(2),
        reference_chosen_logps=torch.zeros(2),
        reference_rejected_logps=torch.zeros(2),
    )
    args.update(override)
    return args


# ---------------------------------------------------------------------------------------------- files


def _write(path, content: bytes | str) -> str:
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad and good data files, model directories that are not causal LMs, and a plain file."""
    from transformers import BertConfig, BertModel, T5Config

    from dpo_ref.train.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("inputs")
    line = json.dumps(GOOD) + "\n"
    f = {
        "good": _write(root / "good.jsonl", line * 4),
        "broken_json": _write(root / "broken.jsonl", line + '{"prompt": "a", "chosen": \n'),
        "missing_field": _write(root / "missing.jsonl", json.dumps({"prompt": "a", "chosen": "b"}) + "\n"),
        "empty_field": _write(root / "empty_field.jsonl", line + json.dumps({**GOOD, "chosen": ""}) + "\n"),
        "wrong_type": _write(root / "wrong_type.jsonl", json.dumps({**GOOD, "prompt": 3}) + "\n"),
        "not_object": _write(root / "array.jsonl", line + json.dumps(["abc>", "cba", "cbb"]) + "\n"),
        "not_utf8": _write(root / "latin1.jsonl", (line + '{"prompt": "caf\xe9>", "chosen": "a", "rejected": "b"}\n').encode("latin-1")),
        "empty_file": _write(root / "empty.jsonl", b""),
        "blank_lines": _write(root / "blank.jsonl", "\n  \n\n"),
        "identical": _write(root / "identical.jsonl", json.dumps({**GOOD, "rejected": GOOD["chosen"]}) + "\n"),
        "long_prompt": _write(root / "long.jsonl", json.dumps({**GOOD, "prompt": "x" * 40}) + "\n"),
        "all_bad": _write(root / "all_bad.jsonl", '{"prompt": 1}\n[]\n'),
        "plain_file": _write(root / "plain.txt", "not a directory"),
        "non_ascii": _write(root / "non_ascii.jsonl", json.dumps({"prompt": "caf\u00e9>", "chosen": "\u00e9fac", "rejected": "\u00e8fac"}) + "\n"),
        "cut_difference": _write(root / "cut.jsonl", json.dumps({"prompt": "ab>", "chosen": "bax", "rejected": "bay"}) + "\n"),
        "deep": _write(root / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"),
        "huge_number": _write(root / "huge.jsonl", '{"prompt": ' + "9" * 5000 + ', "chosen": "a", "rejected": "b"}\n'),
        "too_long": _write(root / "too_long.jsonl", json.dumps({"prompt": "x" * 200 + ">", "chosen": "ab", "rejected": "ba"}) + "\n"),
        "missing": str(root / "no_such.jsonl"),
    }  # fmt: skip
    tokenizer = build_char_tokenizer()
    t5 = root / "t5"
    T5Config(vocab_size=100, d_model=8, d_ff=8, num_layers=1, num_heads=1, d_kv=8).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    bert = root / "bert"  # an encoder: transformers maps it to BertLMHeadModel, whose LM head is absent
    torch.manual_seed(0)
    BertModel(
        BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    ).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    garbage = root / "garbage"
    tokenizer.save_pretrained(garbage)
    _write(garbage / "config.json", "{this is not json")
    no_config = root / "no_config"
    tokenizer.save_pretrained(no_config)
    from dpo_ref.train.model import build_tiny_model

    tiny = build_tiny_model(tokenizer)
    for name in ("truncated", "wrong_shape", "config_list", "bad_pickle", "plain_pickle", "bad_template"):
        tiny.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        f[name] = str(root / name)
    from dpo_ref.train.model import llama_config, tiny_llama

    small_vocab = root / "small_vocab"  # 64 embedding rows for a tokenizer of 100 tokens ('a' is id 69)
    tiny_llama(llama_config(64), seed=0).save_pretrained(small_vocab)
    tokenizer.save_pretrained(small_vocab)
    f["small_vocab"] = str(small_vocab)
    weights = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    config = json.loads((root / "wrong_shape" / "config.json").read_text())
    _write(root / "wrong_shape" / "config.json", json.dumps({**config, "intermediate_size": 96}))
    _write(root / "config_list" / "config.json", "[1, 2]")
    os.remove(root / "bad_pickle" / "model.safetensors")  # only a pickle left, one weights_only refuses to load
    torch.save({"model": torch.nn.Linear(2, 2)}, root / "bad_pickle" / "pytorch_model.bin")
    # a plain state dict that torch.load(weights_only=True) would read: refused all the same (safetensors only)
    os.remove(root / "plain_pickle" / "model.safetensors")
    torch.save(tiny.state_dict(), root / "plain_pickle" / "pytorch_model.bin")
    template = json.loads((root / "bad_template" / "tokenizer_config.json").read_text())
    _write(root / "bad_template" / "chat_template.jinja", "{{ raise_exception('no system role here') }}")
    del template
    f["conversational"] = _write(
        root / "conv.jsonl",
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "ab"}],
                "chosen": [{"role": "assistant", "content": "ba"}],
                "rejected": [{"role": "assistant", "content": "ab"}],
            }
        )
        + "\n",
    )
    nan_weights = root / "nan_weights"
    with torch.no_grad():
        for p in tiny.parameters():
            p.fill_(float("nan"))
    tiny.save_pretrained(nan_weights)
    tokenizer.save_pretrained(nan_weights)
    f["nan_weights"] = str(nan_weights)
    os.symlink(root / "nowhere", root / "dangling")
    f["dangling"] = str(root / "dangling")
    f["bom"] = _write(root / "bom.jsonl", b"\xef\xbb\xbf" + (line * 4).encode())
    os.symlink(root / "bom.jsonl", root / "bom_link.jsonl")  # another spelling of the same file
    f["bom_link"] = str(root / "bom_link.jsonl")
    f["reversed_readme"] = _write(
        root / "reversed.md", "a\n<!-- compliance-summary:end -->\nb\n<!-- compliance-summary:start -->\n"
    )
    f["latin1_readme"] = _write(root / "latin1.md", "caf\xe9\n".encode("latin-1"))
    fifo = root / "fifo"
    os.mkfifo(fifo)
    f["fifo"] = str(fifo)
    f["root"] = str(root)
    f.update(
        t5=str(t5), bert=str(bert), garbage=str(garbage), no_config=str(no_config), model_missing=str(root / "nope")
    )
    f["targets"] = _write(root / "targets.py", VERIFY_TARGETS)
    f["syntax_error"] = _write(root / "syntax_error.py", "def loss(:\n")
    f["import_error"] = _write(root / "import_error.py", "import no_such_module_for_dpo_ref_tests\n")
    return f


# loss-level verify targets that are wrong in one way each
VERIFY_TARGETS = """
import torch
import torch.nn.functional as F

not_callable = 3


def no_beta(pc, pr, rc, rr):
    return -F.logsigmoid((pc - pr) - (rc - rr))


def raises(pc, pr, rc, rr, beta=0.1):
    raise RuntimeError("boom")


def wrong_shape(pc, pr, rc, rr, beta=0.1):
    return torch.zeros(pc.shape[0], 2)


def nan(pc, pr, rc, rr, beta=0.1):
    return torch.full_like(pc, float("nan"))


def not_a_tensor(pc, pr, rc, rr, beta=0.1):
    return [0.0]
"""


# ---------------------------------------------------------------------------------------------- API matrix


def _prepare(key, **kw):
    def run(f):
        from dpo_ref.train.data import prepare_dataset
        from dpo_ref.train.tokenizer import build_char_tokenizer

        return prepare_dataset(f[key] if isinstance(key, str) else key, build_char_tokenizer(), **kw)

    return run


def _load_model(key):
    def run(f):
        from dpo_ref.train.model import load_model_and_tokenizer

        return load_model_and_tokenizer(f[key])

    return run


def _config(**kw):
    def run(f):
        from dpo_ref.train.loop import TrainConfig, check_config

        return check_config(TrainConfig(**kw))

    return run


def _train(out_key, sub="out", **kw):
    def run(f):
        from dpo_ref.train.loop import TrainConfig, train

        out = os.path.join(f[out_key], sub) if sub else f[out_key]
        return train(TrainConfig(data=f["good"], out=out, sft_steps=0, steps=1, progress=False, **kw))

    return run


def _with(x: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    x[index] = value
    return x


def _dpo(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0):
    return dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=label_smoothing).losses


def _verify_api(**options):
    import dpo_ref

    return dpo_ref.verify(_dpo, **{"max_examples": 2, "checks": ["values"], **options})


def _corrupt_checkpoint(f):
    from dpo_ref.train.rundir import load_tensors

    return load_tensors(f["broken_json"])  # a JSONL file is no safetensors file


nan, inf = float("nan"), float("inf")
t = torch.tensor
LONG = torch.long

# (id, call taking the `files` dict, expected exception type, regex the message must match)
API_CASES = [
    # -- dpo_loss / ipo_loss: log-probs (each also run through ipo_loss below)
    ("logps shapes differ", lambda f: dpo_loss(**_logps(policy_rejected_logps=torch.zeros(3))), InputError, "policy_rejected_logps"),
    ("logps not 1-D", lambda f: dpo_loss(**_logps(policy_chosen_logps=torch.zeros(2, 1))), InputError, "policy_chosen_logps"),
    ("logps empty batch", lambda f: dpo_loss(*(torch.zeros(0),) * 4), InputError, "empty"),
    ("logps nan", lambda f: dpo_loss(**_logps(reference_chosen_logps=t([0.0, nan]))), InputError, "reference_chosen_logps"),
    ("logps inf", lambda f: dpo_loss(**_logps(reference_rejected_logps=t([-inf, 0.0]))), InputError, "reference_rejected_logps"),
    ("logps +inf", lambda f: dpo_loss(**_logps(policy_rejected_logps=t([0.0, inf]))), InputError, "policy_rejected_logps"),
    ("logps integer dtype", lambda f: dpo_loss(**_logps(policy_chosen_logps=torch.zeros(2, dtype=LONG))), InputTypeError, "policy_chosen_logps"),
    ("logps bool dtype", lambda f: dpo_loss(**_logps(policy_chosen_logps=torch.zeros(2, dtype=torch.bool))), InputTypeError, "policy_chosen_logps"),
    ("logps not a tensor", lambda f: dpo_loss(**_logps(policy_chosen_logps=[0.0, 0.0])), InputTypeError, "policy_chosen_logps"),
    ("logps device differs", lambda f: dpo_loss(**_logps(policy_chosen_logps=torch.zeros(2, device="meta"))), InputError, "policy_chosen_logps"),
    ("ipo logps shapes differ", lambda f: ipo_loss(**_logps(policy_rejected_logps=torch.zeros(3))), InputError, "policy_rejected_logps"),
    ("ipo logps nan", lambda f: ipo_loss(**_logps(reference_chosen_logps=t([0.0, nan]))), InputError, "reference_chosen_logps"),
    ("ipo logps empty", lambda f: ipo_loss(*(torch.zeros(0),) * 4), InputError, "empty"),
    ("ipo logps not a tensor", lambda f: ipo_loss(**_logps(policy_chosen_logps=(0.0, 0.0))), InputTypeError, "policy_chosen_logps"),
    ("ipo logps device differs", lambda f: ipo_loss(**_logps(reference_rejected_logps=torch.zeros(2, device="meta"))), InputError, "reference_rejected_logps"),
    # -- beta, tau, label_smoothing out of range
    ("beta 0", lambda f: dpo_loss(*_four(), beta=0.0), InputError, "beta"),
    ("beta negative", lambda f: dpo_loss(*_four(), beta=-0.1), InputError, "beta"),
    ("beta nan", lambda f: dpo_loss(*_four(), beta=nan), InputError, "beta"),
    ("beta inf", lambda f: dpo_loss(*_four(), beta=inf), InputError, "beta"),
    ("beta bool", lambda f: dpo_loss(*_four(), beta=True), InputTypeError, "beta"),
    ("beta string", lambda f: dpo_loss(*_four(), beta="0.1"), InputTypeError, "beta"),
    ("beta tensor of 2", lambda f: dpo_loss(*_four(), beta=t([0.1, 0.2])), InputError, "beta"),
    ("tau 0", lambda f: ipo_loss(*_four(), tau=0.0), InputError, "tau"),
    ("tau negative", lambda f: ipo_loss(*_four(), tau=-1.0), InputError, "tau"),
    ("tau nan", lambda f: ipo_loss(*_four(), tau=nan), InputError, "tau"),
    ("tau inf", lambda f: ipo_loss(*_four(), tau=inf), InputError, "tau"),
    ("label_smoothing negative", lambda f: dpo_loss(*_four(), label_smoothing=-0.1), InputError, "label_smoothing"),
    ("label_smoothing 0.5", lambda f: dpo_loss(*_four(), label_smoothing=0.5), InputError, "label_smoothing"),
    ("label_smoothing 0.7", lambda f: dpo_loss(*_four(), label_smoothing=0.7), InputError, "label_smoothing"),
    ("label_smoothing nan", lambda f: dpo_loss(*_four(), label_smoothing=nan), InputError, "label_smoothing"),
    ("label_smoothing string", lambda f: dpo_loss(*_four(), label_smoothing="0.1"), InputTypeError, "label_smoothing"),
    # -- sequence_logps: logits and labels
    ("logits 2-D", lambda f: sequence_logps(torch.zeros(2, 5), torch.zeros(2, 5, dtype=LONG)), InputError, "logits"),
    ("labels 3-D", lambda f: sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 5, 1, dtype=LONG)), InputError, "labels"),
    ("logits/labels shape mismatch", lambda f: sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=LONG)), InputError, "labels"),
    ("logits/labels batch mismatch", lambda f: sequence_logps(torch.zeros(2, 5, 3), torch.zeros(3, 5, dtype=LONG)), InputError, "labels"),
    ("float labels", lambda f: sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 5)), InputTypeError, "labels"),
    ("integer logits", lambda f: sequence_logps(torch.zeros(2, 5, 3, dtype=LONG), torch.zeros(2, 5, dtype=LONG)), InputTypeError, "logits"),
    ("logits not a tensor", lambda f: sequence_logps([[[0.0]]], torch.zeros(1, 1, dtype=LONG)), InputTypeError, "logits"),
    ("labels not a tensor", lambda f: sequence_logps(torch.zeros(1, 2, 3), [[0, 1]]), InputTypeError, "labels"),
    ("labels on another device", lambda f: sequence_logps(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=LONG, device="meta")), InputError, "labels"),
    ("label out of vocabulary", lambda f: sequence_logps(torch.zeros(1, 3, 3), t([[0, 1, 3]])), InputError, r"labels\[0, 2\]"),
    ("negative label", lambda f: sequence_logps(torch.zeros(1, 3, 3), t([[0, -5, 1]])), InputError, r"labels\[0, 1\]"),
    ("logits empty batch", lambda f: sequence_logps(torch.zeros(0, 3, 3), torch.zeros(0, 3, dtype=LONG)), InputError, "empty"),
    ("labels score nothing (average)", lambda f: sequence_logps(torch.zeros(2, 3, 4), t([[1, 2, 3], [1, -100, -100]]), average=True), InputError, "row 1"),
    ("only the unscored first label (average)", lambda f: sequence_logps(torch.zeros(1, 1, 4), t([[2]]), average=True), InputError, "row 0"),
    # issue 20, bug 14: these passed validation, then failed inside gather (or with a bare TypeError)
    ("int8 labels", lambda f: sequence_logps(torch.zeros(1, 3, 4), t([[0, 1, 2]], dtype=torch.int8)), InputTypeError, r"labels must be a torch.int64 or torch.int32 tensor .* got dtype torch.int8"),
    ("int16 labels", lambda f: sequence_logps(torch.zeros(1, 3, 4), t([[0, 1, 2]], dtype=torch.int16)), InputTypeError, r"labels .*torch.int16"),
    ("uint8 labels", lambda f: sequence_logps(torch.zeros(1, 3, 4), t([[0, 1, 2]], dtype=torch.uint8)), InputTypeError, r"labels .*torch.uint8"),
    ("ignore_index None", lambda f: sequence_logps(torch.zeros(1, 3, 4), t([[0, 1, 2]]), ignore_index=None), InputTypeError, r"ignore_index must be an int"),
    ("NaN logits", lambda f: sequence_logps(_with(torch.zeros(1, 3, 4), (0, 1, 2), nan), t([[0, 1, 2]])), InputError, r"logits\[0, 1\] \(which scores labels\[0, 2\]\) holds NaN"),
    ("+inf logits", lambda f: sequence_logps(_with(torch.zeros(2, 3, 4), (1, 0, 3), inf), t([[0, 1, 2], [0, 1, 2]])), InputError, r"logits\[1, 0\]"),
    # the coefficients: an overflow was a silent inf
    ("beta overflows float32", lambda f: dpo_loss(*_four(), beta=1e300), InputError, r"beta=1e\+300 makes the chosen reward overflow torch.float32"),
    ("beta overflows the loss", lambda f: dpo_loss(*_four((-3.0, -1.0, -1.5, -1.5)), beta=3e38), InputError, r"beta=3e\+38 makes the loss overflow"),
    ("tau 1e-300 overflows", lambda f: ipo_loss(*_four(), tau=1e-300), InputError, r"tau=1e-300 makes the loss overflow"),
    ("label_smoothing tensor of 2", lambda f: dpo_loss(*_four(), label_smoothing=t([0.1, 0.2])), InputError, "label_smoothing"),
    ("label_smoothing complex", lambda f: dpo_loss(*_four(), label_smoothing=0.1j), InputTypeError, "label_smoothing"),
    # issue 20, bug 15: dpo_ref.verify's options
    ("verify: label_smoothing a string", lambda f: _verify_api(variant="cdpo", label_smoothing="x"), InputTypeError, r"label_smoothing must be a number in \(0, 0.5\), got str"),
    ("verify: label_smoothing 0.5", lambda f: _verify_api(variant="cdpo", label_smoothing=0.5), InputError, r"label_smoothing must be in \(0, 0.5\)"),
    ("verify: beta a string", lambda f: _verify_api(beta="0.1"), InputTypeError, r"beta must be a positive finite number, got str"),
    ("verify: beta inf", lambda f: _verify_api(beta=inf), InputError, r"beta must be a positive finite number, got inf"),
    ("verify: family coefficient a string", lambda f: _verify_api(variant="sppo_hard", coefficients={"beta": "x"}), InputTypeError, r"beta must be a number, got str"),
    # -- preference data
    ("data: broken JSON", _prepare("broken_json"), InputError, r"broken\.jsonl line 2: not valid JSON"),
    ("data: missing field", _prepare("missing_field"), InputError, r"line 1: field 'rejected' is missing"),
    ("data: empty field", _prepare("empty_field"), InputError, r"line 2: field 'chosen' is empty"),
    ("data: wrong type", _prepare("wrong_type"), InputError, r"line 1: field 'prompt' must be a string.*got int"),
    ("data: not an object", _prepare("not_object"), InputError, r"line 2: expected a JSON object"),
    ("data: not UTF-8", _prepare("not_utf8"), InputError, r"latin1\.jsonl line 2: not UTF-8: byte 0xe9"),
    ("data: empty file", _prepare("empty_file"), InputError, r"empty\.jsonl' has no rows"),
    ("data: only blank lines", _prepare("blank_lines"), InputError, r"blank\.jsonl' has no rows"),
    ("data: chosen == rejected", _prepare("identical"), InputError, r"'chosen' and 'rejected' are identical"),
    ("data: prompt longer than max_length", _prepare("long_prompt", max_length=16), InputError, r"field 'prompt' has 41 tokens.*max_length=16"),
    ("data: no usable rows", _prepare("all_bad", skip_bad_rows=True), InputError, r"no usable preference rows \(2 malformed"),
    ("data: file does not exist", _prepare("missing"), InputError, r"no_such\.jsonl' does not exist"),
    ("data: not a path or rows", _prepare(42), InputTypeError, r"preference data must be .* got int"),
    ("data: row is not a mapping", _prepare(["abc"]), InputError, r"row 1: expected a JSON object"),
    # -- models
    ("model: path does not exist", _load_model("model_missing"), InputError, r"--model .*nope' is not a directory"),
    ("model: no config.json", _load_model("no_config"), InputError, r"--model .*no_config' has no config.json"),
    ("model: not a causal LM (T5)", _load_model("t5"), InputError, r"--model .*t5' could not be loaded.*AutoModelForCausalLM"),
    ("model: encoder without an LM head", _load_model("bert"), InputError, r"--model .*bert' is not a complete causal-LM checkpoint"),
    ("model: config.json not JSON", _load_model("garbage"), InputError, r"--model .*garbage' could not be loaded"),
    ("model: weights only as a pickle", _load_model("plain_pickle"), InputError, r"--model .*plain_pickle' holds its weights only as a pickle \(pytorch_model\.bin\)"),
    # -- trainer configuration and outputs
    ("config: ipo with label_smoothing", _config(loss="ipo", label_smoothing=0.1), InputError, "--label-smoothing"),
    ("config: dpo with label_smoothing", _config(loss="dpo", label_smoothing=0.1), InputError, "--loss cdpo"),
    ("config: cdpo without label_smoothing", _config(loss="cdpo", label_smoothing=0.0), InputError, "--loss cdpo needs"),
    ("config: unknown loss", _config(loss="kto"), InputError, "--loss must be one of"),
    ("config: steps 0", _config(steps=0), InputError, "--steps"),
    ("config: padding side", _config(padding_side="middle"), InputError, "--padding-side"),
    ("config: negative rpo_alpha", _config(rpo_alpha=-1.0), InputError, "--rpo-alpha"),
    ("train: out under a file", _train("plain_file"), InputError, r"--out .* cannot be created: .*plain\.txt' is not a directory"),
    ("train: out is a file", _train("plain_file", sub=None), InputError, r"--out .*plain\.txt' exists and is not a directory"),
    ("checkpoint: not a safetensors file", _corrupt_checkpoint, InputError, r"checkpoint .*broken\.jsonl' cannot be read"),
]  # fmt: skip


@pytest.mark.parametrize("case, call, error, match", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_specific_error_naming_the_argument(files, case, call, error, match):
    with pytest.raises(error, match=match) as info:
        call(files)
    # exactly the documented type: InputError is a ValueError; InputTypeError is also a TypeError
    assert type(info.value) is error
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "beta, label_smoothing",
    [(np.float32(0.5), np.float64(0.1)), (torch.tensor(0.5), torch.tensor(0.1)), (1, 0), (np.int64(2), 0.25)],
    ids=["numpy", "0-d tensors", "python ints", "numpy int"],
)
def test_api_coefficients_accept_any_real_number(beta, label_smoothing):
    """Bug 15: beta took a 0-d tensor but label_smoothing did not, and a numpy float32 beta was refused. Every
    scalar coefficient is read the same way: a real number (Python, numpy or a one-element tensor)."""
    from dpo_ref.oracle.api import make_config

    result = dpo_loss(*_four(), beta=beta, label_smoothing=label_smoothing)
    expected = dpo_loss(*_four(), beta=float(beta), label_smoothing=float(label_smoothing))
    torch.testing.assert_close(result.losses, expected.losses)
    config = make_config("cdpo", beta=beta, label_smoothing=label_smoothing or 0.1)
    assert config.beta == float(beta) and isinstance(config.beta, float)
    assert ipo_loss(*_four(), tau=beta).losses.isfinite().all()


def test_api_resume_without_a_checkpoint_is_refused(files, tmp_path):
    from dpo_ref.train.loop import TrainConfig, train

    with pytest.raises(InputError, match="--resume: .* has no run to resume"):
        train(TrainConfig(data=files["good"], out=str(tmp_path / "fresh"), sft_steps=0, steps=1, resume=True))
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------------------------------------- CLI matrix

_TRAIN = ["--sft-steps", "0", "--steps", "1", "--no-progress"]

# (id, argv with {placeholders} filled from `files` plus {out}, regex the one stderr line must match)
CLI_CASES = [
    # -- dpo-ref train: data
    ("train: broken JSON", ["train", "--data", "{broken_json}", *_TRAIN], r"broken\.jsonl line 2: not valid JSON"),
    ("train: missing field", ["train", "--data", "{missing_field}", *_TRAIN], r"missing\.jsonl line 1: field 'rejected' is missing"),
    ("train: empty field", ["train", "--data", "{empty_field}", *_TRAIN], r"line 2: field 'chosen' is empty"),
    ("train: wrong type", ["train", "--data", "{wrong_type}", *_TRAIN], r"line 1: field 'prompt' must be a string"),
    ("train: row not an object", ["train", "--data", "{not_object}", *_TRAIN], r"line 2: expected a JSON object"),
    ("train: not UTF-8", ["train", "--data", "{not_utf8}", *_TRAIN], r"latin1\.jsonl line 2: not UTF-8"),
    ("train: empty file", ["train", "--data", "{empty_file}", *_TRAIN], r"empty\.jsonl' has no rows"),
    ("train: only blank lines", ["train", "--data", "{blank_lines}", *_TRAIN], r"blank\.jsonl' has no rows"),
    ("train: data does not exist", ["train", "--data", "{missing}", *_TRAIN], r"no_such\.jsonl' does not exist"),
    ("train: bad eval data", ["train", "--data", "{good}", "--eval-data", "{broken_json}", *_TRAIN], r"broken\.jsonl line 2"),
    ("train: prompt longer than max-length", ["train", "--data", "{long_prompt}", "--max-length", "16", "--max-prompt-length", "none", *_TRAIN], r"field 'prompt' has 41 tokens.*max_length=16"),
    ("train: skip-bad-rows leaves none", ["train", "--data", "{all_bad}", "--skip-bad-rows", *_TRAIN], r"no usable preference rows"),
    # -- dpo-ref train: model
    ("train: model does not exist", ["train", "--model", "{model_missing}", *_TRAIN], r"--model .*nope' is not a directory"),
    ("train: model without config.json", ["train", "--model", "{no_config}", *_TRAIN], r"has no config.json"),
    ("train: model not a causal LM", ["train", "--model", "{t5}", *_TRAIN], r"--model .*t5' could not be loaded"),
    ("train: encoder-only model", ["train", "--model", "{bert}", *_TRAIN], r"not a complete causal-LM checkpoint"),
    ("train: model config not JSON", ["train", "--model", "{garbage}", *_TRAIN], r"--model .*garbage' could not be loaded"),
    # -- dpo-ref train: output directory
    ("train: out under a file", ["train", "--data", "{good}", *_TRAIN, "--out", "{plain_file}/run"], r"--out .* cannot be created"),
    ("train: out is a file", ["train", "--data", "{good}", *_TRAIN, "--out", "{plain_file}"], r"--out .* exists and is not a directory"),
    # -- dpo-ref train: conflicting or out-of-range flags
    ("train: resume a fresh out", ["train", "--data", "{good}", "--resume", *_TRAIN], r"--resume: .* has no run to resume"),
    ("train: label-smoothing with ipo", ["train", "--loss", "ipo", "--label-smoothing", "0.1", *_TRAIN], r"--label-smoothing is a \(c\)DPO option"),
    ("train: label-smoothing with dpo", ["train", "--loss", "dpo", "--label-smoothing", "0.1", *_TRAIN], r"use --loss cdpo"),
    ("train: cdpo with label-smoothing 0", ["train", "--loss", "cdpo", "--label-smoothing", "0", *_TRAIN], r"--loss cdpo needs"),
    ("train: label-smoothing 0.5", ["train", "--loss", "cdpo", "--label-smoothing", "0.5", *_TRAIN], r"label_smoothing must be in \[0, 0.5\)"),
    ("train: beta 0", ["train", "--beta", "0", *_TRAIN], r"--beta must be a positive finite number"),
    ("train: beta nan", ["train", "--beta", "nan", *_TRAIN], r"--beta must be a positive finite number, got nan"),
    ("train: tau negative", ["train", "--loss", "ipo", "--tau", "-1", *_TRAIN], r"--tau must be a positive"),
    ("train: lr negative", ["train", "--lr", "-1", *_TRAIN], r"--lr must be a positive"),
    ("train: lr inf", ["train", "--lr", "inf", *_TRAIN], r"--lr must be a positive"),
    ("train: max-grad-norm 0", ["train", "--max-grad-norm", "0", *_TRAIN], r"--max-grad-norm"),
    ("train: steps 0", ["train", "--sft-steps", "0", "--steps", "0", "--no-progress"], r"--steps must be a positive integer"),
    ("train: batch-size 0", ["train", "--batch-size", "0", *_TRAIN], r"--batch-size must be a positive integer"),
    ("train: grad-accum 0", ["train", "--grad-accum", "0", *_TRAIN], r"--grad-accum must be a positive integer"),
    ("train: warmup-steps negative", ["train", "--warmup-steps", "-1", *_TRAIN], r"--warmup-steps must be >= 0"),
    ("train: rpo-alpha negative", ["train", "--rpo-alpha", "-1", *_TRAIN], r"--rpo-alpha must be a finite number >= 0"),
    ("train: seed beyond 2**32", ["train", "--seed", str(2**64), *_TRAIN], r"--seed must be an integer in \[0, 2\*\*32\), got 18446744073709551616"),
    ("train: seed negative", ["train", "--seed", "-1", *_TRAIN], r"--seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("train: stop-after 0", ["train", "--stop-after", "0", *_TRAIN], r"--stop-after must be a positive integer"),
    ("train: device not a device", ["train", "--device", "nosuch", *_TRAIN], r"--device 'nosuch' is not a device"),
    ("train: weight-decay negative", ["train", "--weight-decay", "-1", *_TRAIN], r"--weight-decay must be a finite number >= 0, got -1"),
    ("train: weight-decay nan", ["train", "--weight-decay", "nan", *_TRAIN], r"--weight-decay must be a finite number >= 0, got nan"),
    ("train: lr beyond float32", ["train", "--lr", "1e39", *_TRAIN], r"--lr must be at most 3.403e\+38 \(float32's largest"),
    ("train: device mps", ["train", "--device", "mps", *_TRAIN], r"--device 'mps': dpo-ref trains on cpu or cuda only"),
    ("train: device meta", ["train", "--device", "meta", *_TRAIN], r"--device 'meta': dpo-ref trains on cpu or cuda only"),
    ("train: max-prompt-length 0", ["train", "--max-prompt-length", "0", *_TRAIN], r"--max-prompt-length must be a positive integer, got 0"),
    ("train: max-prompt-length negative", ["train", "--max-prompt-length", "-3", *_TRAIN], r"--max-prompt-length must be a positive integer, got -3"),
    ("train: max-length 0", ["train", "--max-length", "0", *_TRAIN], r"--max-length must be a positive integer"),
    ("train: beta with ipo", ["train", "--loss", "ipo", "--beta", "0.5", *_TRAIN], r"--beta is the DPO/cDPO coefficient; IPO's regularisation is --tau .*use --tau 0.5"),
    ("train: tau with dpo", ["train", "--tau", "0.5", *_TRAIN], r"--tau is IPO's regularisation \(--loss ipo\); dpo uses --beta"),
    ("train: tau with cdpo", ["train", "--loss", "cdpo", "--tau", "0.5", *_TRAIN], r"--tau is IPO's regularisation"),
    ("train: resume and overwrite", ["train", "--resume", "--overwrite", *_TRAIN], r"pass one of them"),
    ("train: data is a directory", ["train", "--data", "{root}", *_TRAIN], r"--data .* is a directory; expected a JSONL file"),
    ("train: data is a FIFO", ["train", "--data", "{fifo}", *_TRAIN], r"--data .*fifo' is a FIFO \(named pipe\)"),
    ("train: data is -", ["train", "--data", "-", *_TRAIN], r"--data '-': reading rows from standard input is not supported"),
    ("train: eval-data is a FIFO", ["train", "--data", "{good}", "--eval-data", "{fifo}", *_TRAIN], r"--eval-data .* is a FIFO"),
    ("train: out is a FIFO", ["train", "--data", "{good}", *_TRAIN, "--out", "{fifo}"], r"--out .*fifo' exists and is not a directory"),
    ("train: non-ASCII text, built-in tokenizer", ["train", "--data", "{non_ascii}", *_TRAIN], r"line 1: field 'prompt' has '\u00e9', which the built-in character tokenizer cannot represent.*--model DIR"),
    ("train: max-length cuts the difference", ["train", "--data", "{cut_difference}", "--max-length", "6", *_TRAIN], r"line 1: fields 'chosen' and 'rejected' are identical after tokenisation \(max_length=6 cuts them off"),
    ("train: deeply nested JSON", ["train", "--data", "{deep}", *_TRAIN], r"deep\.jsonl line 1: not valid JSON \(nested too deeply\)"),
    ("train: 5000-digit number", ["train", "--data", "{huge_number}", *_TRAIN], r"huge\.jsonl line 1: not valid JSON \(Exceeds the limit"),
    ("train: row longer than the model's positions", ["train", "--data", "{too_long}", "--max-length", "none", "--max-prompt-length", "none", *_TRAIN], r"line 1: 205 tokens, more than the model's 128 positions"),
    ("train: truncated model.safetensors", ["train", "--model", "{truncated}", *_TRAIN], r"--model .*truncated' could not be loaded: .*incomplete"),
    ("train: weights of the wrong shape", ["train", "--model", "{wrong_shape}", *_TRAIN], r"--model .*wrong_shape' could not be loaded: weights of a shape other than its config.json"),
    ("train: token ids beyond the model's embedding", ["train", "--model", "{small_vocab}", "--data", "{good}", *_TRAIN], r"--model .*small_vocab': its tokenizer gives token id 71, but the model's input embedding has only 64 rows; resize it"),
    ("train: config.json not an object", ["train", "--model", "{config_list}", *_TRAIN], r"config.json holds a JSON list, not an object"),
    ("train: a pickle weights_only refuses", ["train", "--model", "{bad_pickle}", *_TRAIN], r"--model .*bad_pickle' holds its weights only as a pickle"),
    ("train: weights only as a pickle .bin", ["train", "--model", "{plain_pickle}", *_TRAIN], r"--model .*plain_pickle' holds its weights only as a pickle \(pytorch_model\.bin\); dpo-ref loads safetensors only.*from_pretrained\(.*\)\.save_pretrained\("),
    ("train: chat template raises", ["train", "--model", "{bad_template}", "--data", "{conversational}", *_TRAIN], r"line 1: field 'prompt': the tokenizer's chat template raised TemplateError: no system role here"),
    # -- dpo-ref train: issue 20, bugs 7-9 (sizes unbounded, a batch repeating rows, outputs over inputs)
    ("train: out a dangling symlink", ["train", "--data", "{good}", "--batch-size", "4", *_TRAIN, "--out", "{dangling}"], r"--out .*dangling' is a symbolic link to .*nowhere', which does not exist; expected a directory"),
    ("train: out empty", ["train", "--data", "{good}", "--batch-size", "4", *_TRAIN, "--out", ""], r"--out is empty; expected a directory"),
    ("train: json is the data", ["train", "--data", "{good}", "--batch-size", "4", "--json", "{good}", *_TRAIN], r"--json .*good\.jsonl' is the same file as --data .*good\.jsonl', an input of this run; choose another --json"),
    ("train: json is the eval data", ["train", "--data", "{good}", "--eval-data", "{bom}", "--batch-size", "4", "--json", "{bom_link}", *_TRAIN], r"--json .*bom_link\.jsonl' is the same file as --eval-data .*bom\.jsonl'"),
    ("train: json inside the model", ["train", "--model", "{truncated}", "--json", "{truncated}/r.json", *_TRAIN], r"--json .*r\.json' would write inside --model .*truncated'"),
    ("train: batch larger than the data", ["train", "--data", "{good}", *_TRAIN], r"an update takes 32 pairs \(--batch-size 32 x --grad-accum 1 x 1 processes\) but the training data has 4; lower --batch-size, or pass --repeat-rows"),
    ("train: batch-size 1e9", ["train", "--batch-size", "1000000000", *_TRAIN], r"--batch-size must be at most 65536, got 1000000000"),
    ("train: batch x accumulation too large", ["train", "--batch-size", "65536", "--grad-accum", "2", *_TRAIN], r"--batch-size x --grad-accum must be at most 65536 pairs per update, got 65536 x 2"),
    ("train: steps 1e12", ["train", "--sft-steps", "0", "--steps", "1000000000000", "--no-progress"], r"--steps must be at most 100000000, got 1000000000000"),
    ("train: max-length 1e9", ["train", "--max-length", "1000000000", *_TRAIN], r"--max-length must be at most 1048576"),
    ("train: weights not finite", ["train", "--model", "{nan_weights}", "--data", "{good}", "--batch-size", "4", *_TRAIN], r"--model .*nan_weights': its weights are not finite \(.* holds NaN or inf\)"),
    # -- dpo-ref train: LoRA, --dtype (issue 23)
    ("train: lora-r 0", ["train", "--lora-r", "0", *_TRAIN], r"--lora-r must be a positive integer, got 0"),
    ("train: lora-r negative", ["train", "--lora-r", "-2", *_TRAIN], r"--lora-r must be a positive integer, got -2"),
    ("train: lora-alpha 0", ["train", "--lora-r", "4", "--lora-alpha", "0", *_TRAIN], r"--lora-alpha must be a positive finite number, got 0"),
    ("train: lora-alpha negative", ["train", "--lora-r", "4", "--lora-alpha", "-8", *_TRAIN], r"--lora-alpha must be a positive finite number, got -8"),
    ("train: lora-dropout 1", ["train", "--lora-r", "4", "--lora-dropout", "1", *_TRAIN], r"--lora-dropout must be in \[0, 1\), got 1"),
    ("train: lora-dropout negative", ["train", "--lora-r", "4", "--lora-dropout", "-0.1", *_TRAIN], r"--lora-dropout must be in \[0, 1\), got -0.1"),
    ("train: merge-lora without lora-r", ["train", "--merge-lora", *_TRAIN], r"--merge-lora needs --lora-r"),
    ("train: lora-alpha without lora-r", ["train", "--lora-alpha", "16", *_TRAIN], r"--lora-alpha needs --lora-r"),
    ("train: lora target names no module", ["train", "--lora-r", "4", "--lora-target-modules", "q_proj,nosuch", *_TRAIN], r"--lora-target-modules: nosuch names no module of the model; its linear layers are down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj \(or all-linear\)"),
    *(
        [("train: dtype float16 on CPU", ["train", "--dtype", "float16", *_TRAIN], r"--dtype float16 on CPU: float16 autocast needs CUDA")]
        if not torch.cuda.is_available()
        else []
    ),
    # -- dpo-ref prove
    ("prove: unknown proof", ["prove", "--only", "nosuch"], r"--only: unknown proof 'nosuch'"),
    ("prove: output under a file", ["prove", "--only", "init-ln2", "--output", "{plain_file}/x.md"], r"--output: directory"),
    ("prove: output is a FIFO", ["prove", "--only", "init-ln2", "--output", "{fifo}"], r"--output .*fifo' is a FIFO \(named pipe\); expected a path to a regular file"),
    ("prove: output is a directory", ["prove", "--only", "init-ln2", "--output", "{root}"], r"--output .* is a directory; expected a path to a regular file"),
    # -- dpo-ref matrix (checked before any library is searched)
    ("matrix: out is a FIFO", ["matrix", "--out", "{fifo}"], r"--out .*fifo' is a FIFO \(named pipe\); expected a directory"),
    ("matrix: out is a file", ["matrix", "--out", "{plain_file}"], r"--out .*plain\.txt' is a file; expected a directory"),
    ("matrix: readme is a FIFO", ["matrix", "--out", "{root}", "--readme", "{fifo}"], r"--readme .*fifo' is a FIFO"),
    ("matrix: readme markers reversed", ["matrix", "--out", "{root}", "--readme", "{reversed_readme}"], r"reversed\.md has no <!-- compliance-summary:start --> \.\.\. <!-- compliance-summary:end --> block to update \(both markers, in this order\)"),
    ("matrix: readme not UTF-8", ["matrix", "--out", "{root}", "--readme", "{latin1_readme}"], r"--readme .*latin1\.md' is not UTF-8 \(byte 0xe9 at offset 3\)"),
    ("matrix: readme is what out writes", ["matrix", "--out", "{root}", "--readme", "{root}/compliance.md"], r"--readme .* would write .*compliance\.md', which --out .* writes too"),
    # -- dpo-ref verify: usage and import problems (a target that runs but computes wrong is exit 1, below)
    ("verify: file does not exist", ["verify", "{missing}.py:loss"], r"target file .*no_such\.jsonl\.py' does not exist"),
    ("verify: syntax error", ["verify", "{syntax_error}:loss"], r"importing it raised SyntaxError"),
    ("verify: import error inside", ["verify", "{import_error}:loss"], r"importing it raised ModuleNotFoundError"),
    ("verify: module not importable", ["verify", "no_such_pkg_for_dpo_ref.losses:loss"], r"cannot import module 'no_such_pkg_for_dpo_ref.losses'"),
    ("verify: no such function", ["verify", "{targets}:nope"], r"has no attribute 'nope'"),
    ("verify: not callable", ["verify", "{targets}:not_callable"], r"'not_callable' is a int, not a callable"),
    ("verify: wrong signature", ["verify", "{targets}:no_beta"], r"no_beta takes no `beta` keyword argument"),
    ("verify: target without a name", ["verify", "{targets}"], r"must be path/to/file.py:name"),
    ("verify: json is a FIFO", ["verify", "{targets}:raises", "--json", "{fifo}"], r"--json .*fifo' is a FIFO \(named pipe\); expected a path to a regular file"),
    ("verify: json is a directory", ["verify", "{targets}:raises", "--json", "{root}"], r"--json .* is a directory; expected a path to a regular file"),
    ("verify --isolate: json is a FIFO", ["verify", "{targets}:raises", "--isolate", "--json", "{fifo}"], r"--json .*fifo' is a FIFO"),
    ("verify: timeout without isolate", ["verify", "{targets}:raises", "--timeout", "5"], r"--timeout needs --isolate"),
    ("verify: timeout 0", ["verify", "{targets}:raises", "--isolate", "--timeout", "0"], r"--timeout must be a positive number"),
    ("verify: max-examples 0", ["verify", "{targets}:raises", "--max-examples", "0"], r"--max-examples must be a positive integer"),
    ("verify: label-smoothing without cdpo", ["verify", "{targets}:raises", "--label-smoothing", "0.1"], r"label_smoothing applies to variant cdpo only"),
    # -- dpo-ref bench (all checked before the bench imports TRL or starts a process)
    ("bench: batch 0", ["bench", "--batch", "0"], r"--batch must be a positive integer"),
    ("bench: steps 0", ["bench", "--steps", "0"], r"--steps must be a positive integer"),
    ("bench: unknown layout", ["bench", "--layout", "prefix"], r"--layout: unknown layout 'prefix'; expected 'all' or"),
    ("bench: layout with a shape", ["bench", "--layout", "all", "--seq-len", "64"], r"--seq-len cannot be combined with --layout"),
    ("bench: warmup 0", ["bench", "--warmup", "0"], r"--warmup must be >= 1"),
    ("bench: prompt-len too long", ["bench", "--seq-len", "8", "--prompt-len", "8"], r"--prompt-len must be in \[2, seq_len - 1\)"),
    ("bench: json under a file", ["bench", "--json", "{plain_file}/b.json"], r"--json .*: its directory does not exist"),
    ("bench: json is a FIFO", ["bench", "--json", "{fifo}"], r"--json .*fifo' is a FIFO \(named pipe\); expected a path to a regular file"),
    ("bench: json is a directory", ["bench", "--json", "{root}"], r"--json .* is a directory; expected a path to a regular file"),
    ("bench: vocab 1", ["bench", "--size", "tiny", "--vocab", "1"], r"--vocab must be at least 16"),
    ("bench: device mps", ["bench", "--device", "mps"], r"--device 'mps': dpo-ref trains on cpu or cuda only"),
    ("bench: threads 0", ["bench", "--threads", "0"], r"--threads must be a positive integer, got 0"),
    # -- dpo-ref experiment
    ("overfit: seed -1", ["experiment", "overfit", "--seed", "-1"], r"--seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("overfit: json is a file it writes", ["experiment", "overfit", "--epochs", "1", "--json", "{out}/overfit.json"], r"--json .*overfit\.json' would write .*, which --out .* writes too"),
    ("overfit: epochs 0", ["experiment", "overfit", "--epochs", "0"], r"--epochs must be a positive integer"),
    ("overfit: beta 0", ["experiment", "overfit", "--betas", "0.1", "0"], r"--betas must be a positive finite number, got 0"),
    ("overfit: tau nan", ["experiment", "overfit", "--taus", "nan"], r"--taus must be a positive finite number"),
    ("overfit: lr negative", ["experiment", "overfit", "--lr", "-1"], r"--lr must be a positive finite number"),
    ("overfit: max-grad-norm 0", ["experiment", "overfit", "--max-grad-norm", "0"], r"--max-grad-norm"),
    ("overfit: out under a file", ["experiment", "overfit", "--epochs", "1", "--out", "{plain_file}/o"], r"--out .* cannot be created"),
    ("displacement: rpo-alpha negative", ["experiment", "displacement", "--rpo-alpha", "-1"], r"--rpo-alpha must be a finite number >= 0"),
    ("displacement: steps 0", ["experiment", "displacement", "--steps", "0"], r"--steps must be a positive integer"),
    ("displacement: out is a file", ["experiment", "displacement", "--steps", "1", "--out", "{plain_file}"], r"--out .*plain\.txt' exists and is not a directory"),
    ("bandit: tau 0", ["experiment", "bandit", "--tau", "0"], r"--tau must be a positive finite number"),
    ("bandit: seeds 0", ["experiment", "bandit", "--seeds", "0"], r"--steps and --seeds must be positive integers"),
    ("bandit: json under a file", ["experiment", "bandit", "--steps", "1", "--seeds", "1", "--json", "{plain_file}/b.json"], r"--json .* its directory does not exist"),
    ("bandit: json is a FIFO", ["experiment", "bandit", "--steps", "1", "--seeds", "1", "--json", "{fifo}"], r"--json .*fifo' is a FIFO"),
]  # fmt: skip


# refused once the run shows it (its progress lines came first): exit 2, the last line names the option, no
# traceback, and no --out left behind, not even an empty one (issue 20, bug 13)
RUN_TIME_CASES = [
    ("overfit: lr 1e30", ["experiment", "overfit", "--epochs", "3", "--lr", "1e30"], r"--lr 1e\+30 with --betas 0.1: the weights became non-finite after 1 SGD steps; expected a smaller --lr"),
    ("overfit: betas 1e308", ["experiment", "overfit", "--epochs", "2", "--betas", "1e308"], r"--betas 1e\+308: beta=1e\+308 makes the loss overflow"),
    ("overfit: taus 1e-300", ["experiment", "overfit", "--epochs", "2", "--taus", "1e-300"], r"--taus 1e-300: tau=1e-300 makes the loss overflow"),
]  # fmt: skip


@pytest.mark.parametrize("case, template, match", RUN_TIME_CASES, ids=[c[0] for c in RUN_TIME_CASES])
def test_cli_bad_input_seen_during_the_run_names_the_option(files, tmp_path, capsys, case, template, match):
    out = str(tmp_path / "out")
    code = main(_argv(template, files, out))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dpo-ref experiment: error: ") and re.search(match, last), last
    assert "policy_chosen_logps" not in err  # an internal name
    assert not os.path.exists(out)


def _argv(template: list[str], files: dict, out: str) -> list[str]:
    argv = [a.format(**files, out=out) for a in template]
    if "--out" not in argv and argv[0] not in ("prove", "verify", "bench"):
        argv += ["--out", out]
    return argv


def _snapshot(directory) -> dict[str, tuple[int, bytes]]:
    """Every file under `directory` (relative path -> (mtime_ns, bytes)); {} if it does not exist."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = (os.stat(path).st_mtime_ns, f.read())
    return found


def _assert_one_line_exit_2(code, err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("dpo-ref ") and ": error: " in lines[0]
    assert re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize("case, template, match", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, case, template, match):
    out = str(tmp_path / "out")
    code = main(_argv(template, files, out))
    _assert_one_line_exit_2(code, capsys.readouterr().err, match)
    assert _snapshot(out) == {}  # nothing written, not even a directory's worth
    assert not os.path.exists(out) or os.listdir(out) == []


def test_cli_bad_input_leaves_a_previous_run_untouched(files, tmp_path, capsys):
    """A failed invocation into an existing output directory changes none of its files."""
    out = tmp_path / "previous"
    out.mkdir()
    for name in ("metrics.jsonl", "checkpoint.safetensors", "sft.safetensors"):
        (out / name).write_text(f"the previous run's {name}")
    before = _snapshot(out)
    for bad in (
        ["--data", files["broken_json"]],
        ["--data", files["good"], "--loss", "ipo", "--label-smoothing", "0.2"],
        # each of these deleted the previous run's files, then crashed with a traceback
        ["--data", files["good"], "--weight-decay", "-1"],
        ["--data", files["good"], "--weight-decay", "nan"],
        ["--data", files["good"], "--lr", "1e39"],
        ["--data", files["good"], "--device", "mps"],
        ["--data", files["good"], "--device", "meta"],
        ["--data", files["good"], "--seed", str(2**60), "--overwrite"],  # its data order overflowed
        ["--data", files["good"]],  # a rerun without --resume or --overwrite
        ["--data", files["good"], "--resume"],  # metrics and checkpoints but no run.json: nothing resumable
        ["--data", files["good"], "--overwrite", "--lora-r", "0"],
        [
            "--data",
            files["good"],
            "--overwrite",
            "--batch-size",
            "4",
            "--lora-r",
            "4",
            "--lora-target-modules",
            "nosuch",
        ],
    ):
        code = main(["train", *bad, "--out", str(out), *_TRAIN])
        _assert_one_line_exit_2(code, capsys.readouterr().err, ".")
        assert _snapshot(out) == before


VERIFY_FINDINGS = [
    ("raises", r"FAIL call: the target raised RuntimeError: boom"),
    ("wrong_shape", r"FAIL call: returned shape \(3, 2\) for a batch of 3"),
    ("not_a_tensor", r"FAIL call: returned list; expected a tensor"),
    ("nan", r"FAIL finite"),
]


@pytest.mark.parametrize("name, finding", VERIFY_FINDINGS, ids=[c[0] for c in VERIFY_FINDINGS])
def test_verify_target_that_runs_but_computes_wrong_is_exit_1_with_a_finding(files, capsys, name, finding):
    """The oracle's semantics: a callable that can be called but answers wrong does not conform (exit 1),
    and the report names what it did; it is not a usage error."""
    code = main(["verify", f"{files['targets']}:{name}", "--max-examples", "5", "-q"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert re.search(finding, captured.out) and "DOES NOT CONFORM" in captured.out


@pytest.mark.parametrize(
    "argv, option",
    [
        (["train", "--loss", "kto"], "--loss"),
        (["train", "--steps", "ten"], "--steps"),
        (["experiment", "bandit", "--datasets", "D9"], "--datasets"),
        (["prove", "--format", "pdf"], "--format"),
        (["verify"], "TARGET"),
        (["experiment"], "required"),
        ([], "required"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_cli_argparse_errors_exit_2_naming_the_option(argv, option, capsys):
    """argparse's own errors (unknown choice, not a number, missing subcommand): exit 2, one line naming
    the option, no traceback, no usage dump."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and option in err, err


@pytest.mark.slow
def test_cli_bad_input_in_a_real_process_prints_one_line(files, tmp_path):
    """The real entry point in a fresh interpreter: nothing else (import warnings, transformers' load report
    and progress bars) reaches stderr."""
    template, match = ["train", "--model", "{bert}", *_TRAIN], r"not a complete causal-LM checkpoint"
    out = str(tmp_path / "out")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run(
        [sys.executable, "-m", "dpo_ref", *_argv(template, files, out)],
        env=env, capture_output=True, text=True, timeout=900,  # a guard against a hang, not a time limit
    )  # fmt: skip
    _assert_one_line_exit_2(run.returncode, run.stderr, match)
    assert not os.path.exists(out)


def test_matrix_checks_bite():
    """The matrix's assertions reject what they must: a traceback, two lines, exit 1, a wrong message."""
    with pytest.raises(AssertionError):
        _assert_one_line_exit_2(2, "Traceback (most recent call last):\n  ...\nValueError: x", ".")
    with pytest.raises(AssertionError):
        _assert_one_line_exit_2(2, "dpo-ref train: error: a\ndpo-ref train: error: b", ".")
    with pytest.raises(AssertionError):
        _assert_one_line_exit_2(1, "dpo-ref train: error: --beta", "--beta")
    with pytest.raises(AssertionError):
        _assert_one_line_exit_2(2, "dpo-ref train: error: something else", "--beta")
    _assert_one_line_exit_2(2, "dpo-ref train: error: --beta must be positive\n", "--beta")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to any directory")
def test_cli_out_in_a_read_only_directory(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["train", "--data", files["good"], "--out", str(locked / "run"), *_TRAIN])
        _assert_one_line_exit_2(code, capsys.readouterr().err, r"--out .* is not writable")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------------------------- issue 20: the rest


@pytest.fixture(scope="module")
def finished_run(files, tmp_path_factory):
    """A one-step run of 8 pairs per update on 4 rows (--repeat-rows), its JSON results on standard output."""
    import contextlib
    import io

    out = str(tmp_path_factory.mktemp("finished") / "run")
    argv = ["train", "--data", files["good"], "--batch-size", "8", "--repeat-rows", *_TRAIN]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*argv, "--json", "-", "--out", out])
    return {"out": out, "argv": argv, "code": code, "stdout": stdout.getvalue()}


def test_train_repeat_rows_opts_in_and_json_dash_is_stdout(finished_run):
    """Bug 7's opt-in: with --repeat-rows an update may hold more pairs than the data. `--json -` writes the
    results on standard output, alone (the summary goes to stderr), and no file named '-'."""
    assert finished_run["code"] == 0
    results = json.loads(finished_run["stdout"])
    assert results["settings"]["batch_size"] == 8 and results["train_pairs"] == 4
    assert not os.path.exists("-")


@pytest.mark.parametrize("line", ["5", "[]", "{}", '{"step": "3"}'])
def test_resume_with_a_damaged_log_names_file_and_line(finished_run, tmp_path, capsys, line):
    """Bug 12: a metrics.jsonl line `5`, `[]` or `{}` was a TypeError; now exit 2 naming file:line and what was
    expected, before anything in --out changes."""
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(finished_run["out"], out)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(line + "\n")
    before = _snapshot(out)
    code = main([*finished_run["argv"], "--out", out, "--resume"])
    expected = r"--resume: .*metrics\.jsonl:\d+: expected a JSON object with an integer \"step\""
    _assert_one_line_exit_2(code, capsys.readouterr().err, expected)
    assert _snapshot(out) == before


def test_overwrite_never_replaces_the_model_it_trains(finished_run, files, tmp_path, capsys):
    """`--model OUT/model --out OUT --overwrite` replaced the input model; refused, OUT unchanged."""
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(finished_run["out"], out)
    before = _snapshot(out)
    argv = ["train", "--model", os.path.join(out, "model"), "--data", files["good"], "--batch-size", "4"]
    code = main([*argv, "--out", out, "--overwrite", *_TRAIN])
    expected = r"--out .* would replace .*model', which holds --model .*model', an input of this run"
    _assert_one_line_exit_2(code, capsys.readouterr().err, expected)
    assert _snapshot(out) == before


def test_data_with_a_byte_order_mark_is_read(files):
    """A UTF-8 BOM at the start of a JSONL file was refused (not valid JSON); it is read as utf-8-sig."""
    from dpo_ref.train.data import prepare_dataset
    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    assert prepare_dataset(files["bom"], tokenizer) == prepare_dataset(files["good"], tokenizer)


def test_atomic_replace_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    """A 0600 file rewritten atomically stayed private no more (0644); it keeps its mode, a new file gets the umask's."""
    from dpo_ref.atomic import write_text_atomic

    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o600)
    write_text_atomic(str(private), "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600


def test_nonfinite_loss_before_any_update_does_not_blame_the_learning_rate(files, tmp_path, capsys):
    """At step 0 the policy is the reference: a non-finite loss there comes from the coefficient (here beta
    overflows float32), and the message said "Lower --lr"."""
    argv = ["train", "--data", files["good"], "--batch-size", "4", "--beta", "1e300", "--out", str(tmp_path / "o")]
    code = main([*argv, *_TRAIN])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "at step 0" in err and "lower --beta" in err and "Lower --lr" not in err


def test_an_experiment_never_overwrites_an_earlier_run_silently(tmp_path, capsys):
    """Experiments replaced --out's results silently; now the rule train uses: refused unless --overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "overfit.csv").write_text("an earlier run")
    before = _snapshot(out)
    code = main(["experiment", "overfit", "--epochs", "1", "--betas", "0.1", "--taus", "0.1", "--out", str(out)])
    _assert_one_line_exit_2(code, capsys.readouterr().err, r"--out .* already holds overfit\.csv .*--overwrite")
    assert _snapshot(out) == before
    argv = ["experiment", "overfit", "--epochs", "1", "--betas", "0.1", "--taus", "0.1", "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "overfit.csv").read_text() != "an earlier run"


def _prove(*argv: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", *argv], env=env, cwd=ROOT, timeout=300, **kw)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", [("dpo_ref", "prove"), ("proofs",)], ids=["dpo-ref prove", "python -m proofs"])
def test_prove_to_a_full_stdout_is_one_line_exit_1(command):
    with open("/dev/full", "w") as full:
        run = _prove(*command, "--list", stdout=full, stderr=subprocess.PIPE, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "No space left" in run.stderr


def test_prove_list_honours_output_and_dash_is_stdout(tmp_path, capsys):
    """`prove --list --output f` ignored --output; `-` is standard output, as for every command."""
    path = tmp_path / "list.txt"
    assert main(["prove", "--list", "--only", "init-ln2", "--output", str(path)]) == 0
    assert path.read_text().startswith("init-ln2: ") and capsys.readouterr().out == ""
    assert main(["prove", "--list", "--only", "init-ln2", "--output", "-"]) == 0
    assert capsys.readouterr().out == path.read_text() and not os.path.exists("-")
