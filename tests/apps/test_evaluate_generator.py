"""apps.evaluate_generator on a tiny exported BI-R run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apps.test_refusals import fake_export, no_tensorflow_env

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run(mod, *args):
    return subprocess.run([sys.executable, "-m", mod, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_scores_of_a_tiny_run(tmp_path):
    exp = tmp_path / "export"
    r = run("apps.train", "--experiment=split_digits", "--method=bir", "--tasks=2", "--iters=30",
            "--batch=32", "--fc_units=40", "--z_dim=8", f"--output_dir={tmp_path / 'o'}",
            f"--export_dir={exp}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("apps.evaluate_generator", f"--export_dir={exp}", "--n=120", "--embedding_epochs=2",
            "--fc_units=32", "--clusters=4", "--runs=2", f"--out={tmp_path / 'q.json'}")
    assert r.returncode == 0, r.stderr[-3000:]
    q = json.loads((tmp_path / "q.json").read_text())
    assert q["n_fake"] == 120 and q["n_real"] > 0 and q["tasks_learned"] == 2
    assert 1.0 <= q["inception_score"] <= 4.0 + 1e-6   # at most the 4 classes learned
    assert q["fid"] >= 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1


def test_run_without_generator_refused(tmp_path):
    exp = tmp_path / "export"
    r = run("apps.train", "--experiment=split_digits", "--method=none", "--tasks=1",
            "--iters=5", f"--output_dir={tmp_path / 'o'}", f"--export_dir={exp}")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("apps.evaluate_generator", f"--export_dir={exp}", "--n=50")
    assert r.returncode == 2 and "no generator" in r.stderr


@pytest.mark.parametrize("case", ["n0", "out_is_a_directory", "no_export", "not_generative",
                                  "runs0"])
def test_refused_before_anything_loads(tmp_path, case):
    # before TensorFlow, the data or the embedding network's training
    exp = fake_export(tmp_path / "export", {"replay": "generative"})
    (exp / "saved_model").mkdir()
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    args = {"n0": [f"--export_dir={exp}", "--n=0"],
            "out_is_a_directory": [f"--export_dir={exp}", f"--out={tmp_path}"],
            "no_export": [f"--export_dir={tmp_path / 'nothing'}"],
            "not_generative": [f"--export_dir={fake_export(tmp_path / 'e2')}"],
            "runs0": [f"--export_dir={exp}", "--runs=0"]}[case]
    r = subprocess.run([sys.executable, "-m", "apps.evaluate_generator", *args], cwd=ROOT,
                       env=no_tensorflow_env(tmp_path), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in r.stderr
    assert not (exp / "quality.json").exists()
