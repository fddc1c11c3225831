"""`dpo-ref verify` on the command line: exit 0 conforms, 1 a check failed, 2 usage or import error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_ref.cli import main

ROOT = Path(__file__).resolve().parents[2]
TARGETS = os.path.relpath(Path(__file__).resolve().parents[1] / "corpus", ROOT)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_conforming_target_exits_0(capsys):
    code = main(["verify", f"{TARGETS}/loss_correct.py:scalar_mean", "--max-examples", "5", "--checks", "values"])
    out = capsys.readouterr().out
    assert code == 0
    assert "CONFORMS" in out and "mean over the batch" in out


def test_broken_target_exits_1_with_reproduction_and_json(capsys, tmp_path):
    path = tmp_path / "report.json"
    code = main(
        [
            "verify",
            f"{TARGETS}/loss_broken.py:reference_unused",
            "--max-examples",
            "10",
            "--checks",
            "values,init",
            "--json",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL values" in out and "reproduction:" in out and "DOES NOT CONFORM" in out
    data = json.loads(path.read_text())
    assert data["passed"] is False
    failed = {c["name"] for c in data["checks"] if c["status"] == "failed"}
    assert failed == {"values", "init"}
    assert all(c["reproduction"] for c in data["checks"] if c["status"] == "failed")


def test_json_to_stdout(capsys):
    code = main(["verify", "dpo_ref.losses:dpo_loss", "--max-examples", "3", "--checks", "values", "--json", "-"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_logps_level_and_average_option(capsys):
    args = ["verify", f"{TARGETS}/logps_correct.py:averaged", "--level", "logps", "--max-examples", "5"]
    assert main(args + ["--checks", "logps_values"]) == 1  # the sum convention is the default
    assert main(args + ["--checks", "logps_values", "--average"]) == 0
    assert main(args + ["--checks", "logps_values", "--variant", "ipo-mean"]) == 0  # ipo-mean implies --average
    capsys.readouterr()


def test_xfail_file(capsys, tmp_path):
    xfail = tmp_path / "xfail.txt"
    xfail.write_text("# known\nvalues  # lost reference\n")
    args = ["verify", f"{TARGETS}/loss_broken.py:reference_unused", "--max-examples", "5", "--checks", "values"]
    assert main(args + ["--xfail-file", str(xfail)]) == 0
    assert "xfail" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["nothing.py:f"], "does not exist"),
        ([f"{TARGETS}/loss_broken.py:nope"], "has no attribute"),
        (["no_such_pkg_xyz:f"], "cannot import module"),
        ([f"{TARGETS}/loss_correct.py:per_example", "--label-smoothing", "0.1"], "cdpo only"),
        ([f"{TARGETS}/loss_correct.py:per_example", "--max-examples", "0"], "--max-examples"),
        ([f"{TARGETS}/loss_correct.py:per_example", "--level", "library"], "built-in adapters"),
        ([f"{TARGETS}/loss_correct.py:per_example", "--xfail-file", "missing.txt"], "cannot be read"),
        (["trl", "--level", "loss"], "no standalone loss"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, args, words):
    assert main(["verify", *args]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.slow
def test_real_process_exit_codes_and_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = [sys.executable, "-m", "dpo_ref", "verify"]
    bad = subprocess.run(run + ["missing.py:f"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    broken = subprocess.run(
        run + [f"{TARGETS}/loss_broken.py:wrong_sign", "--max-examples", "5", "--checks", "values", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert broken.returncode == 1, broken.stderr
    assert "FAIL values" in broken.stdout and "reproduction" not in broken.stdout  # -q: no snippets


def test_isolate_passes_every_option_on_to_the_child():
    """`--isolate` re-runs the same verification in a child: each option must reach the child's argv (a flag
    dropped here would silently verify something else in the child)."""
    import argparse

    from dpo_ref.oracle import cli as oracle_cli

    parser = argparse.ArgumentParser()
    oracle_cli.register(parser.add_subparsers(dest="command"))
    flags = ["--strict", "--fail-fast", "-q", "--reduction", "sum", "--max-examples", "7", "--checks", "values"]
    args = parser.parse_args(["verify", "t.py:f", "--variant", "cdpo", "--label-smoothing", "0.2", *flags])
    child = oracle_cli.child_argv(args)
    for flag in ("--strict", "--fail-fast", "-q"):
        assert flag in child, (flag, child)
    for flag, value in (("--reduction", "sum"), ("--max-examples", "7"), ("--checks", "values"), ("--variant", "cdpo")):
        assert child[child.index(flag) + 1] == value, child
    assert float(child[child.index("--label-smoothing") + 1]) == 0.2
    bare = oracle_cli.child_argv(parser.parse_args(["verify", "t.py:f"]))
    assert "--fail-fast" not in bare and "--strict" not in bare


def test_a_target_file_imports_the_module_beside_it(tmp_path):
    """As `python file.py` would: the target file's folder is on sys.path, so `import helpers` finds its sibling."""
    import subprocess
    import sys

    (tmp_path / "my_helpers.py").write_text(
        "import torch.nn.functional as F\n\ndef dpo(h, beta):\n    return -F.logsigmoid(beta * h)\n"
    )
    (tmp_path / "my_loss.py").write_text(
        "from my_helpers import dpo\n\n\ndef loss(pc, pr, rc, rr, beta=0.1):\n"
        "    return dpo((pc - rc) - (pr - rr), beta)\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "dpo_ref", "verify", f"{tmp_path}/my_loss.py:loss", "--max-examples", "3"],
        capture_output=True, text=True, cwd="/", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
