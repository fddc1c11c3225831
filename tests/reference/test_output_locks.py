"""One lock rule for every writing command (dpo_ref/atomic.py, issue 20).

Each command of `WRITERS` is run while another process holds the lock of one of its outputs: it must exit 2
with one line naming that process, and leave the output as it was. A meta-test reads every subcommand's
parser, so a new command (or a new output option) that is not in the table fails here: the rule cannot be
forgotten. The lock machinery itself is tested against a second, independent holder (a child process), never
only against itself in one process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from dpo_ref.atomic import OutputLocks, hold, holder, lock_path, release_held

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
HOLD = """
import sys, time
from dpo_ref.atomic import OutputLocks
OutputLocks({"x": sys.argv[1]}, ("x",) if sys.argv[2] == "dir" else ()).acquire()
print("locked", flush=True)
time.sleep(600)
"""
LOSS = """import torch

def loss(pc, pr, rc, rr, beta=0.1):
    return -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))
"""
TRAIN = ["--sft-steps", "0", "--steps", "1", "--no-progress"]

# command -> (argv template, the output option held, whether it is a directory); {t} is the test's folder
WRITERS = {
    "train --out": (["train", "--out", "{t}/run", *TRAIN], "{t}/run", True),
    "train --json": (["train", "--out", "{t}/run", "--json", "{t}/r.json", *TRAIN], "{t}/r.json", False),
    "experiment overfit --out": (["experiment", "overfit", "--out", "{t}/o", "--epochs", "1"], "{t}/o", True),
    "experiment overfit --json": (
        ["experiment", "overfit", "--out", "{t}/o", "--epochs", "1", "--json", "{t}/o.json"],
        "{t}/o.json",
        False,
    ),
    "experiment displacement --out": (["experiment", "displacement", "--out", "{t}/d", "--steps", "1"], "{t}/d", True),
    "experiment displacement --json": (
        ["experiment", "displacement", "--out", "{t}/d", "--steps", "1", "--json", "{t}/d.json"],
        "{t}/d.json",
        False,
    ),
    "experiment bandit --out": (["experiment", "bandit", "--out", "{t}/b", "--steps", "1"], "{t}/b", True),
    "experiment bandit --json": (
        ["experiment", "bandit", "--out", "{t}/b", "--steps", "1", "--json", "{t}/b.json"],
        "{t}/b.json",
        False,
    ),
    "verify --json": (["verify", "{t}/loss.py:loss", "--json", "{t}/v.json"], "{t}/v.json", False),
    "verify --isolate --json": (
        ["verify", "{t}/loss.py:loss", "--isolate", "--json", "{t}/v.json"],
        "{t}/v.json",
        False,
    ),
    "matrix --out": (["matrix", "--out", "{t}/m"], "{t}/m", True),
    "matrix --readme": (["matrix", "--out", "{t}/m", "--readme", "{t}/README.md"], "{t}/README.md", False),
    "bench --json": (["bench", "--json", "{t}/bench.json"], "{t}/bench.json", False),
    "prove --output": (["prove", "--only", "init-ln2", "--output", "{t}/p.md"], "{t}/p.md", False),
}
OUTPUT_DESTS = ("out", "json", "readme", "output")  # the options through which a command writes files


@pytest.fixture
def held():
    """Start a child process holding the lock of an output; yields start(path, directory) -> the child."""
    children = []

    def start(path: str, directory: bool) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD, path, "dir" if directory else "file"],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


def _snapshot(folder: str) -> dict[str, bytes]:
    out = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _prepare(t: str) -> None:
    for sub in ("run", "o", "d", "b", "m"):
        os.makedirs(os.path.join(t, sub))
        with open(os.path.join(t, sub, "keep.txt"), "w") as f:
            f.write("an earlier file\n")
    for name in ("r.json", "o.json", "d.json", "b.json", "v.json", "bench.json", "p.md"):
        with open(os.path.join(t, name), "w") as f:
            f.write("an earlier output\n")
    with open(os.path.join(t, "README.md"), "w") as f:
        f.write("# readme\n<!-- compliance-summary:start -->\n<!-- compliance-summary:end -->\n")
    with open(os.path.join(t, "loss.py"), "w") as f:
        f.write(LOSS)


@pytest.mark.parametrize("command", list(WRITERS))
def test_a_command_whose_output_is_in_use_exits_2_naming_the_holder_and_writes_nothing(command, tmp_path, held, capsys):
    from dpo_ref.cli import main

    if command.startswith("bench"):
        pytest.importorskip("trl")
    template, output, directory = WRITERS[command]
    t = str(tmp_path)
    _prepare(t)
    output = output.format(t=t)
    child = held(output, directory)
    before = _snapshot(t)
    code = main([a.format(t=t) for a in template])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1, err
    assert f"is in use by another dpo-ref process (pid {child.pid} on " in lines[0], lines[0]
    assert repr(output) in lines[0] or repr(os.path.relpath(output)) in lines[0], lines[0]
    assert _snapshot(t) == before  # nothing written, nothing removed (the holder's lock file included)


def _writing_commands() -> dict[str, set[str]]:
    """Every (sub)command of the CLI -> the output options its parser has."""
    from dpo_ref.cli import build_parser

    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}".strip())
            elif action.dest in OUTPUT_DESTS and action.option_strings:
                found.setdefault(name, set()).add(action.option_strings[-1])

    walk(build_parser(None), "")
    return found


def test_every_writing_command_and_output_option_is_in_the_lock_table():
    covered = {(k.rsplit(" ", 1)[0].replace(" --isolate", ""), k.rsplit(" ", 1)[1]) for k in WRITERS}
    missing = [(c, o) for c, options in _writing_commands().items() for o in options if (c, o) not in covered]
    assert not missing, f"writing commands without a lock test (add them to WRITERS): {missing}"


def test_the_meta_test_sees_the_commands():
    """The table check above is not vacuous: the parser walk finds the writing commands it must cover."""
    found = _writing_commands()
    assert found["train"] == {"--out", "--json"} and found["matrix"] == {"--out", "--readme"}
    assert found["experiment overfit"] >= {"--out", "--json"} and "--output" in found["prove"]


# ---------------------------------------------------------------------------------------------- the lock itself


def test_a_lock_taken_here_is_seen_by_another_process_and_dropped_when_released(tmp_path):
    out = str(tmp_path / "o.json")
    locks = OutputLocks({"--json": out}).acquire()
    probe = "import sys; from dpo_ref.atomic import holder; print(holder(sys.argv[1], False))"
    seen = subprocess.run([sys.executable, "-c", probe, out], env=ENV, capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == f"pid {os.getpid()} on {os.uname().nodename}"
    locks.release()
    assert not os.path.exists(lock_path(out, False))  # the lock file is removed with the lock
    seen = subprocess.run([sys.executable, "-c", probe, out], env=ENV, capture_output=True, text=True, check=True)
    assert seen.stdout.strip() == "None"


def test_a_killed_holder_never_blocks_the_next_command(tmp_path, held):
    out = str(tmp_path / "o.json")
    child = held(out, False)
    assert holder(out, False) == f"pid {child.pid} on {os.uname().nodename}"
    with pytest.raises(Exception, match="in use by another dpo-ref process"):
        OutputLocks({"--json": out}).acquire()
    child.kill()
    child.wait()
    assert os.path.exists(lock_path(out, False))  # stale file left by the kill
    assert holder(out, False) is None
    with OutputLocks({"--json": out}):
        assert holder(out, False) is None or holder(out, False).startswith(f"pid {os.getpid()} ")


def test_two_spellings_of_one_output_share_one_lock(tmp_path, held):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    held(str(tmp_path / "real" / "o.json"), False)
    with pytest.raises(Exception, match="in use"):
        OutputLocks({"--json": str(tmp_path / "link" / ".." / "real" / "o.json")}).acquire()
    with pytest.raises(Exception, match="in use"):
        OutputLocks({"--json": str(tmp_path / "link" / "o.json")}).acquire()


def test_a_directory_created_for_a_lock_is_removed_when_left_empty(tmp_path):
    new = tmp_path / "new"
    with OutputLocks({"--out": str(new)}, directories=("--out",)):
        assert (new / ".lock").exists()
    assert not new.exists()  # a failed run leaves no empty --out
    kept = tmp_path / "kept"
    with OutputLocks({"--out": str(kept)}, directories=("--out",)):
        (kept / "result.csv").write_text("x\n")
    assert sorted(os.listdir(kept)) == ["result.csv"]


def test_hold_keeps_the_lock_until_the_command_ends(tmp_path):
    out = str(tmp_path / "o.json")
    hold({"--json": out})
    try:
        with pytest.raises(Exception, match="in use"):  # a second holder, even in this process, is refused
            OutputLocks({"--json": out}).acquire()
    finally:
        release_held()
    assert holder(out, False) is None and not os.path.exists(lock_path(out, False))


def test_standard_output_is_never_locked(tmp_path):
    with OutputLocks({"--json": "-", "--out": None}) as locks:
        assert not locks.held


def test_a_finished_command_leaves_no_lock_behind(tmp_path, capsys):
    from dpo_ref.cli import main

    out = tmp_path / "p.md"
    assert main(["prove", "--only", "init-ln2", "--output", str(out)]) == 0
    assert out.exists() and sorted(os.listdir(tmp_path)) == ["p.md"]
