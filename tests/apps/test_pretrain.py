"""apps.pretrain end to end on a tiny CIFAR-10-format dataset: weights that load_trunk
reads, the JSON record beside them, refused input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import processes

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
FAST = ["--epochs=1", "--limit=16", "--batch=8", "--head_units=16"]


def pretrain(*args, env=None):
    return subprocess.run([sys.executable, "-m", "apps.pretrain", *args], cwd=ROOT,
                          env=env or ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny pre-training run (20 training images written as CIFAR-10 pickles)."""
    from tests.conftest import CIFAR10_NAMES, _cifar_data, _pickle

    root = tmp_path_factory.mktemp("pretrain")
    folder = root / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        _pickle(folder / f"data_batch_{b + 1}",
                {b"labels": [(4 * b + i) % 10 for i in range(4)], b"data": _cifar_data(4, 4 * b)})
    _pickle(folder / "test_batch", {b"labels": list(range(10)), b"data": _cifar_data(10, 1000)})
    _pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    out = root / "models" / "conv_trunk.weights.h5"
    r = pretrain(f"--data_dir={root / 'data'}", f"--out={out}", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, out, r


def test_weights_load_with_load_trunk(trained):
    from bir_keras.experiment import load_trunk

    root, out, r = trained
    assert out.exists()
    trunk = load_trunk(str(out))
    fresh = load_trunk("random")
    loaded, init = trunk.get_weights(), fresh.get_weights()
    # 5 conv layers (kernel, bias), batch norm (gamma, beta, mean, var) after the first 4: the
    # last conv layer is linear, as in the authors' code
    assert len(loaded) == len(init) == 26
    assert any(not np.allclose(a, b) for a, b in zip(loaded, init))
    x = np.random.RandomState(0).randn(2, 32, 32, 3).astype("float32")
    assert trunk(x, training=False).shape == (2, 1024)
    # written atomically: no temporary file left beside the weights
    assert sorted(p.name for p in out.parent.iterdir()) == ["conv_trunk.json",
                                                           "conv_trunk.weights.h5"]


def test_json_record(trained):
    root, out, r = trained
    rec = json.loads((out.parent / "conv_trunk.json").read_text())
    assert rec["epochs"] == 1 and rec["finished"] and rec["train_images"] == 16
    assert rec["test_images"] == 10 and 0.0 <= rec["test_accuracy"] <= 1.0
    assert rec["seconds"] > 0 and rec["command"].startswith("python -m apps.pretrain")
    assert "--limit=16" in rec["command"] and rec["weights"] == out.name
    # the record says this program wrote the weights beside it, and which ones
    from bir_keras.appfiles import sha256

    assert rec["written_by"] == "bir_keras apps.pretrain"
    assert rec["weights_sha256"] == sha256(out) and rec["previous_weights_sha256"] is None
    assert len(rec["history"]) == 1
    assert "test accuracy" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"] == rec["test_accuracy"]


@pytest.mark.parametrize("bad", [["--data_dir=MISSING"], ["--out=OUT.h5"], ["--epochs=0"],
                                 ["--lr=nan"], ["--seed=-1"], ["stray"], ["--lr=inf"],
                                 ["--lr=-1e-4"], ["--lr=0"], ["--lr=1e-40"], ["--lr=1e39"],
                                 ["--epochs=1000000"], ["--batch=0"], ["--batch=10000000"],
                                 ["--head_layers=-1"], ["--head_layers=1000"],
                                 ["--head_units=0"], ["--limit=0"], ["--test_limit=0"]])
def test_refused_input_exits_2_and_keeps_weights(trained, tmp_path, bad):
    root, out, _ = trained
    before = out.read_bytes()
    bad = [b.replace("MISSING", str(tmp_path / "nothing")).replace("OUT", str(out.parent / "w"))
           for b in bad]
    # (--overwrite: the weights may be replaced, so it is the bad flag that is refused)
    args = [f"--data_dir={root / 'data'}", f"--out={out}", "--overwrite", *FAST, *bad]
    r = pretrain(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1
    assert out.read_bytes() == before
    assert not (out.parent / "w.h5").exists()


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize("case", ["ours_without_overwrite", "foreign_weights",
                                  "foreign_record", "weights_without_record",
                                  "swapped_weights"])
def test_existing_out_replaced_only_if_ours_and_asked(trained, tmp_path, case):
    from tests.apps.test_refusals import no_tensorflow_env

    root, out, _ = trained
    target = tmp_path / "conv_trunk.weights.h5"
    record = tmp_path / "conv_trunk.json"
    if case in ("ours_without_overwrite", "swapped_weights", "foreign_record"):
        target.write_bytes(out.read_bytes())
        record.write_text((out.parent / "conv_trunk.json").read_text())
    if case == "foreign_weights":
        target.write_bytes(b"my weights")
    if case == "swapped_weights":   # a record of ours beside weights that are not
        target.write_bytes(b"my weights")
    if case == "foreign_record":
        record.write_text('{"epochs": 3}')
    if case == "weights_without_record":
        target.write_bytes(out.read_bytes())
    env = no_tensorflow_env(tmp_path)  # refused before the data or TensorFlow load
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    extra = [] if case == "ours_without_overwrite" else ["--overwrite"]
    line = one_error_line(pretrain(f"--data_dir={root / 'data'}", f"--out={target}", *FAST,
                                   *extra, env=env))
    assert line.startswith(f"error: --out={target} exists") or \
        line.startswith(f"error: --out={record} exists")
    if case == "ours_without_overwrite":
        assert "pass --overwrite" in line
    else:
        assert "was not written by apps.pretrain" in line and "not even with" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("where", ["weights", "record_name", "via_symlink", "ours"])
def test_shipped_weights_are_never_an_output(trained, tmp_path, where):
    # (apps.pretrain is not imported here: its flags would clash with apps.train's)
    from bir_keras.experiment import DEFAULT_CONV_WEIGHTS
    from bir_keras.weightsfile import TRUNKS
    from tests.apps.test_refusals import no_tensorflow_env

    # the default (the authors' trunk) and --conv_weights=ours
    SHIPPED_DIR = (TRUNKS["ours"] if where == "ours" else DEFAULT_CONV_WEIGHTS).parent
    root = trained[0]
    if where == "via_symlink":
        (tmp_path / "link").symlink_to(SHIPPED_DIR)
        out = tmp_path / "link" / "conv_trunk.weights.h5"
    else:
        out = SHIPPED_DIR / ("conv_trunk.weights.h5" if where in ("weights", "ours")
                             else "x.weights.h5")
    shipped = {p: p.read_bytes() for p in SHIPPED_DIR.iterdir()} if SHIPPED_DIR.exists() else {}
    line = one_error_line(pretrain(f"--data_dir={root / 'data'}", f"--out={out}", "--overwrite",
                                   *FAST, env=no_tensorflow_env(tmp_path)))
    assert "shipped pre-trained conv weights" in line and str(SHIPPED_DIR) in line
    assert "saved_models/pretrained_conv/conv_trunk.weights.h5" in line  # the default
    if SHIPPED_DIR.exists():
        assert {p: p.read_bytes() for p in SHIPPED_DIR.iterdir()} == shipped


def test_default_out_is_not_the_shipped_weights():
    r = pretrain("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "default saved_models/pretrained_conv/conv_trunk.weights.h5" in text
    assert "--out: where the conv trunk's weights go" in text
    assert "(default: 'saved_models/pretrained_conv/conv_trunk.weights.h5')" in text


def test_shipped_weights_load_by_default():
    """CIFAR runs load the authors' trunk (saved_models/authors_c3_5x16_bn) by default; the
    one pre-trained here by apps.pretrain (saved_models/cifar10_conv) is --conv_weights=ours."""
    from bir_keras.experiment import DEFAULT_CONV_WEIGHTS, load_trunk
    from bir_keras.weightsfile import TRUNKS

    if not DEFAULT_CONV_WEIGHTS.exists():
        pytest.skip("no pre-trained conv weights shipped in this checkout")
    assert DEFAULT_CONV_WEIGHTS == TRUNKS["authors"]
    rec = json.loads(TRUNKS["ours"].with_name("conv_trunk.json").read_text())
    assert rec["epochs"] >= 1 and rec["train_images"] == 50000 and rec["test_accuracy"] > 0.5
    trunk = load_trunk(None)
    assert not np.allclose(trunk.get_weights()[0], load_trunk("random").get_weights()[0])
    assert not np.allclose(trunk.get_weights()[0], load_trunk("ours").get_weights()[0])
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype("float32")
    f = trunk(x, training=False).numpy()
    # (the last conv layer is linear: features may be negative)
    assert f.shape == (4, 1024) and np.all(np.isfinite(f))


def test_ctrl_c_keeps_the_last_whole_epoch(trained, tmp_path):
    # Ctrl-C part-way through a long run: exit 130, and the weights and their record hold
    # the last finished epoch (the interrupt waits for the running step, then saves nothing
    # half-written). The run starts over an earlier output of apps.pretrain: --overwrite
    # replaces it
    root, earlier, _ = trained
    out = tmp_path / "conv_trunk.weights.h5"
    out.write_bytes(earlier.read_bytes())
    (tmp_path / "conv_trunk.json").write_text((earlier.parent / "conv_trunk.json").read_text())
    with processes.running(["-m", "apps.pretrain", f"--data_dir={root / 'data'}",
                            f"--out={out}", "--overwrite", *FAST, "--epochs=100000"],
                           env={**ENV, "PYTHONFAULTHANDLER": "1"}) as proc:
        processes.wait_for_line(proc, "epoch 2/")  # two finished epochs
        _, stderr = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("interrupted")]
    rec = json.loads((tmp_path / "conv_trunk.json").read_text())
    assert rec["epochs"] >= 2 and f"hold epoch {rec['epochs']}" in line
    assert not rec["finished"] and out.exists() and rec["epochs_planned"] == 100000
    from bir_keras.appfiles import sha256

    assert rec["weights_sha256"] == sha256(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv_trunk.json",
                                                         "conv_trunk.weights.h5"]


def test_numeric_flags_are_checked_before_tensorflow_loads(tmp_path):
    """A flag out of its range is refused in the flag checks, before the data or TensorFlow
    load: with no data at all and a missing --data_dir it is still the flag that is named."""
    r = pretrain(f"--data_dir={tmp_path / 'none'}", f"--out={tmp_path / 'w.weights.h5'}",
                 "--lr=1e-45")
    assert "--lr" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []
    # and TensorFlow was never imported (python -X importtime lists every import)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "apps.pretrain",
                        "--batch=0"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "error: --batch" in r.stderr
    assert not [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith("| tensorflow")]


# 1e30 (a loss infinite at once) with --run-slow: each case is a short pre-training
@pytest.mark.parametrize("lr", ["1e10", pytest.param("1e30", marks=pytest.mark.slow)])
def test_diverged_loss_is_one_error_line_and_writes_nothing(trained, tmp_path, lr):
    """A learning rate that makes the loss non-finite (issue 46): exit 1, one error line
    naming --lr, no weights or record written."""
    root, _, _ = trained
    out = tmp_path / "w.weights.h5"
    r = pretrain(f"--data_dir={root / 'data'}", f"--out={out}", f"--lr={lr}",
                 "--epochs=3", "--limit=16", "--batch=8", "--head_units=16")
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: pre-training diverged") and "lower --lr" in line
    assert "train loss nan" not in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_pretrained_weights_pass_the_weights_file_check(trained):
    from bir_keras.weightsfile import check_weights_file

    check_weights_file(trained[1])


def test_the_library_pretrains_from_python(tmp_path):
    # bir_keras.pretrain without the app: settings refused with ConfigError, the shipped
    # folders with PathRefused, and a tiny run writes the weights and their record
    from bir_keras.config import ConfigError
    from bir_keras.data.sources import Dataset
    from bir_keras.pretrain import PretrainConfig, check_out, pretrain, record_of
    from bir_keras.rundirs import PathRefused
    from bir_keras.weightsfile import TRUNKS

    for bad in (dict(epochs=0), dict(lr=float("nan")), dict(seed=-1), dict(head_layers=101)):
        with pytest.raises(ConfigError):
            PretrainConfig(**bad).check()
    with pytest.raises(PathRefused, match="shipped"):
        check_out(TRUNKS["ours"], overwrite=True)
    with pytest.raises(ConfigError, match=".weights.h5"):
        check_out(tmp_path / "trunk.h5", overwrite=False)
    rng = np.random.RandomState(0)
    data = Dataset("cifar10", rng.randint(0, 256, (8, 32, 32, 3)).astype(np.uint8),
                   np.arange(8) % 10, rng.randint(0, 256, (4, 32, 32, 3)).astype(np.uint8),
                   np.arange(4), [f"c{i}" for i in range(10)])
    out = tmp_path / "t.weights.h5"
    seen = []
    history = pretrain(data, out, PretrainConfig(epochs=2, batch=4, head_units=8, head_layers=1),
                       on_epoch=seen.append)
    assert [e["epoch"] for e in history] == [1, 2] and seen == history
    rec = record_of(out)
    assert rec["epochs"] == 2 and rec["finished"] and rec["head"] == [8, 10]
    # written by this module: replaced only with overwrite
    with pytest.raises(PathRefused, match="pass --overwrite"):
        check_out(out, overwrite=False)
    check_out(out, overwrite=True)
