"""Atomic writes: a failure mid-write leaves the previous file and no temporary file behind."""

import os

import pytest

from dpo_ref.atomic import atomic_path, write_text_atomic


def test_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.json"
    write_text_atomic(str(path), "old")
    write_text_atomic(str(path), "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.json"]


def test_error_mid_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.csv"
    write_text_atomic(str(path), "previous")
    with pytest.raises(RuntimeError), atomic_path(str(path)) as tmp:
        with open(tmp, "w") as f:
            f.write("half of the new cont")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "previous"
    assert os.listdir(tmp_path) == ["out.csv"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_written_file_gets_the_permissions_the_umask_gives(tmp_path, umask):
    """As `open(path, "w")` would: 0666 less the umask (mkstemp alone gives 0600, unreadable to others)."""
    old = os.umask(umask)
    try:
        write_text_atomic(str(tmp_path / "atomic"), "x")
        with open(tmp_path / "plain", "w") as f:  # the independent reference: what Python's open gives
            f.write("x")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == 0o666 & ~umask


def test_a_symlink_is_followed_and_a_fifo_or_directory_is_refused(tmp_path):
    from dpo_ref.errors import InputError

    target = tmp_path / "target.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(str(link), "new")
    assert link.is_symlink() and target.read_text() == "new"  # the link stays, its target is replaced
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory")):
        with pytest.raises(InputError, match=f"is {kind}"):
            write_text_atomic(str(path), "x")
    assert fifo.exists() and not fifo.is_file()  # never replaced by a regular file
    if os.path.exists(os.devnull):  # a device node: refused, never opened or replaced
        with pytest.raises(InputError, match="is a device"):
            write_text_atomic(os.devnull, "x")
        assert not os.path.isfile(os.devnull)
