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
