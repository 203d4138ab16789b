"""apps.compare: runs methods over seeds, caches by a stamp of the settings, tabulates."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.compare import changed_settings, plan, stamp, write_tables

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def compare(*args):
    return subprocess.run([sys.executable, "-m", "apps.compare", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_stamp_depends_on_settings_not_order():
    assert stamp(["--a=1", "--b=2"]) == stamp(["--b=2", "--a=1"])
    assert stamp(["--a=1"]) != stamp(["--a=2"])


def test_plan_refuses_xdg_outside_task_il(tmp_path):
    with pytest.raises(ValueError, match="xdg"):
        plan(["xdg"], [0], "split_mnist", "class", [], tmp_path)
    runs = plan(["none", "si"], [0, 1], "split_mnist", "class", ["--iters=5"], tmp_path,
                sweep="batch_replay:1,4")
    assert len(runs) == 8 and len({r["dir"] for r in runs}) == 8


def test_cache_skips_finished_and_reruns_changed(tmp_path):
    common = ["--experiment=split_digits", "--scenario=class", "--methods=none", "--seeds=2",
              "--batch=16", "--fc_units=20", "--parallel=1", f"--output_dir={tmp_path}"]
    first = compare(*common, "--iters=8")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 cached, 2 to run" in first.stdout
    assert f"wrote {tmp_path / 'table.md'}, {tmp_path / 'table.csv'}, " \
           f"{tmp_path / 'accuracy.png'}" in first.stdout
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["method"] for r in rows] == ["none"] and rows[0]["seeds"] == "2"
    assert 0 <= float(rows[0]["mean"]) <= 100
    assert (tmp_path / "table.md").read_text().startswith("| method")
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    again = compare(*common, "--iters=8")
    assert again.returncode == 0 and "2 cached, 0 to run" in again.stdout
    changed = compare(*common, "--iters=9", "--seeds=1")
    assert changed.returncode == 0 and "0 cached, 1 to run" in changed.stdout


def test_published_number_marked_when_settings_differ(tmp_path):
    stats = {"none": {"final": [0.2, 0.21], "wall": [1.0], "value": None, "mean": 20.5,
                      "sem": 0.5}}
    changed = changed_settings(["--iters=8", "--data_dir=D", "--nojit_compile"])
    assert changed == ["--iters=8"]
    md = write_tables(stats, "split_mnist", "class", tmp_path, changed)
    assert "| 19.90* |" in md and "these runs differ: --iters=8" in md
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert rows[0]["settings_differ_from_published"] == "--iters=8"
    # the paper's settings (only how the runs execute differs): no mark
    md = write_tables(stats, "split_mnist", "class", tmp_path,
                      changed_settings(["--data_dir=D", "--jit_compile"]))
    assert "| 19.90 |" in md and "differ" not in md
