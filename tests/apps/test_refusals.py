"""apps.train refuses bad input with one `error:` line and exit 2, before TensorFlow or any
data loads where the flags alone are wrong; it never deletes or replaces a file or directory
that it did not write (with or without --overwrite); --help exits 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bir_keras import rundirs
from tests.apps.test_sample import ENV, FAST, ROOT

# no TF_CPP_MIN_LOG_LEVEL: what a user without it set sees
PLAIN_ENV = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.fixture
def no_tensorflow(tmp_path):
    """An environment in which importing TensorFlow fails loudly: a refusal that still
    exits 2 with its `error:` line came before TensorFlow was imported."""
    return no_tensorflow_env(tmp_path)


def no_tensorflow_env(tmp_path: Path) -> dict:
    """The environment of the ``no_tensorflow`` fixture."""
    fake = tmp_path / "fake_site"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text(
        "raise RuntimeError('TensorFlow was imported before the flags were checked')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}


def train(*args, env=None, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, "-m", "apps.train", *args], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout)


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


def fake_export(path: Path, flags: dict | None = None) -> Path:
    """A directory that looks to apps.train like one of its exports (marker, run.json)."""
    path.mkdir(parents=True)
    base = dict(experiment="split_digits", scenario="class", method=None, tasks=5, iters=25,
                batch=32, lr=0.001, fc_units=40, seed=0, keep_label_order=True, z_dim=8,
                replay="none")
    (path / "run.json").write_text(json.dumps({
        "flags": {**base, **(flags or {})}, "tasks_learned": 1,
        "protocol": {"experiment": "split_digits"}, "accuracy_matrix": [[1.0]]}))
    rundirs.write_marker(path, rundirs.EXPORT)  # last: it lists what the directory holds
    return path


def thesis_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.txt").write_text("four years of work")
    return path


# cases refused for one extra argument
EXTRA_ARGS = {"positional": "extra", "gamma": "--gamma=2", "lr_nan": "--lr=nan",
              "seed": "--seed=-1", "unknown_flag": "--no_such_flag=1",
              "unknown_method": "--method=bogus", "unknown_experiment": "--experiment=split_imagenet",
              "tasks_over": "--tasks=6", "tasks_zero": "--tasks=0",
              "ewc_lambda_negative": "--ewc_lambda=-1", "method_xdg_class": "--method=xdg",
              "replay_unknown": "--replay=bogus"}


@pytest.mark.parametrize("case", [
    "flagfile_line_without_dashes", "positional", "gamma", "lr_nan", "seed", "unknown_flag",
    "unknown_method", "unknown_experiment", "foreign_export", "foreign_export_overwrite",
    "foreign_output_overwrite", "marked_output_with_foreign_file", "existing_export",
    "output_under_a_file", "export_under_a_file", "nested", "resume_other_method",
    "resume_other_fc_units", "resume_not_an_export", "missing_data_dir", "xdg_class",
    "tasks_over", "buffer_brain_inspired", "foreign_file_deep_in_output", "tasks_zero",
    "ewc_lambda_negative", "method_xdg_class", "replay_unknown", "method_against_its_flag",
])
def test_refused_before_tensorflow_loads(case, tmp_path, no_tensorflow):
    out, exp = tmp_path / "out", tmp_path / "exp"
    args = [*FAST, f"--output_dir={out}", f"--export_dir={exp}"]
    keep = None
    expect = {
        "flagfile_line_without_dashes": "line 'scenario=task' is not a flag",
        "positional": "unexpected argument 'extra'",
        "gamma": "--gamma must be in (0, 1]",
        "lr_nan": "--lr must be a positive finite number, got nan",
        "seed": "--seed must be in [0, 2^32)",
        "unknown_flag": "Unknown command line flag 'no_such_flag'",
        "unknown_method": "--method must be one of",
        "unknown_experiment": "--experiment must be one of",
        "foreign_export": "never replaced",
        "foreign_export_overwrite": "never replaced",
        "foreign_output_overwrite": "never replaced",
        "marked_output_with_foreign_file": "holds files a run does not write (thesis.txt)",
        "existing_export": "pass --overwrite",
        "output_under_a_file": "--output_dir=",
        "export_under_a_file": "--export_dir=",
        "nested": "must not be the same directory or inside one another",
        "resume_other_method": "was trained with --replay=none, this run has --replay=generative",
        "resume_other_fc_units": "was trained with --fc_units=40, this run has --fc_units=64",
        "resume_not_an_export": "no run.json there",
        "missing_data_dir": "does not exist",
        "xdg_class": "XdG needs task identity",
        "tasks_over": "--tasks=6: split_digits has 5 tasks",
        # refused by bir_keras.config.resolve (no absl validator): see tests/test_config.py
        "tasks_zero": "--tasks must be at least 1, got 0",
        "ewc_lambda_negative": "--ewc_lambda must be a finite number >= 0, got -1.0",
        "method_xdg_class": "XdG needs task identity: --method=xdg is only allowed with "
                            "--scenario=task (got --scenario=class)",
        "replay_unknown": "--replay must be none, offline, current, generative or buffer, "
                          "got 'bogus'",
        # given at its default value: still a contradiction (the flag was given)
        "method_against_its_flag": "--method=bir sets --replay=generative: it cannot be run "
                                   "with --replay=none (drop one of them)",
        "buffer_brain_inspired": "--brain_inspired is generative replay (BI-R): it needs "
                                 "--replay=generative (got --replay=buffer)",
        "foreign_file_deep_in_output": "holds files a run does not write (tensorboard/notes.txt)",
    }[case]
    if case == "flagfile_line_without_dashes":
        cfg = tmp_path / "run.cfg"
        cfg.write_text("--experiment=split_digits\n# a comment\nscenario=task\n")
        args.append(f"--flagfile={cfg}")
    elif case in EXTRA_ARGS:
        args.append(EXTRA_ARGS[case])
    elif case in ("foreign_export", "foreign_export_overwrite"):
        keep = thesis_dir(exp)
        if case.endswith("overwrite"):
            args.append("--overwrite")
    elif case == "foreign_output_overwrite":
        keep = thesis_dir(out)
        args.append("--overwrite")
    elif case == "buffer_brain_inspired":
        args += ["--replay=buffer", "--brain_inspired"]
    elif case == "method_against_its_flag":
        args += ["--method=bir", "--replay=none"]
    elif case == "foreign_file_deep_in_output":
        (out / "tensorboard").mkdir(parents=True)
        (out / "results.json").write_text("{}")
        rundirs.write_marker(out, rundirs.OUTPUT)
        (out / "tensorboard" / "notes.txt").write_text("mine")
        keep = out
        args.append("--overwrite")
    elif case == "marked_output_with_foreign_file":
        keep = thesis_dir(out)
        rundirs.write_marker(out, rundirs.OUTPUT)
        args.append("--overwrite")
    elif case == "existing_export":
        keep = fake_export(exp)
    elif case == "output_under_a_file":
        (tmp_path / "file").write_text("x")
        args.append(f"--output_dir={tmp_path / 'file' / 'out'}")
    elif case == "export_under_a_file":
        (tmp_path / "file").write_text("x")
        args.append(f"--export_dir={tmp_path / 'file' / 'exp'}")
    elif case == "nested":
        args.append(f"--export_dir={out / 'export'}")
    elif case == "resume_other_method":
        fake_export(tmp_path / "old")
        args += ["--method=bir", f"--resume_from={tmp_path / 'old'}"]
    elif case == "resume_other_fc_units":
        fake_export(tmp_path / "old")
        args = [a.replace("--fc_units=40", "--fc_units=64") for a in args]
        args.append(f"--resume_from={tmp_path / 'old'}")
    elif case == "resume_not_an_export":
        thesis_dir(tmp_path / "old")
        args.append(f"--resume_from={tmp_path / 'old'}")
    elif case == "missing_data_dir":
        args.append(f"--data_dir={tmp_path / 'nothing'}")
    elif case == "xdg_class":
        args.append("--xdg")
    before = tree(keep) if keep else None
    line = one_error_line(train(*args, env=no_tensorflow))
    assert expect in line, line
    if keep is not None:
        assert tree(keep) == before
    if case not in ("foreign_output_overwrite", "marked_output_with_foreign_file",
                    "foreign_file_deep_in_output"):
        assert not out.exists()


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_exits_0(flag, no_tensorflow):
    r = train(flag, env=no_tensorflow)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--output_dir" in r.stdout and "--overwrite" in r.stdout


def test_unwritable_output_dir_refused(tmp_path, no_tensorflow):
    if os.geteuid() == 0:
        pytest.skip("root can write into a read-only directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for flag in ("--output_dir", "--export_dir"):
            args = [*FAST, f"--output_dir={tmp_path / 'o'}", f"--export_dir={tmp_path / 'e'}",
                    f"{flag}={ro / 'x'}"]
            line = one_error_line(train(*args, env=no_tensorflow))
            assert f"{flag}={ro / 'x'}: cannot write in {ro}" in line
    finally:
        ro.chmod(0o700)


def test_no_tensorflow_log_lines_by_default(tmp_path):
    # a refusal after TensorFlow has loaded (the data is read after the flags are checked)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--experiment=split_mnist", f"--data_dir={empty}", "--output_dir=runs/o"]
    env = {**PLAIN_ENV, "PYTHONPATH": str(ROOT)}
    r = train(*args, env=env, cwd=tmp_path)
    line = one_error_line(r)  # nothing but the error line on stderr
    assert "holds no mnist data" in line
    assert r.stdout == ""
    # a refusal creates nothing: no runs/, no saved_models/runs/ for the default export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    # --tf_log brings TensorFlow's own lines back (whatever this machine's TensorFlow says)
    r = train(*args, "--tf_log", env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == line


@pytest.mark.parametrize("module", ["apps.sample", "apps.evaluate_generator", "apps.compare",
                                    "apps.pretrain"])
def test_every_app_help_exits_0_and_bad_flag_exits_2(module, tmp_path):
    env = no_tensorflow_env(tmp_path)

    def run(*args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    r = run("--help")
    assert r.returncode == 0 and "--" in r.stdout, (r.returncode, r.stderr[-2000:])
    bad = "--seed=x" if module != "apps.sample" else "--n=x"
    if module == "apps.compare":
        bad = "--seeds=x"
    line = one_error_line(run(bad))
    assert "error: flag --" in line


def test_library_resume_with_other_networks_is_one_config_error(tmp_path, monkeypatch):
    # experiment.run called from Python, past the settings check: the checkpoint that does
    # not fit is still one ConfigError, not a traceback with a warning per variable
    from bir_keras import experiment
    from bir_keras.config import Config, ConfigError

    # without XLA (the refusal comes before any step; compiling the first run's was most of
    # this test's time)
    base = dict(experiment="split_digits", scenario="class", tasks=2, iters=5, batch=32,
                fc_units=40, keep_label_order=True, jit_compile=False)
    experiment.run(Config(**{**base, "tasks": 1}), str(tmp_path / "o1"), export_dir=str(tmp_path / "e1"), verbose=False)
    monkeypatch.setattr(rundirs, "check_resume_flags", lambda *a: None)
    with pytest.raises(ConfigError, match="its checkpoint does not fit the networks of this run"):
        experiment.run(Config(**{**base, "fc_units": 24}), str(tmp_path / "o2"),
                       export_dir=str(tmp_path / "e2"), resume_from=str(tmp_path / "e1"),
                       verbose=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "e2").exists()


def test_too_big_for_memory_is_one_line_before_any_work(no_tensorflow):
    # the estimate of weights (or of one iteration's activations) against the memory
    # available: exit 1, the flag to lower named, before TensorFlow loads
    # sizes within the flags' ranges (bir_keras.config.INT_RANGES) that no 2026 machine holds:
    # ~300 GiB of weights, ~240 GiB of one iteration's activations
    for args, flag in ((["--fc_units=100000"], "--fc_units"),
                       (["--fc_units=2000", "--batch=1000000"], "--batch")):
        r = train(*FAST, *args, env=no_tensorflow)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        [line] = r.stderr.strip().splitlines()
        assert line.startswith("error: out of memory") and f"lower {flag}" in line, line


def test_a_second_run_on_the_same_output_dir_is_refused_at_once(tmp_path, no_tensorflow):
    # another run holds the output directory (its claim, taken here as apps.train takes it)
    out = tmp_path / "out"
    with rundirs.claim(out, "--output_dir"):
        r = train(*FAST, f"--output_dir={out}", f"--export_dir={tmp_path / 'exp'}",
                  env=no_tensorflow)
        line = one_error_line(r)
    assert f"--output_dir={out} is being written by another run (process {os.getpid()})" in line
    assert not out.exists() and not (tmp_path / "exp").exists()
