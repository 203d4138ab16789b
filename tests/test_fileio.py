"""atomic_write, atomic_write_json, atomic_dir: the old file (folder) or the new one, never a
partial one, and no temp file (folder) left."""

import json
import os
from pathlib import Path

import pytest

from bir_keras.fileio import atomic_dir, atomic_write, atomic_write_json, atomic_write_text


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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_atomic_write_json_as_export_wrote_it(tmp_path):
    path = tmp_path / "new" / "run.json"
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    atomic_write_json(path, obj)
    assert path.read_text() == json.dumps(obj, indent=2)
    assert json.loads(path.read_text()) == obj
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    atomic_write_json(path, [1])
    assert json.loads(path.read_text()) == [1]
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_atomic_json_unserialisable_keeps_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def _fill(files: dict[str, str]):
    def write(tmp: Path) -> None:
        assert tmp.is_dir() and not any(tmp.iterdir())
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
    return write


def test_atomic_dir_creates_then_replaces_whole_dir(tmp_path):
    path = tmp_path / "parent" / "run"
    assert atomic_dir(path, _fill({"a.txt": "1", "sub/b.txt": "2"})) == path
    assert (path / "a.txt").read_text() == "1" and (path / "sub" / "b.txt").read_text() == "2"
    assert path.stat().st_mode & 0o777 == 0o777 & ~_umask()   # not mkdtemp's 0700
    atomic_dir(path, _fill({"c.txt": "3"}))
    assert sorted(p.name for p in path.iterdir()) == ["c.txt"]   # nothing of the old one
    assert [p.name for p in path.parent.iterdir()] == ["run"]    # no temp or old dir left


def test_atomic_dir_failed_write_keeps_old_dir_and_leaves_no_temp(tmp_path):
    path = tmp_path / "run"
    atomic_dir(path, _fill({"a.txt": "old"}))

    def half_then_fail(tmp: Path) -> None:
        (tmp / "a.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_dir(path, half_then_fail)
    assert sorted(p.name for p in path.iterdir()) == ["a.txt"]
    assert (path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_dir_without_overwrite_refuses_before_writing(tmp_path):
    path = tmp_path / "run"
    atomic_dir(path, _fill({"a.txt": "old"}))
    called = []
    with pytest.raises(FileExistsError, match="exists"):
        atomic_dir(path, called.append, overwrite=False)
    assert not called
    assert (path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    # a new path is fine without overwrite
    atomic_dir(tmp_path / "other", _fill({"b.txt": "new"}), overwrite=False)
    assert (tmp_path / "other" / "b.txt").read_text() == "new"
