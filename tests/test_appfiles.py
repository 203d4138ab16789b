"""bir_keras.appfiles: single-file outputs are replaced only when they are ours and asked
for, checked again at the moment of replacing; Ctrl-C recognised through chained errors."""

import json
import os

import pytest

from bir_keras import appfiles
from bir_keras.rundirs import PathRefused


def ours(path):
    return appfiles.json_written_by(path, "me")


def test_replaceable_file(tmp_path):
    target = tmp_path / "scores.json"
    appfiles.replaceable_file(target, "--out", False, ours, "me")  # absent: fine
    target.write_text(json.dumps({"written_by": "me"}))
    with pytest.raises(PathRefused, match="pass --overwrite"):
        appfiles.replaceable_file(target, "--out", False, ours, "me")
    appfiles.replaceable_file(target, "--out", True, ours, "me")
    target.write_text(json.dumps({"written_by": "someone else"}))
    with pytest.raises(PathRefused, match="not even with --overwrite"):
        appfiles.replaceable_file(target, "--out", True, ours, "me")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(PathRefused, match="is not a file written by me"):
        appfiles.replaceable_file(link, "--out", True, ours, "me")


def test_write_file_checks_at_the_moment_of_replacing(tmp_path, monkeypatch):
    target = tmp_path / "a.weights.h5"
    seen = []

    def write(tmp):
        seen.append(os.path.basename(tmp))
        with open(tmp, "w") as f:
            f.write("new")

    appfiles.write_file(target, write, check=appfiles.replace_check("--out", ours, "me"))
    assert target.read_text() == "new" and seen[0].endswith(".weights.h5")

    # something that is not ours appeared while the work went on: left alone
    def write_then_appear(tmp):
        write(tmp)
        target.write_text("theirs")

    with pytest.raises(PathRefused, match="nothing was replaced"):
        appfiles.write_file(target, write_then_appear,
                            check=appfiles.replace_check("--out", ours, "me"))
    assert target.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights.h5"]  # no temp left

    # a path that was free when checked is taken only if it still is at the rename (a file
    # that appears in between is left alone)
    fresh = tmp_path / "b.txt"
    real = os.path.lexists

    def appear_after_the_check(path):
        if str(path) == str(fresh):
            found = real(path)
            fresh.write_text("theirs")
            return found
        return real(path)

    monkeypatch.setattr(appfiles.os.path, "lexists", appear_after_the_check)
    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        appfiles.write_file(fresh, write)
    monkeypatch.undo()
    assert fresh.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.weights.h5", "b.txt"]


def test_png_text(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "x")
    info.add_text("Software", "bir_keras apps.sample")
    Image.new("RGB", (3, 2)).save(tmp_path / "a.png", pnginfo=info)
    Image.new("RGB", (3, 2)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_text("not a png")
    assert appfiles.png_text(tmp_path / "a.png", "Software") == "bir_keras apps.sample"
    assert appfiles.png_text(tmp_path / "b.png", "Software") is None
    assert appfiles.png_text(tmp_path / "c.png", "Software") is None
    assert appfiles.png_text(tmp_path / "missing.png", "Software") is None


def test_caused_by_interrupt():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("returned a result with an exception set") from None
    except SystemError as e:
        assert appfiles.caused_by_interrupt(e)
    assert not appfiles.caused_by_interrupt(ValueError("x"))
    assert appfiles.caused_by_interrupt(KeyboardInterrupt())


def test_available_memory_is_a_number_or_unknown():
    free = appfiles.available_memory()
    assert free is None or free >= 0
