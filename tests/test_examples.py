"""The examples in examples/ run as a user runs them (a fresh process in an empty folder),
on few iterations."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": str(ROOT)}


# Both under --run-slow (a 5-task BI-R run with an export per task, or four runs: 30 s and
# more of the suite's time on 2 cores). What they do is covered by faster tests of the same
# API: tests/test_api.py trains on NumPy arrays (test_digits_as_numpy_arrays_give_the_matrix_
# of_split_digits), loads the export and classifies and samples by class name
# (test_a_saved_run_learns_new_classes_later_as_a_straight_run), compares and streams
# features; tests/data/test_streams.py checks TaskStream's class_names.
@pytest.mark.parametrize("script, shows", [
    pytest.param("numpy_stream.py", "replay samples of digit 3: (4, 8, 8)",
                 marks=pytest.mark.slow),
    pytest.param("feature_stream.py", "| bir |", marks=pytest.mark.slow),
])
def test_example_runs(tmp_path, script, shows):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), "3"], cwd=tmp_path,
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert shows in r.stdout
    assert len((ROOT / "examples" / script).read_text().splitlines()) <= 45


@pytest.mark.parametrize("script", ["numpy_stream.py", "feature_stream.py"])
def test_example_uses_only_the_api_it_imports(script):
    """The default suite's check of each example (running them is under --run-slow): it
    compiles, stays short, and every ``bk.NAME`` it uses is one of bir_keras's public names
    (a renamed or removed API breaks it here)."""
    import ast

    import bir_keras as bk

    text = (ROOT / "examples" / script).read_text()
    tree = ast.parse(text, filename=script)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "bk"}
    assert used and used <= set(bk.__all__), sorted(used - set(bk.__all__))
    assert len(text.splitlines()) <= 45
