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


@pytest.mark.parametrize("script, shows", [
    ("numpy_stream.py", "replay samples of digit 3: (4, 8, 8)"),
    # four runs: under --run-slow (tests/test_api.py covers compare and feature streams)
    pytest.param("feature_stream.py", "| bir |", marks=pytest.mark.slow),
])
def test_example_runs(tmp_path, script, shows):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), "3"], cwd=tmp_path,
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert shows in r.stdout
    assert len((ROOT / "examples" / script).read_text().splitlines()) <= 45
