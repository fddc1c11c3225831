"""`dpo-ref verify --isolate`: the checks run in a child interpreter; the verdict is decided here.

What the target can do in the child is anything Python can do, so nothing the child *does* is trusted as a
verdict: not its exit status, not a file it writes, not what it prints. The child sends its report over a
pipe whose write end it received before the target was imported, signed with a per-run secret that it
read from its stdin (never in its argv or environment, so a target reading `sys.argv`, `os.environ` or a
report path cannot forge one); the parent checks the signature, re-judges the verdict from the individual
check results, and treats anything else (no report, a bad signature, bytes that are not JSON) as "the
target crashed": exit 1, never a pass.

Nothing outlives the run: the child dies with the parent (Linux `PR_SET_PDEATHSIG`); the parent is a child
subreaper while the child runs (`PR_SET_CHILD_SUBREAPER`), so a process the target daemonises (double fork,
new session, empty environment) is re-parented here instead of to init, and at the end every descendant
of the child and every orphan re-parented to us is stopped and killed; SIGTERM and SIGHUP are handled
like Ctrl-C; the scratch folder is removed on every path; the child's output streams to files (kept open
here, so the target deleting them does not lose them), copied out in chunks, never held in memory whole.

This protects a CI gate against a careless or buggy target. It is not a sandbox: a target written to
attack the gate can read the secret from the child's memory. Run untrusted code in a real sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from dpo_ref.errors import Interrupted

SECRET_BYTES = 32
MAX_MESSAGE = 64 * 2**20  # bytes read from the report pipe at most (a report is a few hundred kB)
KILL_ROUNDS = 20  # stop-and-kill passes over the descendants (a fork bomb gets this many chances to grow)
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 1, 36, 37


# ---------------------------------------------------------------------------------------------------- the channel


def sign(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest().encode()


def read_secret() -> bytes:
    """In the child, before the target is imported: the run's secret from stdin, which is then closed."""
    raw = sys.stdin.buffer.read(2 * SECRET_BYTES)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return bytes.fromhex(raw.decode("ascii"))


def send(fd: int, secret: bytes, kind: str, body: object) -> None:
    """In the child: one signed message, `kind` being "report" or "usage" (a usage error, exit 2)."""
    payload = json.dumps({"kind": kind, "body": body}).encode()
    message = sign(secret, payload) + b"\n" + payload
    view = memoryview(message)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


def open_message(secret: bytes, data: bytes) -> dict | None:
    """The message if it is signed with `secret` and well formed, else None."""
    signature, _, payload = data.partition(b"\n")
    if not hmac.compare_digest(signature, sign(secret, payload)):
        return None
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(message, dict) or message.get("kind") not in ("report", "usage"):
        return None
    return message


def judge(report: object) -> bool | None:
    """The verdict from the check results themselves (True/False), or None when `report` is not one."""
    if not isinstance(report, dict) or not isinstance(report.get("checks"), list) or not report["checks"]:
        return None
    statuses = [c.get("status") if isinstance(c, dict) else None for c in report["checks"]]
    if any(not isinstance(s, str) for s in statuses):
        return None
    passed = "failed" not in statuses
    return passed if report.get("passed") is passed else None  # a report contradicting itself is not one


# ---------------------------------------------------------------------------------------------------- processes


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _processes() -> dict[int, tuple[int, bool]]:
    """pid -> (parent pid, is a zombie) for every process we can see (Linux /proc); empty elsewhere."""
    out = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                fields = stat[stat.rfind(b")") + 2 :].split()  # the command name may hold spaces and ")"
                if len(fields) > 1:
                    out[int(name)] = (int(fields[1]), fields[0] == b"Z")
    return out


def _tree(roots: set[int], processes: dict[int, tuple[int, bool]]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        found |= frontier
        frontier = {pid for pid, (ppid, _) in processes.items() if ppid in frontier} - found
    return found


def kill_everything(child: subprocess.Popen, before: set[int]) -> None:
    """Kill the child and every process it started, wherever they went: the tree below the child, and the
    orphans re-parented to this (subreaper) process that were not our children before the run.

    The tree is stopped (SIGSTOP) before it is killed, so none forks meanwhile; a zombie still counts as a
    node, because its children are re-parented only once it is reaped. Elsewhere than Linux: the process
    group only."""
    me = os.getpid()
    for _ in range(KILL_ROUNDS):
        processes = _processes()
        ours = {pid for pid, (ppid, _) in processes.items() if ppid == me} - before
        doomed = _tree(ours | ({child.pid} & processes.keys()), processes) - {me}
        if not any(not processes[pid][1] for pid in doomed):
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        _reap(doomed - {child.pid})  # the child is reaped by Popen, which keeps its exit status
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5)
    _reap({pid for pid, (ppid, zombie) in _processes().items() if ppid == me and zombie} - before)


def _reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """This process adopts the orphans of its descendants while the block runs (Linux; a no-op elsewhere)."""
    was = ctypes.c_int(0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    except (OSError, AttributeError):
        libc = None
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        if libc is not None and not was.value:
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Interrupted` (like Ctrl-C's KeyboardInterrupt), so the cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    saved = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------------- the run


class Outcome:
    """What came back from the child: `code` (0, 1, 2), and the report's JSON and text (or `error`)."""

    def __init__(self, code: int, *, report: dict | None = None, text: str = "", error: str = ""):
        self.code, self.report, self.text, self.error = code, report, text, error


def run_child(argv: list[str], timeout: float, target: str, out_stream=None) -> Outcome:
    """Run `python -m dpo_ref *argv` in a child, relaying its stdout to `out_stream` (default: ours) and its
    stderr to ours; decide the verdict here."""
    import dpo_ref

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(dpo_ref.__file__)))
    env = {**os.environ, "PYTHONPATH": package_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    secret = secrets.token_bytes(SECRET_BYTES)
    scratch = tempfile.mkdtemp(prefix="dpo-ref-verify-")
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    child = None
    try:
        with (
            open(os.path.join(scratch, "stdout"), "w+b") as out_f,
            open(os.path.join(scratch, "stderr"), "w+b") as err_f,
            signals_as_interrupts(),
            subreaper(),
        ):
            before = set(_children())
            command = [sys.executable, "-m", "dpo_ref", *argv, "--report-fd", str(write_end)]
            child = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out_f,
                stderr=err_f,
                pass_fds=(write_end,),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            os.close(write_end)
            write_end = -1
            reader = threading.Thread(target=_read_all, args=(read_end, chunks), daemon=True)
            reader.start()
            with contextlib.suppress(BrokenPipeError):
                child.stdin.write(secret.hex().encode())
                child.stdin.close()
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return Outcome(
                    1,
                    error=f"{target} did not finish within {timeout:g} s (a hang?); the child process was killed "
                    "(--timeout sets the limit)",
                )
            finally:
                kill_everything(child, before)  # whatever the target left running, on every path
                reader.join(timeout=5)
            message = open_message(secret, b"".join(chunks))
            _relay(out_f, out_stream or sys.stdout)
            _relay(err_f, sys.stderr)
            return _outcome(message, child.returncode, err_f, target)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)


def _outcome(message: dict | None, returncode: int, err_f, target: str) -> Outcome:
    if message is not None and message["kind"] == "usage" and isinstance(message["body"], str):
        return Outcome(2, error=message["body"])
    body = message["body"] if message is not None else None
    verdict = judge(body.get("report")) if isinstance(body, dict) else None
    if verdict is None or not isinstance(body.get("text"), str):
        how = f"killed by signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
        if returncode == 0:
            how += "; no signed report came back"
        last = _last_line(err_f)
        if last:
            how += f"; its last message: {last}"
        return Outcome(1, error=f"{target} ended the interpreter before the checks finished ({how})")
    return Outcome(0 if verdict else 1, report=body["report"], text=body["text"])


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (ppid, _) in _processes().items() if ppid == me]


def _read_all(fd: int, chunks: list[bytes]) -> None:
    total = 0
    with contextlib.suppress(OSError):
        while block := os.read(fd, 1 << 16):
            total += len(block)
            if total <= MAX_MESSAGE:
                chunks.append(block)


def _relay(f, stream) -> None:
    """Copy a child's output file to `stream` in chunks (a target that prints 300 MB costs no memory here)."""
    f.flush()
    f.seek(0)
    stream.flush()
    try:
        shutil.copyfileobj(f, stream.buffer if hasattr(stream, "buffer") else _TextSink(stream), 1 << 20)
        stream.flush()
    except (OSError, ValueError):  # our own stdout closed or full: the exit status still carries the verdict
        pass


class _TextSink:
    """A binary write() onto a text stream (pytest's capture has no .buffer)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data.decode("utf-8", errors="replace"))


def _last_line(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4096))
    lines = f.read().decode("utf-8", errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
