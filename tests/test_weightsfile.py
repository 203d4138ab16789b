"""bir_keras.weightsfile.check_weights_file: a file that is not the conv trunk's Keras
weights is refused with one line before TensorFlow loads (issue 46, item 5), instead of
Keras' ``ValueError: File format not supported`` traceback."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from bir_keras.data.sources import DataError
from bir_keras.weightsfile import check_weights_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_models" / "cifar10_conv" / "conv_trunk.weights.h5"


def test_the_shipped_weights_pass():
    check_weights_file(SHIPPED)


def test_a_fresh_trunk_passes_and_loads():
    """The layout checked is the one Keras writes for conv_trunk() (in a child process:
    TensorFlow), so the check follows the trunk."""
    code = ("import sys, tempfile, os\n"
            "from bir_keras.models.layers import conv_trunk\n"
            "from bir_keras.weightsfile import check_weights_file\n"
            "d = tempfile.mkdtemp(); p = os.path.join(d, 't.weights.h5')\n"
            "conv_trunk().save_weights(p); check_weights_file(p); print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def _refused(path, match, flag="--conv_weights"):
    with pytest.raises(DataError, match=match) as e:
        check_weights_file(path, flag)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{flag}=")
    return msg


def test_refusals(tmp_path, mnist_idx_dir):
    _refused(tmp_path / "none.weights.h5", "does not exist")
    _refused(tmp_path, "is a directory")
    idx = next(Path(mnist_idx_dir).glob("*.gz"))  # an IDX .gz, as in the issue
    assert "gzip" in _refused(idx, "not an HDF5 file")
    text = tmp_path / "w.weights.h5"
    text.write_text("weights")
    _refused(text, "not an HDF5 file", flag="--init")
    empty = tmp_path / "empty.weights.h5"
    empty.write_bytes(b"")
    _refused(empty, "not an HDF5 file")
    truncated = tmp_path / "t.weights.h5"
    truncated.write_bytes(SHIPPED.read_bytes()[:4096])
    _refused(truncated, "damaged HDF5")
    link = tmp_path / "dangling.weights.h5"
    link.symlink_to(tmp_path / "gone")
    _refused(link, "cannot be read")


def test_other_hdf5_files_are_refused(tmp_path):
    import h5py
    import numpy as np

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(3)
    _refused(other, "not the conv trunk's weights")
    # a Keras-like file with a layer of another shape
    wrong = tmp_path / "wrong.weights.h5"
    with h5py.File(SHIPPED, "r") as src, h5py.File(wrong, "w") as dst:
        src.copy("layers", dst)
        del dst["layers/conv2d_4/vars/0"]
        dst["layers/conv2d_4/vars/0"] = np.zeros((3, 3, 128, 64), "float32")
    assert "conv2d_4" in _refused(wrong, "not the conv trunk's weights")


def test_gzip_of_the_weights_is_refused(tmp_path):
    packed = tmp_path / "w.weights.h5.gz"
    with gzip.open(packed, "wb") as f:
        f.write(SHIPPED.read_bytes())
    assert "gzip" in _refused(packed, "not an HDF5 file")


def test_cut_off_or_non_finite_weights_are_refused(tmp_path):
    import h5py
    import numpy as np

    data = SHIPPED.read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[:len(data) * 3 // 4])
    _refused(cut, "damaged HDF5")
    nan = tmp_path / "nan.weights.h5"
    nan.write_bytes(data)
    with h5py.File(nan, "r+") as f:
        f["layers/conv2d/vars/0"][0, 0, 0, 0] = np.nan
    _refused(nan, "not finite.*lower --lr")
