"""Tests for bir_keras.data.sources: every format round-trips, and errors say what to do."""

import gzip
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bir_keras.data import sources
from bir_keras.data.sources import (
    EXPECTED_CLASSES,
    EXPECTED_SHAPES,
    DataError,
    Dataset,
    load_dataset,
)

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _expected(tiny_image, n: int, shape, offset: int = 0, order=None) -> np.ndarray:
    """The images the fixtures wrote, in ``order`` (default: index order)."""
    order = range(n) if order is None else order
    return np.stack([tiny_image(offset + i, shape) for i in order])


def _check_types(ds: Dataset, name: str) -> None:
    """Dtypes, shapes and label ranges every loaded dataset must have."""
    assert ds.name == name
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.shape[1:] == EXPECTED_SHAPES[name] == ds.x_test.shape[1:]
    assert ds.y_train.shape == (len(ds.x_train),) and ds.y_test.shape == (len(ds.x_test),)
    assert ds.num_classes == EXPECTED_CLASSES[name] == len(ds.class_names)
    for y in (ds.y_train, ds.y_test):
        assert 0 <= y.min() and y.max() < ds.num_classes


# ----------------------------------------------------------------------------- formats


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError, match="valid names are: cifar10, cifar100, digits"):
        load_dataset("imagenet")


def test_mnist_idx_gz_round_trip(mnist_idx_dir, tiny_image):
    ds = load_dataset("mnist", str(mnist_idx_dir))
    _check_types(ds, "mnist")
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train, _expected(tiny_image, 30, (28, 28, 1)))
    np.testing.assert_array_equal(ds.x_test, _expected(tiny_image, 20, (28, 28, 1), 1000))
    np.testing.assert_array_equal(ds.y_train, np.arange(30) % 10)
    np.testing.assert_array_equal(ds.y_test, np.arange(20) % 10)
    # Train image 2, row 4, col 5: (7*2 + 3*4 + 5*5) % 256 = 51; test image 1 at (0, 0): 7007 % 256.
    assert ds.x_train[2, 4, 5, 0] == 51 and ds.x_test[1, 0, 0, 0] == 7007 % 256
    assert ds.class_names == [str(i) for i in range(10)]


def test_idx_uncompressed_and_fashion_names(mnist_idx_dir, tmp_path, tiny_image):
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in mnist_idx_dir.glob("*.gz"):
        (plain / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    ds = load_dataset("fashion_mnist", plain)
    _check_types(ds, "fashion_mnist")
    np.testing.assert_array_equal(ds.x_train, _expected(tiny_image, 30, (28, 28, 1)))
    np.testing.assert_array_equal(ds.y_test, np.arange(20) % 10)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_cifar10_pickles_round_trip(cifar10_pickle_dir, tiny_image):
    ds = load_dataset("cifar10", str(cifar10_pickle_dir))
    _check_types(ds, "cifar10")
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3)
    # The pickles hold channel-major rows; the loader must give back HWC images.
    np.testing.assert_array_equal(ds.x_train, _expected(tiny_image, 20, (32, 32, 3)))
    np.testing.assert_array_equal(ds.x_test, _expected(tiny_image, 10, (32, 32, 3), 1000))
    assert tuple(ds.x_train[5, 1, 2]) == (48, 59, 70)  # 7*5 + 3*1 + 5*2 + 11*c
    np.testing.assert_array_equal(ds.y_train, np.arange(20) % 10)
    assert ds.class_names == CIFAR10_NAMES
    # data_dir may also be the cifar-10-batches-py folder itself.
    same = load_dataset("cifar10", str(cifar10_pickle_dir / "cifar-10-batches-py"))
    np.testing.assert_array_equal(same.x_test, ds.x_test)


def test_cifar100_pickles_fine_labels_and_names(cifar100_pickle_dir, tiny_image):
    ds = load_dataset("cifar100", str(cifar100_pickle_dir))
    _check_types(ds, "cifar100")
    assert ds.x_train.shape == (200, 32, 32, 3) and ds.x_test.shape == (100, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train, _expected(tiny_image, 200, (32, 32, 3)))
    np.testing.assert_array_equal(ds.x_test, _expected(tiny_image, 100, (32, 32, 3), 1000))
    np.testing.assert_array_equal(ds.y_train, np.arange(200) % 100)  # fine, not coarse
    np.testing.assert_array_equal(ds.y_test, np.arange(100))
    assert ds.class_names == [f"fine_{k:02d}" for k in range(100)]
    same = load_dataset("cifar100", cifar100_pickle_dir / "cifar-100-python")
    np.testing.assert_array_equal(same.y_train, ds.y_train)


def _folder_order(n: int) -> list[int]:
    """Image indices in the order an image folder is read: by class, then by file name."""
    return sorted(range(n), key=lambda i: (i % 10, i))


def _check_image_folder(ds: Dataset, tiny_image) -> None:
    """Compare a loaded image_folder_dir (3 train + 2 test per class) with what was written."""
    _check_types(ds, "cifar10")
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    order_train, order_test = _folder_order(30), _folder_order(20)
    np.testing.assert_array_equal(
        ds.x_train, _expected(tiny_image, 30, (32, 32, 3), 0, order_train)
    )
    np.testing.assert_array_equal(
        ds.x_test, _expected(tiny_image, 20, (32, 32, 3), 1000, order_test)
    )
    np.testing.assert_array_equal(ds.y_train, np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(ds.y_test, np.repeat(np.arange(10), 2))
    assert ds.class_names == CIFAR10_NAMES


def test_image_folder_round_trip(image_folder_dir, tiny_image):
    ds = load_dataset("cifar10", str(image_folder_dir))
    _check_image_folder(ds, tiny_image)
    # First train image of class "automobile" is file 0001.png: (7 + 3*2 + 5*3) % 256 = 28.
    assert ds.x_train[3, 2, 3, 0] == 28


def test_image_folder_grayscale(make_image_folder, tmp_path, tiny_image):
    root = make_image_folder(tmp_path / "gray", (28, 28, 1), (2, 1))
    ds = load_dataset("mnist", root)
    _check_types(ds, "mnist")
    np.testing.assert_array_equal(
        ds.x_train, _expected(tiny_image, 20, (28, 28, 1), 0, _folder_order(20))
    )


def _zip_folder(folder: Path, zip_path: Path, top: str) -> Path:
    """Zip ``folder`` so that its contents sit under ``top`` ('' for the archive root)."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, os.path.join(top, str(path.relative_to(folder))))
    return zip_path


@pytest.mark.parametrize("top", ["tiny-cifar", ""])
def test_image_folder_in_zip_and_cache(image_folder_dir, tmp_path, tiny_image, top):
    zip_path = _zip_folder(image_folder_dir, tmp_path / "tiny.zip", top)
    _check_image_folder(load_dataset("cifar10", str(zip_path)), tiny_image)

    cache_files = list(Path(sources.cache_dir()).glob("cifar10-*.npz"))
    assert len(cache_files) == 1  # decoded once, cached outside the data folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "tiny.zip"]
    _check_image_folder(load_dataset("cifar10", str(zip_path)), tiny_image)  # from the cache

    cache_files[0].write_bytes(b"not an npz file")  # a corrupt cache is ignored and rebuilt
    _check_image_folder(load_dataset("cifar10", str(zip_path)), tiny_image)
    assert np.load(cache_files[0])["x_train"].shape == (30, 32, 32, 3)


def test_image_folder_jpeg(image_folder_dir, tiny_image):
    from PIL import Image

    for png in image_folder_dir.rglob("*.png"):
        with Image.open(png) as img:
            img.save(png.with_suffix(".jpg"), quality=100)
        png.unlink()
    ds = load_dataset("cifar10", image_folder_dir)
    expected = _expected(tiny_image, 30, (32, 32, 3), 0, _folder_order(30))
    _check_types(ds, "cifar10")
    # JPEG is lossy (and rings where the pattern wraps from 255 to 0): most pixels stay close.
    assert np.median(np.abs(ds.x_train.astype(int) - expected)) <= 2


# ----------------------------------------------------------------------------- digits


def test_digits_offline_deterministic_split():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", data_dir="/ignored/for/digits")
    _check_types(ds, "digits")
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    raw = load_digits()
    for c in range(10):
        idx = np.flatnonzero(raw.target == c)
        n_test = int(round(0.2 * len(idx)))
        assert (ds.y_test == c).sum() == n_test
        # The test images of class c are its last n_test images, in their original order.
        expected = np.round(raw.images[idx[-n_test:]] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(ds.x_test[ds.y_test == c][..., 0], expected)
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize(("name", "n"), [("mnist", 12), ("cifar100", 8)])
def test_tfds_mock(name, n, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core import splits

    # Without metadata files the mocked builder knows no split sizes, so batch_size=-1 would
    # make TFDS call padded_batch(sys.maxsize), which aborts the process in TF 2.21. A real
    # prepared dataset always knows its sizes; give the mock the size it will generate.
    monkeypatch.setattr(splits.SplitDict, "total_num_examples", property(lambda self: n))
    with tfds.testing.mock_data(num_examples=n):
        ds = load_dataset(name)
    _check_types(ds, name)
    assert len(ds.x_train) == n and len(ds.x_test) == n
    assert ds.x_train.max() > 0  # random pixels, not an all-zero placeholder
    if name == "mnist":
        assert ds.class_names == [str(i) for i in range(10)]


def test_tfds_failure_names_both_fixes(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve storage.googleapis.com")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "--data_dir=DIR" in message and "TFDS_DATA_DIR" in message
    assert "cifar-10-batches-py" in message and "ConnectionError" in message


def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match="--data_dir=DIR.*TFDS_DATA_DIR"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------- errors


def test_missing_idx_file_is_named(mnist_idx_dir):
    (mnist_idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz") as info:
        load_dataset("mnist", mnist_idx_dir)
    assert "train-images" not in str(info.value).split(";")[0]


def test_no_data_names_files_and_formats(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "image folder" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_missing_cifar_pickle_is_named(cifar100_pickle_dir):
    (cifar100_pickle_dir / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match="lacks meta"):
        load_dataset("cifar100", cifar100_pickle_dir)


def test_truncated_gz_names_the_file(mnist_idx_dir):
    path = mnist_idx_dir / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("mnist", mnist_idx_dir)


def test_truncated_idx_payload_and_bad_magic(mnist_idx_dir, tmp_path):
    path = mnist_idx_dir / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # valid gzip, but fewer bytes than the header says
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: header says"):
        load_dataset("mnist", mnist_idx_dir)
    shutil.copy(mnist_idx_dir / "t10k-labels-idx1-ubyte.gz", path)  # labels where images belong
    with pytest.raises(DataError, match="magic number"):
        load_dataset("mnist", mnist_idx_dir)


def test_idx_count_mismatch(mnist_idx_dir):
    shutil.copy(
        mnist_idx_dir / "t10k-labels-idx1-ubyte.gz", mnist_idx_dir / "train-labels-idx1-ubyte.gz"
    )
    with pytest.raises(DataError, match="30 images but .* 20 labels"):
        load_dataset("mnist", mnist_idx_dir)


def test_image_shape_mismatch(make_image_folder, tmp_path):
    root = make_image_folder(tmp_path / "small", (28, 28, 1), (1, 1))
    with pytest.raises(DataError, match=r"\(28, 28, 1\) but cifar10 expects \(32, 32, 3\)"):
        load_dataset("cifar10", root)


def test_class_count_and_class_mismatch(image_folder_dir):
    with pytest.raises(DataError, match="found 10 classes but cifar100 has 100"):
        load_dataset("cifar100", image_folder_dir)
    shutil.rmtree(image_folder_dir / "test" / "truck")
    with pytest.raises(DataError, match=r"only in train: \['truck'\]"):
        load_dataset("cifar10", image_folder_dir)


def test_corrupt_image_is_named(image_folder_dir):
    (image_folder_dir / "train" / "cat" / "0003.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="0003.png"):
        load_dataset("cifar10", image_folder_dir)


def _write_mnist_like(folder: Path, mean: float, n: int = 1200) -> Path:
    """IDX files of ``n`` 28x28 images whose mean pixel is about ``mean`` (a blob of 255s
    covering that share of the frame)."""
    folder.mkdir(parents=True)
    side = int(round(28 * np.sqrt(mean / 255.0)))
    img = np.zeros((28, 28), np.uint8)
    top = (28 - side) // 2
    img[top:top + side, top:top + side] = 255
    for prefix, count in (("train", n), ("t10k", 200)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        for base, arr, magic in ((f"{prefix}-images-idx3-ubyte.gz", np.repeat(img[None], count, 0),
                                  0x803),
                                 (f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)):
            header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            with gzip.open(folder / base, "wb") as f:
                f.write(header + arr.tobytes())
    return folder


def test_fashion_files_given_as_mnist_and_the_reverse_are_refused(tmp_path):
    fashion = _write_mnist_like(tmp_path / "fashion", mean=73.0)
    digits = _write_mnist_like(tmp_path / "digits", mean=33.0)
    with pytest.raises(DataError, match=r"look like Fashion-MNIST, not MNIST.*fashion_mnist"):
        load_dataset("mnist", fashion)
    with pytest.raises(DataError, match=r"look like MNIST, not Fashion-MNIST.*split_mnist"):
        load_dataset("fashion_mnist", digits)
    assert load_dataset("fashion_mnist", fashion).name == "fashion_mnist"
    assert load_dataset("mnist", digits).name == "mnist"

