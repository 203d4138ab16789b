"""The benchmarks refuse bad input on the command line with exactly one `error:` line and exit
code 2, before any work starts (TensorFlow is never imported: a fake `tensorflow` package
that raises on import is first on PYTHONPATH): a flag parse error (unknown flag, bad enum,
bad integer, stray argument), an empty path flag, and, for benchmarks.precision, a run
setting that apps.train would refuse (checked in-process for every run before the first
starts). Also: an image PIL cannot decode is reported without the address of an in-memory
object."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fake_tf_env(tmp_path_factory) -> dict:
    fake = tmp_path_factory.mktemp("fake_site")
    (fake / "tensorflow").mkdir()
    (fake / "tensorflow" / "__init__.py").write_text(
        "raise RuntimeError('TensorFlow was imported before the flags were checked')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)]),
            "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}


def run(module: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and "FATAL" not in r.stderr
    return lines[0]


# -- benchmarks.speed (absl flags) ----------------------------------------------------------
@pytest.mark.parametrize("arg, says", [
    ("--xla=maybe", "--xla=maybe"),             # a value outside the enum
    ("--steps=abc", "--steps=abc"),             # not an integer
    ("--repeats=1.5", "--repeats=1.5"),
    ("--bogus", "bogus"),                       # a flag it does not have
    ("stray", "'stray'"),                       # not a flag at all
    ("--out=", "--out is empty"),               # would fall back to the default --out
    ("--data_dir=", "--data_dir is empty"),     # would fall back to random images
    ("--methods=", "--methods names nothing"),  # would time nothing
])
def test_speed_refuses_bad_flags_with_one_line(fake_tf_env, arg, says):
    line = one_error_line(run("benchmarks.speed", "--quick", arg, env=fake_tf_env))
    assert says in line, line


def test_speed_help_exits_0(fake_tf_env):
    r = run("benchmarks.speed", "--help", env=fake_tf_env)
    assert r.returncode == 0 and "--xla" in r.stdout, (r.returncode, r.stderr[-2000:])


# -- benchmarks.precision (argparse; every run checked as apps.train checks it) --------------
@pytest.fixture
def data_dir(tmp_path) -> str:
    d = tmp_path / "mnist"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("args, says", [
    (["--seeds=abc"], "--seeds=abc"),
    (["--seeds=12,,13"], "--seeds=12,,13"),
    (["--seeds=12,12"], "--seeds names 12 more than once"),
    (["--seeds=-1"], "--seed must be in"),                    # apps.train's own check
    (["--methods=nonsense"], "'nonsense'"),
    (["--rows=permuted_mnist", "--methods=nonsense"], "'nonsense'"),
    (["--methods=bir,"], "an empty method name"),
    (["--extra=--iters=abc"], "--iters=abc"),
    (["--extra=--batch=0"], "--batch"),
    (["--extra=--no_such_flag=1"], "no_such_flag"),
    (["--extra=foo"], "'foo' is not a flag"),
    (["--extra=--precision=float32"], "sets --precision"),  # would make both runs float32
    (["--out="], "--out is empty"),
    (["--rows=nope"], "unknown row 'nope'"),
    (["--bogus=1"], "--bogus"),
])
def test_precision_refuses_before_any_run(fake_tf_env, data_dir, args, says):
    # a run that starts imports the fake TensorFlow and fails with exit 1, not 2
    line = one_error_line(run("benchmarks.precision", f"--data_dir={data_dir}", *args,
                              env=fake_tf_env))
    assert says in line, line


@pytest.mark.parametrize("args, says", [
    (["--seeds=12"], "--data_dir"),          # required, left out: no usage block
    (["--data_dir="], "--data_dir is empty"),
])
def test_precision_data_dir_refusals(fake_tf_env, args, says):
    line = one_error_line(run("benchmarks.precision", *args, env=fake_tf_env))
    assert says in line, line


def test_precision_checks_pass_for_good_settings(data_dir):
    from benchmarks import precision

    runs = precision.plan(["split_mnist", "permuted_mnist"], ["bir", "generative"], [12])
    assert len(runs) == 6
    assert precision.check_extra(["--iters=100"]) is None
    assert precision.check_runs(runs, data_dir, ["--iters=100"]) is None


# -- benchmarks.vs_reference, equivalence, flagfiles (argparse) ------------------------------
def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("args, says", [
    (["--out="], "--out is empty"),
    (["--reference_python="], "--reference_python is empty"),
    (["--data_dir="], "--data_dir is empty: name a path"),
    (["--reference="], "--reference is empty: name a path"),
    (["--iters_scale=inf"], "--iters_scale must be a finite number"),  # was an OverflowError
    (["--iters_scale=nan"], "--iters_scale must be a finite number"),
])
def test_vs_reference_refuses_empty_paths(tmp_path, capsys, args, says):
    from benchmarks import vs_reference

    base = {"--reference": str(tmp_path), "--data_dir": str(tmp_path)}
    for a in args:
        base.pop(a.split("=")[0], None)
    argv = [f"{k}={v}" for k, v in base.items()] + args
    assert _exit_code(vs_reference.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


@pytest.mark.parametrize("args, says", [
    (["--record_dir="], "--record_dir is empty"),      # would write into the working folder
    (["--data_dir="], "--data_dir is empty"),          # would skip the MNIST cases silently
    (["--data_dir=/no/such/folder"], "does not exist"),
    (["--bogus"], "--bogus"),
    (["--cases=class_bir,nope"], "nope is not a case"),
    (["--cases=task_none"], "none of task_none is a split MNIST case"),  # with --skip_digits
])
def test_equivalence_refuses_bad_flags(fake_tf_env, args, says):
    line = one_error_line(run("benchmarks.equivalence", "--skip_digits", *args,
                              env=fake_tf_env))
    assert says in line, line


def test_flagfiles_refuses_unknown_flag_with_one_line(capsys):
    from benchmarks import flagfiles

    assert _exit_code(flagfiles.main, ["--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--bogus" in err[0], err


# -- bir_keras.data.sources: an image that cannot be decoded -------------------------------
def _decode_error(data: bytes) -> str:
    from bir_keras.data.sources import DataError, _decode_images

    with pytest.raises(DataError) as info:
        _decode_images("mnist", [("train/c3/5.png", 3)], lambda key: data, "DIR")
    return str(info.value)


def test_undecodable_image_named_without_object_address():
    msg = _decode_error(b"not an image at all")
    assert "train/c3/5.png" in msg and "not an image PIL can read" in msg, msg
    assert "0x" not in msg and "BytesIO" not in msg, msg
    assert "0x" not in _decode_error(b"") and "empty file" in _decode_error(b"")


def test_truncated_image_says_truncated():
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.RandomState(0).randint(0, 256, (28, 28)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "PNG")
    msg = _decode_error(buf.getvalue()[:len(buf.getvalue()) // 2])
    assert "train/c3/5.png" in msg and "truncated" in msg and "0x" not in msg, msg
