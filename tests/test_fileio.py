"""atomic_write: the old file or the new one, never a partial one, and no temp file left."""

import os

import pytest

from bir_keras.fileio import atomic_write, atomic_write_text


def test_replaces_whole_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "w.weights.h5"
    atomic_write_text(path, "old")

    def half_then_fail(tmp):
        assert tmp.endswith(".weights.h5")   # the suffixes are kept (Keras checks them)
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.weights.h5"]
