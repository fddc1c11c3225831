"""The gate holds: `dpo-ref verify`'s exit status is the verdict, whatever the target does.

A hostile corpus: each target is a *wrong* DPO loss (it forgets the reference model) that also tries to
change the outcome: exit 0 from an exit handler, `os._exit`, a thread, a signal handler or `__del__`; forge
a report; fork, daemonise, change session or ignore SIGTERM; spam stdout; close its file descriptors.
Every one must give exit 1, and under `--isolate` no process it started and no scratch folder may remain.
The real console path is used (`python -m dpo_ref`, a fresh interpreter per run), since what is under test
is how the process ends. Run against the gate before this change, 13 of these 25 tests fail
(4 wrong targets exit 0 in-process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="process checks read /proc (Linux)")

WRONG_LOSS = """
import torch.nn.functional as F

def loss(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * (pc - pr))  # the reference model forgotten: must not conform
"""

RIGHT_LOSS = """
import torch.nn.functional as F

def loss(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
"""

# name -> (module prelude; the string PIDS is replaced by a file where the target logs the pids it starts)
HOSTILE = {
    "atexit os._exit(0)": "import atexit, os\natexit.register(lambda: os._exit(0))",
    "atexit sys.exit(0)": "import atexit, sys\natexit.register(sys.exit, 0)",
    "__del__ os._exit(0)": """
        import os
        class Leaver:
            def __del__(self):
                os._exit(0)
        keep = Leaver()
        """,
    "thread exits after main": """
        import os, threading
        def wait_then_exit():
            threading.main_thread().join()
            os._exit(0)
        threading.Thread(target=wait_then_exit).start()
        """,
    "sys.exit(0) inside the loss": "",  # see LOSS_OVERRIDES
    "closes stdout": "import os\nos.close(1)",
    "spams stdout": "import sys\nsys.stdout.write(('x' * 1023 + '\\n') * 20_000)",  # 20 MB
}

# only under --isolate: in the verify process itself nothing can stop a target that ends it mid-run
HOSTILE_ISOLATED = {
    "thread os._exit(0) mid-run": """
        import os, threading, time
        threading.Thread(target=lambda: (time.sleep(0.5), os._exit(0)), daemon=True).start()
        """,
    "SIGALRM handler os._exit(0)": """
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        """,
    "forges the --json report": """
        import json, os, sys
        if "--json" in sys.argv:
            open(sys.argv[sys.argv.index("--json") + 1], "w").write(json.dumps({"passed": True, "checks": []}))
        for i, a in enumerate(sys.argv):
            if a.startswith("--report"):
                os.write(int(sys.argv[i + 1]), b'{"kind": "report", "body": {"report": {"passed": true}}}')
        os._exit(0)
        """,
    "writes non-UTF-8 on the report fd": """
        import os, sys
        fd = int(sys.argv[sys.argv.index("--report-fd") + 1])
        os.write(fd, b"\\xff\\xfe\\n\\xff")
        """,
    "deletes the scratch folder": """
        import os, shutil
        shutil.rmtree(os.path.dirname(os.readlink("/proc/self/fd/1")), ignore_errors=True)
        """,
    "daemonises (double fork, new session, empty env)": """
        import os, subprocess, sys
        code = ("import os, time\\nif os.fork(): os._exit(0)\\nos.setsid()\\n"
                "open(%r, 'a').write(str(os.getpid()) + '\\\\n')\\ntime.sleep(3600)" % PIDS)
        subprocess.Popen([sys.executable, "-c", code], env={}, start_new_session=True).wait()
        """,
    "forks a child that ignores SIGTERM": """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(PIDS, "a").write(str(os.getpid()) + "\\n")
            time.sleep(3600)
            os._exit(0)
        """,
}

LOSS_OVERRIDES = {
    "sys.exit(0) inside the loss": """
import sys

def loss(pc, pr, rc, rr, beta=0.1):
    sys.exit(0)
"""
}


def _target(tmp_path: Path, name: str, prelude: str, loss: str = WRONG_LOSS) -> tuple[str, Path]:
    pids = tmp_path / "pids"
    source = textwrap.dedent(prelude).replace("PIDS", repr(str(pids))) + "\n" + LOSS_OVERRIDES.get(name, loss)
    path = tmp_path / "target.py"
    path.write_text(source)
    return f"{path}:loss", pids


def _verify(target: str, tmp_path: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "dpo_ref", "verify", target, "--max-examples", "2", "--checks", "values", *extra]
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.run(argv, capture_output=True, cwd=ROOT, env=env, timeout=timeout)


def _alive(pids_file: Path) -> list[int]:
    """The logged pids that are still running (a zombie is dead: only its parent's wait is missing)."""
    if not pids_file.exists():
        return []
    alive = []
    for pid in map(int, pids_file.read_text().split()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] != "Z":
            alive.append(pid)
    return alive


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _assert_nothing_left(tmp_path: Path, pids: Path) -> None:
    time.sleep(0.3)
    left = _alive(pids)
    _kill(left)  # never leave them to the next test, even when this one fails
    assert left == [], f"processes the target started are still running: {left}"
    assert not [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("dpo-ref-verify-")], "scratch left"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_in_process_a_hostile_wrong_target_fails_the_gate(tmp_path, name):
    target, _ = _target(tmp_path, name, HOSTILE[name])
    out = _verify(target, tmp_path)
    assert out.returncode == 1, (out.returncode, out.stderr.decode(errors="replace")[-2000:])
    assert b"Traceback" not in out.stderr


@pytest.mark.slow  # one child interpreter per target
@pytest.mark.parametrize("name", sorted({**HOSTILE, **HOSTILE_ISOLATED}))
def test_isolated_a_hostile_wrong_target_fails_the_gate_and_leaves_nothing(tmp_path, name):
    target, pids = _target(tmp_path, name, {**HOSTILE, **HOSTILE_ISOLATED}[name])
    out = _verify(target, tmp_path, "--isolate", "--timeout", "120")
    assert out.returncode == 1, (out.returncode, out.stderr.decode(errors="replace")[-2000:])
    assert b"Traceback" not in out.stderr.split(b"\n")[-2:][0]  # the parent's own last line is one sentence
    _assert_nothing_left(tmp_path, pids)


def test_isolated_atexit_exit_zero_and_forged_report_fail(tmp_path):
    """The two bugs that let a wrong loss through, in the quick tier."""
    for name in ("atexit os._exit(0)", "forges the --json report"):
        target, _ = _target(tmp_path, name, {**HOSTILE, **HOSTILE_ISOLATED}[name])
        out = _verify(target, tmp_path, "--isolate", "--json", str(tmp_path / "report.json"))
        assert out.returncode == 1, (name, out.stderr.decode(errors="replace")[-2000:])
        assert not (tmp_path / "report.json").exists() or '"passed": false' in (tmp_path / "report.json").read_text()


@pytest.mark.slow
def test_a_hostile_but_correct_target_still_conforms(tmp_path):
    """The gate is not simply failing everything odd: a correct loss with an exit-0 atexit handler and a
    daemonised grandchild conforms (exit 0), with and without --isolate, and the grandchild is killed."""
    prelude = (
        HOSTILE["atexit os._exit(0)"]
        + "\n"
        + textwrap.dedent(HOSTILE_ISOLATED["daemonises (double fork, new session, empty env)"])
    )
    target, pids = _target(tmp_path, "correct", prelude, loss=RIGHT_LOSS)
    out = _verify(target, tmp_path, "--isolate")
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    assert b"CONFORMS" in out.stdout
    _assert_nothing_left(tmp_path, pids)


@pytest.mark.slow
def test_sigterm_to_the_parent_kills_the_child_and_its_descendants(tmp_path):
    prelude = HOSTILE_ISOLATED["forks a child that ignores SIGTERM"]
    hang = "import time\n\ndef loss(pc, pr, rc, rr, beta=0.1):\n    time.sleep(3600)\n"
    target, pids = _target(tmp_path, "hang", prelude, loss=hang)
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, "-m", "dpo_ref", "verify", target, "--isolate", "--max-examples", "2"]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    parent = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids), "the target never started"
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 128 + signal.SIGTERM, err
    _assert_nothing_left(tmp_path, pids)


def test_the_signed_channel_rejects_what_a_target_could_write():
    """The parent's acceptance rule, as a unit: a message counts only with the run's secret, as JSON, and with a
    verdict its own check results agree with."""
    import json

    from dpo_ref.oracle import isolate

    secret = b"s" * isolate.SECRET_BYTES
    report = {"passed": True, "checks": [{"name": "values", "status": "passed"}]}
    payload = json.dumps({"kind": "report", "body": {"report": report, "text": ""}}).encode()
    assert isolate.open_message(secret, isolate.sign(secret, payload) + b"\n" + payload) is not None
    assert isolate.open_message(b"t" * isolate.SECRET_BYTES, isolate.sign(secret, payload) + b"\n" + payload) is None
    assert isolate.open_message(secret, payload) is None  # unsigned
    bad = b"\xff\xfe"
    assert isolate.open_message(secret, isolate.sign(secret, bad) + b"\n" + bad) is None  # signed, not UTF-8 JSON
    assert isolate.judge(report) is True
    assert isolate.judge({**report, "checks": [{"name": "values", "status": "failed"}]}) is None  # contradicts
    assert isolate.judge({"passed": False, "checks": [{"name": "values", "status": "failed"}]}) is False
    assert isolate.judge({"passed": True, "checks": []}) is None  # no checks ran: not a pass


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_a_usage_error_is_exit_2_through_the_console(tmp_path, isolate):
    """docs/guarantees.md, "What the gate promises": 2 is a usage error (here a target whose import fails), from the
    real console with and without --isolate (the child's usage error is relayed, signed, as 2)."""
    path = tmp_path / "target.py"
    path.write_text("import no_such_module_for_the_gate\n")
    out = _verify(f"{path}:loss", tmp_path, *(["--isolate"] if isolate else []))
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 2, err
    assert "Traceback" not in err and "importing it raised ModuleNotFoundError" in err.strip().splitlines()[-1]


def test_in_process_a_target_that_ends_the_interpreter_mid_run_decides_the_status(tmp_path):
    """The documented limit: without --isolate, a target calling os._exit(0) while being checked ends verify with
    its own status, before any verdict (nothing printed after the header). --isolate turns the same into exit 1."""
    leaves = "import os\n\ndef loss(pc, pr, rc, rr, beta=0.1):\n    os._exit(0)\n"
    target, _ = _target(tmp_path, "leaves", "", loss=leaves)
    out = _verify(target, tmp_path)
    assert out.returncode == 0 and b"CONFORMS" not in out.stdout
    isolated = _verify(target, tmp_path, "--isolate")
    assert isolated.returncode == 1 and b"no signed report came back" in isolated.stderr


@pytest.mark.slow
def test_sigkill_to_the_parent_takes_the_child_with_it(tmp_path):
    """SIGKILL leaves the parent no cleanup: the child still dies with it (PR_SET_PDEATHSIG)."""
    prelude = "import os\nopen(PIDS, 'a').write(str(os.getpid()) + '\\n')"  # the child itself logs its pid
    hang = "import time\n\ndef loss(pc, pr, rc, rr, beta=0.1):\n    time.sleep(3600)\n"
    target, pids = _target(tmp_path, "hang", prelude, loss=hang)
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, "-m", "dpo_ref", "verify", target, "--isolate", "--max-examples", "2"]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    parent = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(pids), "the target never started"
    parent.kill()
    parent.wait(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(pids)
    _kill(left)
    assert left == [], "the child outlived its parent"
