"""Write a file so that it is either absent, the old version, or complete: never half-written.

The content goes to a temporary file in the destination's directory (so the rename stays on one
filesystem) and is moved into place with `os.replace`, which is atomic on POSIX and Windows. On any
error the temporary file is removed. No torch import: the proofs CLI uses this too.

A new file gets the permissions a plain `open(path, "w")` would give (0666 less the umask), not the 0600
of `mkstemp` or of safetensors' `save_file` (set once the writer is done); a file replaced keeps its own
mode, as writing into it would. A symbolic link at `path` is
followed (its target is replaced, the link stays); a FIFO, device or directory at `path` is refused
(`check_output_file`), never replaced by a regular file.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator

from dpo_ref.errors import InputError


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only read by setting)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_permissions(path: str) -> None:
    """Give the regular files at or under `path` the mode `open(path, "w")` would: 0666 less the umask. For
    what other writers created 0600 (mkstemp, safetensors' save_file), so that others can read a saved model."""
    mode = 0o666 & ~_umask()
    if not os.path.isdir(path):
        os.chmod(path, mode)
        return
    for parent, _, names in os.walk(path):
        for name in names:
            file = os.path.join(parent, name)
            if os.path.isfile(file) and not os.path.islink(file):
                os.chmod(file, mode)


def special_file_kind(path: str) -> str | None:
    """What `path` is when it exists but is not a regular file ("a directory", "a FIFO (named pipe)", "a
    device", ...), else None; follows links, never opens the file (opening a FIFO blocks)."""
    if not os.path.exists(path):
        return None
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


STDOUT = "-"  # an output path of "-" means standard output, for every command that writes a file


def check_output_file(path: str, option: str) -> str:
    """InputError unless `path` can be written as a regular file (absent, a file, or a link to one) in an
    existing directory, or is "-" (standard output); returns the path to write (a link's target). Reads only."""
    if path == STDOUT:
        return path
    if not path:
        raise InputError(f"{option} is empty; expected a path (or - for standard output)")
    target = os.path.realpath(path)
    kind = special_file_kind(target)
    if kind:
        raise InputError(f"{option} {path!r} is {kind}; expected a path to a regular file")
    if not os.path.isdir(os.path.dirname(target)):
        raise InputError(f"{option} {path!r}: its directory does not exist")
    return target


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp", prefix: str | None = None) -> Iterator[str]:
    """Yield a temporary path next to `path`; on normal exit move it onto `path`, else delete it.

    `prefix` names the temporary file (default `.<name>.`), e.g. so that a later run can find and
    remove what a killed writer left behind.
    """
    path = check_output_file(path, "output")
    directory = os.path.dirname(path)
    prefix = f".{os.path.basename(path)}." if prefix is None else prefix
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        # after writing: a writer may replace the file rather than write into it (safetensors' save_file
        # writes its own temporary file, mode 0600, and renames it onto `tmp`). A file replaced keeps its mode
        # (a 0600 file stays private); a new one gets the umask's
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            give_umask_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_output(path: str, text: str) -> None:
    """Write `text` to `path` atomically, or to standard output when `path` is "-" (`STDOUT`)."""
    if path == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(path, text)


def check_apart(
    inputs: dict[str, str | None], outputs: dict[str, str | None], owned: dict[str, tuple[str, ...]] | None = None
) -> None:
    """InputError when an output would write over an input or over another output, however the paths are
    spelled (links, `..`): compared by `os.path.realpath`. `inputs` and `outputs` map an option to its path
    (None: not given; "-": standard output). A directory output lists in `owned` the names it writes (or
    clears) inside itself; it may hold other files, inputs included. An output inside an input directory
    (a `--json` inside `--model`) is refused too. Reads only."""
    owned = owned or {}

    def spans(option: str, path: str) -> list[str]:
        base = os.path.realpath(path)
        return [os.path.join(base, n) for n in owned[option]] if option in owned else [base]

    def within(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip(os.sep) + os.sep)

    written = [(o, p, w) for o, p in outputs.items() if p and p != STDOUT for w in spans(o, p)]
    read = [(o, p, os.path.realpath(p)) for o, p in inputs.items() if p and p != STDOUT]
    for o, p, w in written:
        for i, ip, r in read:
            if r == w == os.path.realpath(p):
                problem = f"is the same file as {i} {ip!r}"
            elif within(r, w):
                problem = f"would replace {w!r}, which holds {i} {ip!r}"
            elif within(w, r):
                problem = f"would write inside {i} {ip!r} ({w!r})"
            else:
                continue
            raise InputError(f"{o} {p!r} {problem}, an input of this run; choose another {o}")
        for o2, p2, w2 in written:
            if o2 != o and within(w, w2):
                raise InputError(f"{o2} {p2!r} would write {w!r}, which {o} {p!r} writes too; choose another {o2}")


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


_SCRATCH: list[str] = []


def scratch_dir(prefix: str) -> str:
    """A temporary directory this process owns, removed by `remove_scratch_dirs` (run at exit, and by
    `dpo-ref verify` before it leaves with `os._exit`, which skips exit handlers)."""
    path = tempfile.mkdtemp(prefix=prefix)
    if not _SCRATCH:
        atexit.register(remove_scratch_dirs)
    _SCRATCH.append(path)
    return path


def remove_scratch_dirs() -> None:
    while _SCRATCH:
        shutil.rmtree(_SCRATCH.pop(), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- output locks
# One lock rule for every command that writes files: an output is written by one dpo-ref process at a time.
#
#     a directory output (train --out, experiment --out, matrix --out)   OUT/.lock
#     a file output (--json, --readme, prove --output, ...)              .NAME.lock beside it
#
# Every writing command (train, experiment, matrix, verify, bench, prove, the doc generators) validates its
# arguments first (nothing is created before that), then takes the locks of all its outputs (`hold`, or
# `OutputLocks` as a context) before its first write and keeps them until it ends: so the files of one output
# come from one run, and a second command naming an output in use exits 2 at once with one line naming the
# holder (pid and host); it neither waits nor writes. A lock is an `flock`: the kernel drops it when its
# process dies, so a killed command never blocks the next one (its lock file stays behind, stale, and is
# reused). A command removes its lock files when it ends, and a directory it created for an output and left
# empty. Standard output (`-`) is never locked. No torch import: the proofs CLI uses this too.

DIR_LOCK = ".lock"  # inside a directory output


def lock_path(path: str, directory: bool) -> str:
    """Where the lock of output `path` lives: OUT/.lock for a directory, .NAME.lock beside a file (links
    followed, so two spellings of one output share one lock)."""
    real = os.path.realpath(path)
    if directory:
        return os.path.join(real, DIR_LOCK)
    return os.path.join(os.path.dirname(real), f".{os.path.basename(real)}.lock")


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    return text or "a process that has not yet written its id"


def holder(path: str, directory: bool) -> str | None:
    """'pid N on HOST' of the live process holding the lock of output `path`, or None (no lock file, or a stale
    one left by a killed process). Reads only."""
    try:
        fd = os.open(lock_path(path, directory), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def in_use(option: str, path: str, who: str) -> InputError:
    return InputError(
        f"{option} {path!r} is in use by another dpo-ref process ({who}); wait for it to end or choose another {option}"
    )


def _given(outputs: dict[str, str | None]) -> dict[str, str]:
    return {option: path for option, path in outputs.items() if path and path != STDOUT}


class OutputLocks:
    """The locks of a command's outputs, taken together (`acquire`) and dropped together (`release`); a context
    manager. A directory output that does not exist yet is created (and removed at release if still empty)."""

    def __init__(self, outputs: dict[str, str | None], directories: tuple[str, ...] = ()):
        self.outputs = _given(outputs)
        self.directories = directories
        self._held: list[tuple[str, int]] = []  # (lock file, descriptor)
        self._created: list[str] = []

    @property
    def held(self) -> bool:
        return bool(self._held)

    def acquire(self) -> OutputLocks:
        """Take every lock, or none: InputError naming the output held by another process."""
        seen = set()
        try:
            for option, path in self.outputs.items():
                directory = option in self.directories
                file = lock_path(path, directory)
                if file in seen:  # two options naming one output are refused before (check_apart)
                    continue
                seen.add(file)
                folder = os.path.dirname(file)
                if directory and not os.path.isdir(folder):
                    os.makedirs(folder)
                    self._created.append(folder)
                self._held.append((file, self._take(file, option, path)))
        except BaseException:
            self.release()
            raise
        return self

    @staticmethod
    def _take(file: str, option: str, path: str) -> int:
        while True:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _read_holder(fd)
                os.close(fd)
                raise in_use(option, path, who) from None
            # the previous holder may have removed the file between our open and flock: lock the live file
            try:
                same = os.stat(file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return fd

    def release(self) -> None:
        """Drop every lock and remove its file (a no-op when none is held); remove directories this created
        that stayed empty."""
        while self._held:
            file, fd = self._held.pop()
            with contextlib.suppress(FileNotFoundError):
                os.remove(file)
            os.close(fd)  # closing the descriptor releases the flock
        while self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self._created.pop())  # only when empty

    def __enter__(self) -> OutputLocks:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: list[OutputLocks] = []


def hold(outputs: dict[str, str | None], directories: tuple[str, ...] = ()) -> None:
    """Take the locks of a command's outputs now, once its arguments are validated and before its first write;
    they are dropped when the command ends (`release_held`: `dpo_ref.cli.main` calls it, and exit does)."""
    locks = OutputLocks(outputs, directories).acquire()
    if not _HELD:
        atexit.register(release_held)
    _HELD.append(locks)


def release_held() -> None:
    """Drop the locks `hold` took (a no-op when none)."""
    while _HELD:
        _HELD.pop().release()
