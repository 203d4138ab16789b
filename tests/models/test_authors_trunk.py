"""The authors' pre-trained conv trunk, converted (saved_models/authors_c3_5x16_bn): our
trunk with its weights gives the features their PyTorch trunk gave on the recorded images
(tools/authors_trunk_export.py recorded them; no PyTorch here), and --conv_weights takes
the names of the shipped trunks."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bir_keras.weightsfile import (
    DEFAULT_TRUNK,
    LEGACY_DEFAULT_TRUNK,
    TRUNKS,
    check_weights_file,
    resolve_conv_weights,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "saved_models" / "authors_c3_5x16_bn"


@pytest.fixture(scope="module")
def check():
    with np.load(SHIPPED / "check.npz") as f:
        return {k: f[k] for k in f.files}


def _features(trunk, check):
    from bir_keras.data.protocols import normalise_pixels

    x = normalise_pixels(check["pixels"].astype(np.float32), tuple(check["mean"]),
                         tuple(check["std"]))
    return trunk(x, training=False).numpy()


def test_the_shipped_file_is_the_one_converted():
    check_weights_file(SHIPPED / "conv_trunk.weights.h5")
    rec = json.loads((SHIPPED / "conversion.json").read_text())
    digest = hashlib.sha256((SHIPPED / "conv_trunk.weights.h5").read_bytes()).hexdigest()
    assert rec["weights_sha256"] == digest
    assert rec["source"]["path"] == "store/models/C3-5x16-bn"
    assert rec["source"]["sha256"] == ("02e44cf21681d2d1ece1b683bae9a1525cf794f73865a69e"
                                       "32af330bcb4741e9")


def test_our_trunk_gives_their_features(check):
    from bir_keras.experiment import load_trunk

    theirs = check["features"]
    assert check["pixels"].shape == (8, 32, 32, 3) and theirs.shape == (8, 1024)
    ours = _features(load_trunk("authors"), check)
    scale = np.abs(theirs).max()
    assert scale > 1.0  # features that say something (not all zero)
    # float32 in two frameworks: ~1e-6 relative (measured 4e-7); a wrong kernel layout,
    # padding or batch-norm mapping gives differences of the features' own size
    assert np.abs(ours - theirs).max() <= float(check["tolerance"]) * scale


def test_keras_same_padding_would_not_match(check):
    """Their nn.Conv2d(padding=1) at stride 2 is not Keras' "same" (which pads only the
    bottom/right): conv_trunk's default padding is theirs."""
    from bir_keras.models.layers import conv_trunk

    trunk = conv_trunk(padding="same")
    trunk.load_weights(str(SHIPPED / "conv_trunk.weights.h5"))
    diff = np.abs(_features(trunk, check) - check["features"]).max()
    assert diff > 0.1 * np.abs(check["features"]).max()


def test_the_names_resolve():
    from bir_keras.experiment import DEFAULT_CONV_WEIGHTS

    assert DEFAULT_TRUNK == "authors" and LEGACY_DEFAULT_TRUNK == "ours"
    assert TRUNKS["authors"] == SHIPPED / "conv_trunk.weights.h5" == DEFAULT_CONV_WEIGHTS
    assert TRUNKS["ours"] == ROOT / "saved_models" / "cifar10_conv" / "conv_trunk.weights.h5"
    assert resolve_conv_weights(None) == resolve_conv_weights("") == TRUNKS["authors"]
    assert resolve_conv_weights("ours") == TRUNKS["ours"]
    assert resolve_conv_weights("random") == "random"
    assert resolve_conv_weights("./ours") == Path("./ours")  # a file of that name
    for name in TRUNKS:
        check_weights_file(name)  # the check (before TensorFlow loads) takes names too


def test_a_missing_named_file_is_one_line(monkeypatch, tmp_path):
    from bir_keras import weightsfile
    from bir_keras.data.sources import DataError

    monkeypatch.setitem(weightsfile.TRUNKS, "ours", tmp_path / "gone.weights.h5")
    with pytest.raises(DataError, match=r"^--conv_weights=ours \(.*gone\.weights\.h5\) does "
                                        "not exist"):
        check_weights_file("ours")


def test_load_trunk_by_name():
    from bir_keras.experiment import load_trunk
    from bir_keras.models.layers import conv_trunk

    ours = conv_trunk()
    ours.load_weights(str(TRUNKS["ours"]))
    by_name = load_trunk("ours").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(by_name, ours.get_weights()))
    default = load_trunk(None).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(default, load_trunk("authors").get_weights()))
    assert not np.array_equal(default[0], by_name[0])


def test_a_cifar_run_records_its_trunk_and_older_records_mean_ours():
    from bir_keras.config import Config, resolve
    from bir_keras.rundirs import PathRefused, check_resume_flags

    assert resolve(Config(experiment="split_cifar10", scenario="class")).conv_weights == "authors"
    assert resolve(Config(experiment="split_cifar10", scenario="class",
                          conv_weights="ours")).conv_weights == "ours"
    assert resolve(Config(experiment="split_mnist", scenario="class")).conv_weights is None
    # a run recorded before the default changed (no name) loaded "ours"
    old = {"experiment": "split_cifar10", "conv_weights": None}
    check_resume_flags("old", old, {**old, "conv_weights": "ours"})
    with pytest.raises(PathRefused, match="--conv_weights=ours, this run has "
                                          "--conv_weights=authors"):
        check_resume_flags("old", old, {**old, "conv_weights": "authors"})
