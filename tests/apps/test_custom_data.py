"""apps.train on your own data (--experiment=custom): an .npz, then new classes later from a
folder of task folders into the saved run; bad data refused in one line, nothing written."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.apps.test_train_app import FAST, train

# FAST's tiny settings on fewer iterations (the assertions are about what is written)
CUSTOM = ["--experiment=custom", *[f for f in FAST if not f.startswith(("--experiment",
                                                                      "--keep_label_order",
                                                                      "--iters"))],
          "--iters=8"]


def images(classes, n=40, seed=0):
    xs = []
    for c in classes:
        base = np.random.RandomState(100 + c).randint(40, 216, (1, 6, 5))
        xs.append((base + np.random.RandomState(seed + c).randint(-40, 40, (n, 6, 5)))
                  .astype(np.uint8))
    return np.concatenate(xs), np.repeat(np.arange(len(classes)), n)


def write_npz(path: Path, classes, names, **change):
    x, y = images(classes)
    arrays = dict(x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2],
                  class_names=np.array(names))
    np.savez(path, **{**arrays, **change})


def write_task(root: Path, task: str, classes, names):
    x, y = images(classes, seed=7)
    for split, part in (("train", slice(0, None, 2)), ("test", slice(1, None, 2))):
        for i, (img, label) in enumerate(zip(x[part], y[part])):
            d = root / task / split / names[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")


def test_an_npz_run_learns_a_new_task_folder_later(tmp_path):
    write_npz(tmp_path / "first.npz", range(4), ["ant", "bee", "cat", "dog"])
    out, exp = tmp_path / "out", tmp_path / "export"
    r = train(*CUSTOM, "--method=bir", "--classes_per_task=2", "--capacity=3",
              f"--data_dir={tmp_path / 'first.npz'}", f"--output_dir={out}",
              f"--export_dir={exp}")
    assert r.returncode == 0, r.stderr[-3000:]
    write_task(tmp_path / "later", "task3", [4, 5], {0: "eel", 1: "fox"})
    r = train(*CUSTOM, "--method=bir", "--capacity=3", f"--data_dir={tmp_path / 'later'}",
              f"--resume_from={exp}", f"--output_dir={out}2", f"--export_dir={exp}2")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((Path(f"{out}2") / "results.json").read_text())
    assert rec["tasks_learned"] == 3 and len(rec["accuracy_matrix"]) == 3
    assert rec["protocol"]["tasks"] == [["ant", "bee"], ["cat", "dog"], ["eel", "fox"]]
    # the SavedModel names the new classes (apps.sample and bk.load draw them:
    # tests/test_api.py); a fourth task exceeds the capacity
    run = json.loads((Path(f"{exp}2") / "run.json").read_text())
    assert run["protocol"]["class_names"][4:] == ["eel", "fox"]
    write_task(tmp_path / "more", "task4", [6, 7], {0: "gnu", 1: "hen"})
    r = train(*CUSTOM, "--method=bir", "--capacity=3", f"--data_dir={tmp_path / 'more'}",
              f"--resume_from={exp}2", f"--output_dir={out}3", f"--export_dir={exp}3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "exceed the saved run's capacity of 3 tasks" in r.stderr
    assert not Path(f"{out}3").exists() and not Path(f"{exp}3").exists()


@pytest.mark.parametrize("change, message", [
    (dict(y_train=np.full(80, 7)), "labels outside 0..3"),
    (dict(extra=np.zeros(3)), "extra"),
])
def test_bad_data_is_one_line_and_nothing_written(tmp_path, change, message):
    write_npz(tmp_path / "d.npz", range(4), ["a", "b", "c", "d"], **change)
    r = train(*CUSTOM, "--classes_per_task=2", f"--data_dir={tmp_path / 'd.npz'}",
              f"--output_dir={tmp_path / 'out'}", f"--export_dir={tmp_path / 'exp'}")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_stream_flags_are_refused_for_the_paper_experiments_before_tensorflow():
    r = train("--experiment=split_digits", "--classes_per_task=2", "--output_dir=/nonexistent/o")
    assert r.returncode == 2 and "--classes_per_task is for your own data" in r.stderr
    r = train("--experiment=custom", "--output_dir=/nonexistent/o")
    assert r.returncode == 2 and "--experiment=custom reads your data" in r.stderr


def test_compare_checks_a_streams_data_before_any_run(tmp_path):
    from apps.compare import check_run
    from bir_keras.data.sources import DataError

    write_npz(tmp_path / "d.npz", range(4), ["a", "b", "c", "d"])
    args = ["--experiment=custom", f"--data_dir={tmp_path / 'd.npz'}", "--method=none"]
    assert check_run([*args, "--classes_per_task=2", "--batch=8"]).experiment == "custom"
    with pytest.raises(DataError, match="do not split into tasks of 3"):
        check_run([*args, "--classes_per_task=3"])
    with pytest.raises(DataError, match="fewer than a batch"):
        check_run([*args, "--classes_per_task=2", "--batch=64"])
