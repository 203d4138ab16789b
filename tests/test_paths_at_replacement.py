"""What a run may replace, checked over the whole tree and again at the moment of
replacing; one writer per path; temporaries of a killed writer cleaned (issue 23)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bir_keras import rundirs
from bir_keras.fileio import atomic_dir
from bir_keras.rundirs import PathRefused

ROOT = Path(__file__).resolve().parents[1]


def run_dir(path: Path, kind: str, files: dict) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    rundirs.write_marker(path, kind)
    return path


def test_a_users_file_deep_inside_a_run_directory_is_found(tmp_path):
    out = run_dir(tmp_path / "out", rundirs.OUTPUT,
                  {"results.json": "{}", "tensorboard/events.out.tfevents.1.x": "e"})
    rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=True)
    (out / "tensorboard" / "notes.txt").write_text("mine")
    with pytest.raises(PathRefused, match=r"tensorboard/notes.txt"):
        rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=True)
    exp = run_dir(tmp_path / "exp", rundirs.EXPORT,
                  {"run.json": "{}", "saved_model/saved_model.pb": "pb"})
    (exp / "saved_model" / "mine").mkdir()
    with pytest.raises(PathRefused, match=r"saved_model/mine/"):
        rundirs.replaceable(exp, rundirs.EXPORT, "--export_dir", overwrite=True)
    # a marker without a list of its files (older versions) vouches for nothing
    old = tmp_path / "old"
    old.mkdir()
    (old / ".bir_keras").write_text('{"written_by": "bir_keras", "kind": "output"}')
    with pytest.raises(PathRefused, match="older bir_keras"):
        rundirs.replaceable(old, rundirs.OUTPUT, "--output_dir", overwrite=True)


def test_a_marked_sub_folder_vouches_for_itself_only(tmp_path):
    exp = run_dir(tmp_path / "exp", rundirs.EXPORT, {"run.json": "{}"})
    run_dir(exp / "task_progress", rundirs.PROGRESS, {"progress.json": "{}"})
    rundirs.replaceable(exp, rundirs.EXPORT, "--export_dir", overwrite=True)
    (exp / "task_progress" / "thesis.txt").write_text("mine")
    with pytest.raises(PathRefused, match="task_progress/thesis.txt"):
        rundirs.replaceable(exp, rundirs.EXPORT, "--export_dir", overwrite=True)


def test_a_foreign_folder_that_appears_while_writing_is_left_alone(tmp_path):
    target = tmp_path / "out"
    check = rundirs.replace_check(rundirs.OUTPUT, "--output_dir")

    def write_while_someone_creates_it(tmp):
        (tmp / "results.json").write_text("new")
        rundirs.write_marker(tmp, rundirs.OUTPUT)
        target.mkdir()
        (target / "thesis.txt").write_text("four years")

    with pytest.raises(PathRefused, match="changed while the run was working"):
        atomic_dir(target, write_while_someone_creates_it, check=check)
    assert (target / "thesis.txt").read_text() == "four years"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_a_target_that_appears_after_the_check_is_not_replaced(tmp_path):
    target = tmp_path / "out"

    def check(path):
        path.mkdir()   # appears between the check and the rename
        (path / "thesis.txt").write_text("mine")

    with pytest.raises(FileExistsError, match="appeared while it was being written"):
        atomic_dir(target, lambda tmp: (tmp / "a").write_text("new"), check=check)
    assert (target / "thesis.txt").read_text() == "mine" and not (target / "a").exists()


def test_one_writer_per_path(tmp_path):
    path = tmp_path / "out"
    with rundirs.claim(path, "--output_dir"):
        with rundirs.claim(path, "--output_dir"):   # re-entrant in one process
            assert rundirs.claimed(path)
        holder = ("import sys, time\nfrom bir_keras import rundirs\n"
                  f"with rundirs.claim({str(path)!r}, '--output_dir'):\n    pass\n")
        r = subprocess.run([sys.executable, "-c", holder], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "is being written by another run (process " \
            f"{os.getpid()})" in r.stderr
    assert not rundirs.claimed(path)


def test_a_killed_writer_releases_its_claim_and_its_temporaries_are_removed(tmp_path):
    path = tmp_path / "out"
    holder = ("import time\nfrom bir_keras import rundirs\n"
              f"with rundirs.claim({str(path)!r}, '--output_dir'):\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(PathRefused, match="being written by another run"):
            with rundirs.claim(path, "--output_dir"):
                pass
        stale = tmp_path / ".out.tmp-abcd1234"
        stale.mkdir()
        (stale / "results.json").write_text("half")
        mine = tmp_path / ".out.notes"   # not a temporary name of ours: kept
        mine.write_text("x")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while True:
        try:
            with rundirs.claim(path, "--output_dir"):
                break
        except PathRefused:
            assert time.time() < deadline
            time.sleep(0.1)
    assert not stale.exists() and mine.exists()


def test_resume_refusal_lists_only_real_flags():
    with pytest.raises(PathRefused) as info:
        rundirs.check_resume_flags("r", {"fc_units": 400}, {"fc_units": 64})
    assert "--eval_batch" not in str(info.value) and "--jit_compile" in str(info.value)
