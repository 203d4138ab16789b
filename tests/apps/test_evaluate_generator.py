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


def _generative_export(tmp_path: Path, protocol: dict | None = None) -> Path:
    exp = fake_export(tmp_path / "export", {"replay": "generative"})
    if protocol is not None:
        run = json.loads((exp / "run.json").read_text())
        run["protocol"] = protocol
        (exp / "run.json").write_text(json.dumps(run))
    (exp / "saved_model").mkdir()
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    return exp


@pytest.mark.parametrize("args, words", [
    (["--n=1000000000"], "--n must be in [1, 10,000,000]"),
    (["--runs=100000"], "--runs must be in [1, 1,000]"),
    (["--clusters=100000"], "--clusters must be in [1, 1,000]"),
    (["--embedding_epochs=1000000000"], "--embedding_epochs must be in [1, 1,000]"),
    (["--n=10000000"], "error: --n=10000000: 10000000 generated and 10000000 real samples of "
                       "64 values"),
    (["--fc_units=10000000"], "error: --fc_units=10000000: the embedding network's weights"),
    (["--fc_units=10000000", "no input_shape"], "error: --fc_units=10000000: "),
    (["--out={tmp}/" + "x" * 300 + ".json"], "(File name too long)"),
    (["--export_dir={tmp}/" + "x" * 300], "(File name too long)"),
    (["--data_dir={tmp}/nothing"], "--data_dir={tmp}/nothing does not exist"),
    (["--conv_weights={tmp}/nothing"], "--conv_weights={tmp}/nothing does not exist"),
])
def test_absurd_values_and_bad_paths_refused_fast_before_tensorflow(tmp_path, args, words):
    import time

    shape = "no input_shape" not in args
    args = [a.format(tmp=tmp_path) for a in args if a != "no input_shape"]
    protocol = {"experiment": "split_digits", "num_tasks": 5, "classes_per_task": 2}
    exp = _generative_export(tmp_path, {**protocol, "input_shape": [64]} if shape else None)
    if not any(a.startswith("--export_dir=") for a in args):
        args.append(f"--export_dir={exp}")
    env = no_tensorflow_env(tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    began = time.time()
    r = subprocess.run([sys.executable, "-m", "apps.evaluate_generator", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and words.format(tmp=tmp_path) in line, line
    if "--n=10000000" in args:
        assert "lower --n (at most about" in line
    assert time.time() - began < 10
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("run_json, words", [
    ("{not json", "not JSON"), ("[1]", "not a JSON object"),
    ('{"flags": []}', "its flags are not a JSON object"),
    ('{"flags": {"replay": "generative"}, "protocol": 3}', "its protocol is not a JSON object"),
    ("\udcff", "not JSON")])
def test_malformed_run_json_exit_2_before_tensorflow(tmp_path, run_json, words):
    exp = _generative_export(tmp_path)
    (exp / "run.json").write_bytes(run_json.encode("utf-8", "surrogateescape"))
    r = subprocess.run([sys.executable, "-m", "apps.evaluate_generator", f"--export_dir={exp}"],
                       cwd=ROOT, env=no_tensorflow_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {exp / 'run.json'}: not a run record of apps.train (")
    assert words in line


# each case loads TensorFlow in a program of its own (about 11 s); one SavedModel and one
# run.json case by default, the rest with --run-slow
@pytest.mark.parametrize("case", [
    "garbage_pb", pytest.param("no_variables", marks=pytest.mark.slow),
    pytest.param("tasks_learned_not_a_count", marks=pytest.mark.slow),
    pytest.param("more_learned_than_tasks", marks=pytest.mark.slow),
    pytest.param("nothing_learned", marks=pytest.mark.slow)])
def test_corrupt_export_one_line_exit_2(tmp_path_factory, tmp_path, case):
    exp = tmp_path / "export"
    shutil.copytree(tiny_bir_run(tmp_path_factory)[1], exp, symlinks=True)
    if case == "garbage_pb":
        (exp / "saved_model" / "saved_model.pb").write_bytes(b"garbage")
    elif case == "no_variables":
        shutil.rmtree(exp / "saved_model" / "variables")
    else:
        run_ = json.loads((exp / "run.json").read_text())
        run_["tasks_learned"] = {"tasks_learned_not_a_count": "two",
                                 "more_learned_than_tasks": 7, "nothing_learned": 0}[case]
        (exp / "run.json").write_text(json.dumps(run_))
    r = run("apps.evaluate_generator", f"--export_dir={exp}", "--n=20", "--clusters=4",
            "--embedding_epochs=1", "--fc_units=8", "--runs=1")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    if case == "tasks_learned_not_a_count":
        assert line == (f"error: {exp / 'run.json'}: not a run record of apps.train "
                        "(tasks_learned is 'two', not a count of tasks)")
    elif case == "more_learned_than_tasks":
        assert line == (f"error: {exp / 'run.json'}: not a run record of apps.train "
                        "(tasks_learned is 7, more than its 2 tasks)")
    elif case == "nothing_learned":
        assert line == f"error: {exp}: this run has not completed a task yet: there are no " \
            "classes learned to score its generator on"
    else:
        assert line.startswith(f"error: cannot load the SavedModel in {exp / 'saved_model'}: ")
    assert not (exp / "quality.json").exists()


# apps.evaluate_generator and apps.sample define the same flags: in-process checks of
# this program run in a process of their own (a test worker may have imported apps.sample)
FAILING = """
import errno, os, sys, tempfile
from pathlib import Path
from bir_keras import appfiles
import apps.evaluate_generator as app
code = getattr(errno, sys.argv[3])

def failing(*args, **kwargs):
    raise OSError(code, os.strerror(code), str(args[0]) if args else None)

if sys.argv[1] == "write":
    appfiles.write_file = failing
    sys.exit(app.exit_code_of(lambda: app._write(Path(sys.argv[2]),
                                                  {"written_by": app.WRITTEN_BY, "fid": 1.5})))
tempfile.mkstemp = failing
try:
    app.check_out(Path(sys.argv[2]), False)
except app.rundirs.PathRefused as e:
    print(e)
"""


def _failing(tmp_path: Path, what: str, out: Path, err: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAILING, what, str(out), err], cwd=ROOT,
                          env=no_tensorflow_env(tmp_path), capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("err", ["ENOSPC", "EROFS", "EACCES"])
def test_failed_write_of_the_scores_exit_1(tmp_path, err):
    import errno

    out = tmp_path / "q.json"
    r = _failing(tmp_path, "write", out, err)
    assert r.returncode == 1, r.stderr[-2000:]
    assert json.loads(r.stdout)["fid"] == 1.5   # the work is not lost
    assert r.stderr == (f"error: --out={out}: cannot write it "
                        f"({os.strerror(getattr(errno, err))}); the scores are printed above\n")
    assert not out.exists()


@pytest.mark.parametrize("err", ["EROFS", "EACCES", "ENOSPC"])
def test_out_in_a_folder_that_cannot_be_written_refused(tmp_path, err):
    # a read-only file system, a folder without write permission (root passes chmod, so
    # the probe's error is injected), a full disk: refused before any work, naming why
    import errno

    out = tmp_path / "q.json"
    r = _failing(tmp_path, "check", out, err)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == (f"--out={out}: cannot write in {tmp_path} "
                        f"({os.strerror(getattr(errno, err))})\n")
