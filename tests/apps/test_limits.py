"""apps.train refuses, before TensorFlow loads, every flag value past what the machine or
the method can do (one `error:` line, exit 2): numbers out of range, path flags given
empty, names longer than the file system allows, two names for one folder, flagfiles that
are not text; and a file system that fills up during a run is named as such (exit 1),
never as a lack of memory."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from apps import common
from tests import processes
from tests.apps.test_refusals import no_tensorflow_env, one_error_line, train
from tests.apps.test_train_app import ENV, FAST

CASES = {
    # flag values that were accepted and then ran until killed, or failed after training
    "iters_huge": (["--iters=99999999999999999999"], "--iters must be at most 10,000,000"),
    "fc_layers_deep": (["--fc_layers=1000"], "--fc_layers must be at most 32"),
    "fc_layers_units": (["--fc_layers=100000", "--fc_units=10"], "--fc_layers must be at most"),
    "lr_zero_in_float32": (["--lr=1e-300"], "--lr=1e-300 is 0 in float32"),
    "lr_infinite_in_float32": (["--lr=1e300"], "--lr=1e+300 is infinite in float32"),
    "temp_overflows": (["--method=lwf", "--temp=1e308"], "--temp=1e+308 is infinite in float32"),
    "temp_huge": (["--method=lwf", "--temp=1e10"], "--temp must be in [1e-06, 1e+06]"),
    "ewc_lambda_infinite_in_float32": (["--method=ewc", "--ewc_lambda=1e300"],
                                       "--ewc_lambda=1e+300 is infinite in float32"),
    "last_packed_seed_past_2_32": (["--seed=4294967295", "--seeds_at_once=2"],
                                   "reaches seed 4294967296, past the last seed 2^32 - 1"),
    "seeds_at_once_huge": (["--seeds_at_once=100000"], "--seeds_at_once must be in [1, 64]"),
    "logical_cpus_huge": (["--strategy=mirrored", "--num_logical_cpus=100000"],
                          "--num_logical_cpus must be in [0, 16]"),
    "batch_over_replicas": (["--strategy=mirrored", "--num_logical_cpus=2", "--batch=3"],
                            "--batch=3 must be divisible by the 2 replicas"),
    "progress_every_zero": (["--progress_every=0"], "--progress_every must be a number of "
                                                     "seconds in [0.1, 1e7], got 0.0"),
    "checkpoint_every_nan": (["--checkpoint_every=nan"], "--checkpoint_every must be a number "
                                                          "of minutes"),
    "output_dir_empty": (["--output_dir="], "--output_dir is empty"),
    "export_dir_empty": (["--export_dir="], "--export_dir is empty"),
    "data_dir_empty": (["--data_dir="], "--data_dir is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_is_refused_before_tensorflow_loads(case, tmp_path):
    args, expect = CASES[case]
    paths = [f"--output_dir={tmp_path / 'out'}", f"--export_dir={tmp_path / 'exp'}"]
    paths = [p for p in paths if not any(a.startswith(p.split("=")[0] + "=") for a in args)]
    line = one_error_line(train(*FAST, *paths, *args, env=no_tensorflow_env(tmp_path),
                                timeout=60))
    assert expect in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "exp").exists()


def test_a_name_too_long_is_refused_before_any_work(tmp_path):
    env = no_tensorflow_env(tmp_path)
    for flag in ("output_dir", "export_dir"):
        long = tmp_path / ("x" * 300)
        line = one_error_line(train(*FAST, f"--{flag}={long}", env=env, timeout=60))
        assert f"--{flag}=" in line and "longer than the" in line and "choose a shorter" in line
        # a name that fits only without the room for the temporaries written beside it
        near = tmp_path / ("y" * 250)
        line = one_error_line(train(*FAST, f"--{flag}={near}", env=env, timeout=60))
        assert "longer than the" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_site"]


def test_one_folder_under_two_names_is_refused(tmp_path):
    # --output_dir and --export_dir the same folder through a symbolic link: refused up
    # front (it used to train, then stop with exit 2 and lose the results)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    line = one_error_line(train(*FAST, f"--output_dir={tmp_path / 'real' / 'run'}",
                                f"--export_dir={tmp_path / 'link' / 'run'}",
                                env=no_tensorflow_env(tmp_path), timeout=60))
    assert "must not be the same directory or inside one another" in line
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.parametrize("kind", ["binary", "folder"])
def test_a_flagfile_that_is_not_text_is_one_line(kind, tmp_path):
    bad = tmp_path / "run.cfg"
    if kind == "binary":
        bad.write_bytes(bytes(range(256)) * 4)
    else:
        bad.mkdir()
    line = one_error_line(train(f"--flagfile={bad}", env=no_tensorflow_env(tmp_path),
                                timeout=60))
    assert f"--flagfile={bad}" in line
    assert ("is not a text file" if kind == "binary" else "cannot be read") in line


def test_a_full_disk_is_named_not_called_memory():
    # what TensorFlow's file system raises on a full disk (RESOURCE_EXHAUSTED, the code of an
    # out-of-memory error too), and Python's OSError: each named for what it is
    import tensorflow as tf

    cases = [
        (tf.errors.ResourceExhaustedError(None, None, "/x/saved_model/variables.data: No "
                                          "space left on device"), "no space left on the device"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/results.json"),
         "/x/results.json: no space left on the device"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x"), "read-only file system"),
        (tf.errors.PermissionDeniedError(None, None, "/x/ckpt: Permission denied"),
         "permission denied"),
    ]
    for error, expect in cases:
        with pytest.raises(common.TrainingFailed) as e, common.out_of_memory_names("--batch"):
            raise error
        assert expect in str(e.value) and "memory" not in str(e.value), str(e.value)
    with pytest.raises(common.TrainingFailed, match="out of memory: lower --batch"), \
            common.out_of_memory_names("--batch"):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


def _mount_small_tmpfs(where: Path) -> bool:
    where.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


# a whole run on a real 64 KiB tmpfs (about 14 s); the naming of each error is tested above
# with the errors injected
@pytest.mark.slow
def test_a_run_on_a_full_file_system_says_so(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_small_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount); the mapping itself is "
                    "tested above")
    try:
        r = train(*FAST, "--tasks=2", "--method=bir", f"--output_dir={tmp_path / 'out'}",
                  f"--export_dir={disk / 'exp'}")
        assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
        [line] = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert line.startswith("error: ") and "no space left on the device" in line, line
        assert "memory" not in line and "Traceback" not in r.stderr
        assert not (tmp_path / "out").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)


def test_a_run_stopped_after_its_last_export_is_finished_without_training(tmp_path,
                                                                           tmp_path_factory):
    # Ctrl-C after the last task's export but before results.json: the export holds every
    # task, the output directory was never written. The same command with --resume_from
    # writes results, plots and TensorBoard from the export, without training. (The
    # session's tiny BI-R run stands for the run: its export, copied, as the stopped run
    # left it; its results.json is what the finished run must write.)
    import shutil

    from tests.apps.test_sample import tiny_bir_run

    straight_out, export = tiny_bir_run(tmp_path_factory)
    exp = tmp_path / "exp"
    shutil.copytree(export, exp, symlinks=True)
    before = (exp / "run.json").read_bytes()
    r = train(*FAST, "--method=bir", "--tasks=2", "--log_every=10", f"--export_dir={exp}",
              f"--output_dir={tmp_path / 'out'}", f"--resume_from={exp}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "writing its results, plots and TensorBoard without training" in r.stdout
    assert "iteration" not in r.stdout  # no progress line: nothing trained
    straight = json.loads((straight_out / "results.json").read_text())
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["accuracy_matrix"] == straight["accuracy_matrix"]
    assert res["final_average_accuracy"] == straight["final_average_accuracy"]
    assert res["global_step"] == straight["global_step"]
    assert (tmp_path / "out" / "accuracy.png").is_file()
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert (exp / "run.json").read_bytes() == before  # the export is untouched
    # asking for fewer tasks than the export learned is still refused (tests/apps/
    # test_train_app.py::test_resume_from_a_broken_checkpoint_says_which)


def test_config_refuses_a_method_against_a_flag_given_at_its_default():
    from bir_keras.config import Config, ConfigError, resolve

    # the command line refuses --method=bir --replay=none; so does Python now
    with pytest.raises(ConfigError, match="--method=bir sets --replay=generative: it cannot "
                                          "be run with --replay=none"):
        resolve(Config(experiment="split_digits", method="bir", replay="none"))
    with pytest.raises(ConfigError, match="--method=ewc sets --ewc=true"):
        resolve(Config(experiment="split_digits", method="ewc", ewc=False))
    # not given: the method's, or off
    c = resolve(Config(experiment="split_digits", method="bir"))
    assert c.replay == "generative" and c.brain_inspired and not c.ewc
    plain = resolve(Config(experiment="split_digits"))
    assert plain.replay == "none" and plain.ewc is False and plain.brain_inspired is False


@pytest.mark.parametrize("kwargs, expect", [
    (dict(checkpoint_every=-1), "--checkpoint_every must be a number of minutes"),
    (dict(checkpoint_every=float("nan"), progress_every=1), "--checkpoint_every must be"),
    (dict(progress_every=0), "--progress_every must be a number of seconds"),
    (dict(seeds_at_once=0), "--seeds_at_once must be in [1, 64]"),
])
def test_experiment_run_checks_its_options_before_any_work(kwargs, expect, tmp_path):
    from bir_keras import experiment
    from bir_keras.config import Config, ConfigError

    with pytest.raises(ConfigError, match=expect.replace("[", r"\[")):
        experiment.run(Config(experiment="split_digits"), str(tmp_path / "out"), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_conv_weights_that_are_not_weights_are_one_line(tmp_path, mnist_idx_dir):
    # an IDX .gz given as --conv_weights: Keras' "File format not supported" traceback before
    gz = next(mnist_idx_dir.glob("*.gz"))
    line = one_error_line(train("--experiment=split_cifar10", "--scenario=class",
                                f"--conv_weights={gz}", f"--output_dir={tmp_path / 'o'}",
                                env=no_tensorflow_env(tmp_path), timeout=60))
    assert f"--conv_weights={gz}" in line or str(gz) in line, line


def test_a_flagfile_loop_is_refused(tmp_path):
    # absl warns "Hit circular flagfile dependency" and trains without the file
    a, b, s = tmp_path / "a.cfg", tmp_path / "b.cfg", tmp_path / "self.cfg"
    a.write_text(f"--iters=25\n--flagfile={b}\n")
    b.write_text(f"--batch=32\n--flagfile={a}\n")
    s.write_text(f"--flagfile={s}\n")
    env = no_tensorflow_env(tmp_path)
    line = one_error_line(train(f"--flagfile={a}", env=env, timeout=60))
    assert "names itself through its flagfiles" in line and f"{a} -> {b} -> {a}" in line
    line = one_error_line(train(f"--flagfile={s}", env=env, timeout=60))
    assert "names itself through its flagfiles" in line
    # one file named by two others is no loop
    c, d = tmp_path / "c.cfg", tmp_path / "d.cfg"
    d.write_text("--iters=25\n")
    c.write_text(f"--flagfile={d}\n--flagfile={d}\n--lr=nan\n")
    line = one_error_line(train(f"--flagfile={c}", env=env, timeout=60))
    assert "--lr must be a positive finite number" in line


@pytest.mark.parametrize("delay", [0.3, 0.45])
def test_ctrl_c_while_starting_is_one_line_and_exit_130(delay, tmp_path):
    # a Ctrl-C while the program still imports its modules printed a KeyboardInterrupt
    # traceback (and the process died by the signal)
    import time

    with processes.running(["-m", "apps.train", *FAST, f"--output_dir={tmp_path / 'o'}",
                            f"--export_dir={tmp_path / 'e'}"], env=ENV) as proc:
        time.sleep(delay)
        out, err = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert [ln for ln in err.splitlines() if ln.strip()][-1].startswith("interrupted")
