"""Write a file so that it is either absent, the old version, or complete: never half-written.

The content goes to a temporary file in the destination's directory (so the rename stays on one
filesystem) and is moved into place with `os.replace`, which is atomic on POSIX and Windows. On any
error the temporary file is removed. No torch import: the proofs CLI uses this too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp", prefix: str | None = None) -> Iterator[str]:
    """Yield a temporary path next to `path`; on normal exit move it onto `path`, else delete it.

    `prefix` names the temporary file (default `.<name>.`), e.g. so that a later run can find and
    remove what a killed writer left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}." if prefix is None else prefix
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
