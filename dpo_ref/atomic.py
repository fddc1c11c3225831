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
import os
import shutil
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
