"""apps.evaluate_generator on a tiny exported BI-R run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bir_keras import rundirs
from tests.apps.test_refusals import fake_export, no_tensorflow_env
from tests.apps.test_sample import diverging_ewc_run, run_with_ctrl_c, tiny_bir_run

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run(mod, *args):
    return subprocess.run([sys.executable, "-m", mod, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_scores_of_a_tiny_run(tmp_path_factory, tmp_path):
    # the tiny BI-R run trained once per session (shared with test_sample.py); a copy, since
    # the scores go into the export by default
    exp = tmp_path / "export"
    shutil.copytree(tiny_bir_run(tmp_path_factory)[1], exp, symlinks=True)
    r = run("apps.evaluate_generator", f"--export_dir={exp}", "--n=120", "--embedding_epochs=2",
            "--fc_units=32", "--clusters=4", "--runs=2")
    assert r.returncode == 0, r.stderr[-3000:]
    q = json.loads((exp / "quality.json").read_text())
    assert q["n_fake"] == 120 and q["n_real"] > 0 and q["tasks_learned"] == 2
    assert 1.0 <= q["inception_score"] <= 4.0 + 1e-6   # at most the 4 classes learned
    assert q["fid"] >= 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
    assert q["written_by"] == "bir_keras apps.evaluate_generator"
    # the export's marker lists the scores: apps.train may still replace the export
    assert rundirs.foreign_entries(exp, rundirs.EXPORT) == []
    assert not [p for p in exp.iterdir() if ".tmp-" in p.name]
    # the scores are not replaced without --overwrite (refused before anything loads)
    before = (exp / "quality.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "apps.evaluate_generator", f"--export_dir={exp}",
                        "--n=120", "--clusters=4"], cwd=ROOT, env=no_tensorflow_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert "quality.json exists" in line and "pass --overwrite" in line
    assert (exp / "quality.json").read_bytes() == before


def test_run_without_generator_refused(tmp_path_factory):
    # a real export without generative replay (EWC's export after task 1, shared)
    _, _, exp = diverging_ewc_run(tmp_path_factory)
    r = run("apps.evaluate_generator", f"--export_dir={exp}", "--n=50")
    assert r.returncode == 2 and "no generator" in r.stderr and "Traceback" not in r.stderr
    assert not (exp / "quality.json").exists()


@pytest.mark.parametrize("case", ["n0", "out_is_a_directory", "no_export", "not_generative",
                                  "runs0", "n_below_clusters", "foreign_out", "foreign_default",
                                  "ours_without_overwrite"])
def test_refused_before_anything_loads(tmp_path, case):
    # before TensorFlow, the data or the embedding network's training
    exp = fake_export(tmp_path / "export", {"replay": "generative"})
    (exp / "saved_model").mkdir()
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    args = {"n0": [f"--export_dir={exp}", "--n=0"],
            "out_is_a_directory": [f"--export_dir={exp}", f"--out={tmp_path}"],
            "no_export": [f"--export_dir={tmp_path / 'nothing'}"],
            "not_generative": [f"--export_dir={fake_export(tmp_path / 'e2')}"],
            "runs0": [f"--export_dir={exp}", "--runs=0"],
            "n_below_clusters": [f"--export_dir={exp}", "--n=3"],
            "foreign_out": [f"--export_dir={exp}", f"--out={tmp_path / 'mine.json'}",
                            "--overwrite"],
            "foreign_default": [f"--export_dir={exp}", "--overwrite"],
            "ours_without_overwrite": [f"--export_dir={exp}", f"--out={tmp_path / 'q.json'}"]
            }[case]
    (tmp_path / "mine.json").write_text('{"my": "scores"}')
    (tmp_path / "q.json").write_text('{"written_by": "bir_keras apps.evaluate_generator"}')
    if case == "foreign_default":
        (exp / "quality.json").write_text("my notes")
    env = no_tensorflow_env(tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-m", "apps.evaluate_generator", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in r.stderr
    if case == "n_below_clusters":
        assert "--n=3 is too few" in line and "at least 10" in line
    if case.startswith("foreign"):
        assert "was not written by apps.evaluate_generator" in line
    if case == "ours_without_overwrite":
        assert "pass --overwrite" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    exp = fake_export(tmp_path / "export", {"replay": "generative"})
    (exp / "saved_model").mkdir()
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    r = run_with_ctrl_c(tmp_path, "apps.evaluate_generator", f"--export_dir={exp}")
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == ["interrupted; nothing written"]
    assert not (exp / "quality.json").exists()
