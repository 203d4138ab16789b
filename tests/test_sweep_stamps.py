"""A run's cache stamp holds the contents of the files it reads: new data under an old
name is a new run, the same data anywhere the same run."""

import os
import shutil

import pytest

from bir_keras.config import ConfigError
from bir_keras.sweeps.planning import contents_hash, stamp

ARGS = ["--experiment=custom", "--scenario=class", "--method=none", "--seed=0"]


def test_new_data_under_an_old_name_is_a_new_stamp(tmp_path):
    data = tmp_path / "stream.npz"
    data.write_bytes(b"first data")
    before = stamp([*ARGS, f"--data_dir={data}"])
    assert stamp([*ARGS, f"--data_dir={data}"]) == before
    data.write_bytes(b"other data")
    os.utime(data, ns=(1, 1))   # whatever its time says: its bytes count
    assert stamp([*ARGS, f"--data_dir={data}"]) != before
    data.write_bytes(b"first data")
    assert stamp([*ARGS, f"--data_dir={data}"]) == before


def test_a_folder_is_known_by_its_files_names_sizes_and_times(tmp_path):
    a = tmp_path / "a"
    (a / "t1" / "train" / "cat").mkdir(parents=True)
    png = a / "t1" / "train" / "cat" / "0.png"
    png.write_bytes(b"png bytes")
    first = contents_hash(a)
    assert contents_hash(a) == first
    # where the folder is does not count (a copy that keeps the files' times)
    shutil.copytree(a, tmp_path / "b")
    assert contents_hash(tmp_path / "b") == first
    png.rename(png.with_name("1.png"))
    assert contents_hash(a) != first
    png.with_name("1.png").rename(png)
    assert contents_hash(a) == first
    png.write_bytes(b"png bytez")   # a file rewritten deep inside: its time moves
    assert contents_hash(a) != first
    rewritten = contents_hash(a)
    (a / "t1" / "train" / "loop").symlink_to(a)   # a link back up: its files listed once
    assert contents_hash(a) == rewritten


def test_a_folder_of_more_files_than_a_dataset_is_refused(tmp_path, monkeypatch):
    from bir_keras.sweeps import planning

    monkeypatch.setattr(planning, "MAX_DATA_FILES", 3)
    for k in range(5):
        (tmp_path / f"{k}.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"--data_dir=.*: a folder of more than 3 files"):
        stamp([*ARGS, f"--data_dir={tmp_path}"])


def test_conv_weights_that_name_a_folder_are_a_setting(tmp_path, monkeypatch):
    # a folder is no weights file (apps.train refuses it); it is not walked to plan
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    before = stamp([*ARGS, "--conv_weights=w"])
    (tmp_path / "w" / "x").write_bytes(b"x")
    assert stamp([*ARGS, "--conv_weights=w"]) == before


def test_names_that_are_not_paths_stamp_as_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # no file of that name here: the value alone, as every earlier version stamped it
    by_name = stamp([*ARGS, "--conv_weights=authors"])
    assert by_name != stamp([*ARGS, "--conv_weights=ours"])
    args = ["--experiment=split_digits", "--scenario=class", "--method=none", "--seed=0",
            "--iters=30", "--tasks=2"]
    assert stamp(args) == "f750ec8f631b"   # the cache key of runs on disk stays
    (tmp_path / "authors").write_bytes(b"weights")   # now a file of that name is read
    assert stamp([*ARGS, "--conv_weights=authors"]) != by_name


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_input_is_refused_by_name(tmp_path):
    data = tmp_path / "d"
    (data / "t1").mkdir(parents=True)
    secret = data / "t1" / "x.png"
    secret.write_bytes(b"x")
    secret.chmod(0)
    try:
        with pytest.raises(ConfigError, match=r"--data_dir=.*: cannot read .*x\.png"):
            stamp([*ARGS, f"--data_dir={data}"])
    finally:
        secret.chmod(0o600)
