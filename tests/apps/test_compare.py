"""apps.compare: runs methods over seeds, caches by a stamp of the settings, tabulates."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from apps.compare import plan, stamp

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
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["method"] for r in rows] == ["none"] and rows[0]["seeds"] == "2"
    assert 0 <= float(rows[0]["mean"]) <= 100
    assert (tmp_path / "table.md").read_text().startswith("| method")
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    again = compare(*common, "--iters=8")
    assert again.returncode == 0 and "2 cached, 0 to run" in again.stdout
    changed = compare(*common, "--iters=9", "--seeds=1")
    assert changed.returncode == 0 and "0 cached, 1 to run" in changed.stdout
