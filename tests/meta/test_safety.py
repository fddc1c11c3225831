"""Safety: nothing unpickles untrusted data, custom model code runs only on request, outputs are safetensors."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dpo_ref", "proofs")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """What in `source` could execute code hidden in data: a pickle-family import, `torch.load` without
    `weights_only=True`, `numpy.load(allow_pickle=True)`, or a literal `trust_remote_code=True`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{where} imports torch.load by name (its calls could not be checked)")
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            name = ast.unparse(node.func)
            if name == "torch.load" or name.endswith(".torch.load"):
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where} calls {name} without weights_only=True")
            allow = keywords.get("allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                found.append(f"{where} calls {name} with allow_pickle=True")
            remote = keywords.get("trust_remote_code")
            if isinstance(remote, ast.Constant) and remote.value is True:
                found.append(f"{where} calls {name} with trust_remote_code=True")
    return found


def _package_sources() -> list[Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    assert len(files) > 10  # the scan sees the package
    return files


def test_package_source_has_no_unsafe_loading():
    found = [f for path in _package_sources() for f in unsafe_calls(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import dill as d",
        "from pickle import loads",
        "from joblib import load",
        "import torch\nstate = torch.load(path)",
        "import torch\nstate = torch.load(path, weights_only=False)",
        "from torch import load",
        "import numpy as np\nx = np.load(path, allow_pickle=True)",
        "m = AutoModel.from_pretrained(path, trust_remote_code=True)",
    ],
)
def test_the_scan_catches_each_unsafe_pattern(snippet):
    assert len(unsafe_calls(snippet)) == 1


def test_the_scan_passes_safe_code():
    safe = "import torch\nstate = torch.load(path, weights_only=True)\nm = f(path, trust_remote_code=flag)"
    assert unsafe_calls(safe) == []


# ---------------------------------------------------------------------------------------------- outputs


def _is_safetensors(path: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return 8 + n <= len(data) and isinstance(json.loads(data[8 : 8 + n]), dict)


def test_checkpoints_and_weights_are_safetensors(tmp_path):
    from dpo_ref.train.loop import TrainConfig, train
    from dpo_ref.train.tasks import ReversalTask, reversal_rows

    rows, _ = reversal_rows(ReversalTask(train_size=8, eval_size=4, max_len=3))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(out), steps=1, sft_steps=1, batch_size=4, progress=False))
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    weights = [p for p in written if not p.endswith((".json", ".jsonl", ".jinja", ".txt"))]
    assert weights == ["checkpoint.safetensors", "model/model.safetensors", "sft.safetensors"], written
    assert all(_is_safetensors(out / p) for p in weights)
    assert not _is_safetensors(data)  # the format check is not vacuous


def test_a_model_directory_is_read_from_safetensors_never_from_a_pickle(tmp_path):
    """Weights only as `pytorch_model.bin` are refused (test_bad_inputs); beside safetensors the pickle is never
    opened: here it is not even a pickle, and the weights loaded are the safetensors' bit for bit."""
    import torch

    from dpo_ref.train.model import build_tiny_model, load_model_and_tokenizer
    from dpo_ref.train.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    saved = build_tiny_model(tokenizer, seed=7)
    saved.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle: reading this file would fail")
    loaded, _ = load_model_and_tokenizer(str(tmp_path))
    expected, got = saved.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not torch.equal(build_tiny_model(tokenizer, seed=8).state_dict()["lm_head.weight"], got["lm_head.weight"])


# ---------------------------------------------------------------------------------------------- remote code

EVIL_CONFIG = {
    "model_type": "custom_llama_for_dpo_ref_tests",
    "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"},
}
EVIL_CODE = """
open({marker!r}, "w").close()  # proof that this file ran
from transformers import PretrainedConfig

class CustomConfig(PretrainedConfig):
    model_type = "custom_llama_for_dpo_ref_tests"
"""


@pytest.fixture()
def custom_code_model(tmp_path):
    """A model directory whose config asks for its own Python code, which leaves a marker file when it runs."""
    from dpo_ref.train.tokenizer import build_char_tokenizer

    directory = tmp_path / "custom"
    build_char_tokenizer().save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(EVIL_CONFIG))
    (directory / "custom.py").write_text(EVIL_CODE.format(marker=str(directory / "CODE_RAN")))
    return directory


def _load_in_child(directory: Path, trust: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    # a child with its own HF_MODULES_CACHE: transformers copies remote code there before running it
    code = (
        "from dpo_ref.train.model import load_model_and_tokenizer\n"
        f"load_model_and_tokenizer({str(directory)!r}, trust_remote_code={trust})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)


def test_custom_model_code_never_runs_without_the_flag(custom_code_model, tmp_path):
    from dpo_ref.cli import main
    from dpo_ref.errors import InputError
    from dpo_ref.train.model import load_model_and_tokenizer

    with pytest.raises(InputError, match="custom code .*--trust-remote-code"):
        load_model_and_tokenizer(str(custom_code_model))
    assert main(["train", "--model", str(custom_code_model), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert not (custom_code_model / "CODE_RAN").exists()
    # the check is sharp: with the flag, transformers does import and run the directory's code
    child = _load_in_child(custom_code_model, True, tmp_path)
    assert (custom_code_model / "CODE_RAN").exists(), child.stderr[-2000:]
