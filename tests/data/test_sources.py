"""Tests for bir_keras.data.sources: every format round-trips, and errors say what to do."""

import gzip
import os
import shutil
import sys
import time
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


_REAL_PROBE = sources._probe_network  # tested on loopback only; replaced everywhere else


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test here touches the network: the TFDS reachability probe reports offline."""
    monkeypatch.setattr(
        sources, "_probe_network", lambda *a, **k: "offline (tests never touch the network)"
    )


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
    monkeypatch.setattr(sources, "_probe_network", lambda *a, **k: None)  # mocked download
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
    monkeypatch.setattr(sources, "_probe_network", lambda *a, **k: None)  # the host answered
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
    img[top : top + side, top : top + side] = 255
    for prefix, count in (("train", n), ("t10k", 200)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        for base, arr, magic in (
            (f"{prefix}-images-idx3-ubyte.gz", np.repeat(img[None], count, 0), 0x803),
            (f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801),
        ):
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


# ----------------------------------------------------------------------------- unreadable data

_DENIED = "Permission denied"
_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _deny(monkeypatch, module, attr: str, path) -> None:
    """Make ``module.attr(path, ...)`` raise PermissionError for ``path``, as the OS would."""
    real = getattr(module, attr)
    denied = os.path.normpath(os.fspath(path))

    def fake(target, *args, **kwargs):
        if isinstance(target, (str, os.PathLike)) and os.path.normpath(target) == denied:
            raise PermissionError(13, _DENIED, os.fspath(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(module, attr, fake)


def _assert_unreadable(err: DataError, path) -> None:
    """One line, naming ``path`` and the OS reason, and not blaming the file's contents."""
    message = str(err)
    assert "\n" not in message
    assert os.fspath(path) in message and f"cannot read it ({_DENIED})" in message
    assert "corrupt" not in message and "truncated" not in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_unreadable_data_dir_is_a_data_error(name, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "something").write_bytes(b"x")
    _deny(monkeypatch, os, "listdir", data_dir)
    _deny(monkeypatch, os, "scandir", data_dir)
    with pytest.raises(DataError) as info:
        load_dataset(name, data_dir)
    _assert_unreadable(info.value, data_dir)
    assert str(info.value).startswith(f"data_dir {data_dir}: cannot read it")


def test_unsearchable_data_dir_is_a_data_error(tmp_path, monkeypatch):
    # A folder with read but no search (x) permission lists, but nothing in it can be opened.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    _deny(monkeypatch, os, "stat", data_dir / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir)
    _assert_unreadable(info.value, data_dir)


def _single_subfolder(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a folder holding only the data's folder, the data's folder)."""
    outer = tmp_path / "outer"
    outer.mkdir()
    return outer, folder.rename(outer / "tiny-cifar")


def _zipped(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    zip_path = _zip_folder(folder, tmp_path / "tiny.zip", "")
    return zip_path, zip_path


# a path the OS refuses to read: (the data's fixture, the dataset, (the fixture's folder,
# tmp_path) -> (what is loaded, the path refused), the call refused there, words the
# message must not say: the path is named, not called missing or corrupt)
UNREADABLE = {
    "parent_of_data_dir": (None, "mnist", lambda d, t: (t / "data", t / "data"), "os.stat",
                           ["does not exist"]),
    "class_folder": ("image_folder_dir", "cifar10", lambda d, t: (d, d / "train" / "cat"),
                     "os.scandir", []),
    "single_subfolder": ("image_folder_dir", "cifar10", _single_subfolder, "os.listdir", []),
    "pickle_folder": ("cifar10_pickle_dir", "cifar10",
                      lambda d, t: (d, d / "cifar-10-batches-py"), "os.listdir", ["lacks"]),
    "idx_gz": ("mnist_idx_dir", "mnist", lambda d, t: (d, d / "train-labels-idx1-ubyte.gz"),
               "open", []),
    "cifar_pickle": ("cifar10_pickle_dir", "cifar10",
                     lambda d, t: (d, d / "cifar-10-batches-py" / "data_batch_3"), "open", []),
    "image": ("image_folder_dir", "cifar10", lambda d, t: (d, d / "test" / "dog" / "0005.png"),
              "open", []),
    "zip": ("image_folder_dir", "cifar10", _zipped, "open", ["not a .zip"]),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_path_is_named_not_called_missing_or_corrupt(case, request, tmp_path,
                                                                monkeypatch):
    import builtins

    fixture, dataset, paths, call, not_said = UNREADABLE[case]
    load_from, path = paths(request.getfixturevalue(fixture) if fixture else None, tmp_path)
    module, attr = call.split(".") if "." in call else ("builtins", call)
    _deny(monkeypatch, {"os": os, "builtins": builtins}[module], attr, path)
    with pytest.raises(DataError) as info:
        load_dataset(dataset, load_from)
    _assert_unreadable(info.value, path)
    for words in not_said:
        assert words not in str(info.value)


@pytest.mark.skipif(_AS_ROOT, reason="root reads files and folders whatever their mode")
@pytest.mark.parametrize("case", ["mnist_idx_dir", "image", "zip"])
def test_unreadable_path_by_chmod(case, request, tmp_path):
    if case == "mnist_idx_dir":
        dataset, (load_from, path) = "mnist", (request.getfixturevalue(case),) * 2
    else:
        fixture, dataset, paths = UNREADABLE[case][:3]
        load_from, path = paths(request.getfixturevalue(fixture), tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(DataError) as info:
            load_dataset(dataset, load_from)
    finally:
        path.chmod(0o755)
    _assert_unreadable(info.value, path)


def test_corrupt_pickle_is_called_corrupt(cifar10_pickle_dir):
    path = cifar10_pickle_dir / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"test_batch: cannot unpickle .*truncated or corrupt"):
        load_dataset("cifar10", cifar10_pickle_dir)


def test_corrupt_image_says_decode_not_read(image_folder_dir):
    (image_folder_dir / "train" / "cat" / "0003.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot decode image train/cat/0003.png .*corrupt"):
        load_dataset("cifar10", image_folder_dir)


# ----------------------------------------------------------------------------- zip files


def test_truncated_zip_says_truncated(image_folder_dir, tmp_path):
    zip_path = _zip_folder(image_folder_dir, tmp_path / "tiny.zip", "tiny-cifar")
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) // 2])  # the central directory at the end is gone
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", zip_path)
    message = str(info.value)
    assert f"{zip_path} is a truncated or corrupt .zip" in message
    assert "download or copy it again" in message and "not a .zip" not in message


def test_zip_with_damaged_member_says_corrupt(image_folder_dir, tmp_path):
    zip_path = _zip_folder(image_folder_dir, tmp_path / "tiny.zip", "")
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("train/cat/0003.png")
    # Flip bytes inside the member's data (after its 30-byte local header and name): CRC fails.
    start = info.header_offset + 30 + len(info.filename) + 8
    data[start : start + 4] = bytes(b ^ 0xFF for b in data[start : start + 4])
    zip_path.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"cannot extract train/cat/0003.png .*truncated or corrupt"
    ):
        load_dataset("cifar10", zip_path)


def test_other_file_is_not_a_zip(tmp_path):
    path = tmp_path / "images.tar.gz"
    path.write_bytes(gzip.compress(b"not a zip at all"))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", path)
    message = str(info.value)
    assert f"{path} is a file but not a .zip archive" in message
    assert "truncated" not in message and "cannot read" not in message


# ----------------------------------------------------------------------------- TFDS offline


def test_tfds_offline_without_local_copy_refuses_at_once(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    tfds_dir = tmp_path / "tfds"  # does not exist: TFDS must not create it
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    probed = []

    def offline(hosts, *args, **kwargs):
        probed.append(list(hosts))
        return "storage.googleapis.com:443: Name or service not known"

    def no_download(*args, **kwargs):
        raise AssertionError("tfds.load must not be called when offline")

    monkeypatch.setattr(sources, "_probe_network", offline)
    monkeypatch.setattr(tfds, "load", no_download)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("no --data_dir given, TFDS has no local copy of mnist")
    assert str(tfds_dir) in message and "the internet is unreachable" in message
    assert "Name or service not known" in message and "--data_dir=DIR" in message
    assert "train-images-idx3-ubyte.gz" in message and "image folder" in message
    assert probed == [[("storage.googleapis.com", 443)]]  # where TFDS downloads MNIST from
    assert not tfds_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_tfds_prepared_copy_skips_the_network_probe(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)

    def no_probe(*args, **kwargs):
        raise AssertionError("a prepared dataset needs no network")

    def load(name, **kwargs):
        assert kwargs["data_dir"] == str(tmp_path)
        raise RuntimeError("reached tfds.load")

    monkeypatch.setattr(sources, "_probe_network", no_probe)
    monkeypatch.setattr(tfds, "load", load)
    with pytest.raises(DataError, match="RuntimeError: reached tfds.load"):
        load_dataset("cifar10")


def test_download_hosts_and_probe_on_loopback(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert sources._download_hosts(
        ["https://a.example/x.gz", "https://a.example/y.gz", "http://b.example:8080/z"]
    ) == [("a.example", 443), ("b.example", 8080)]
    assert sources._download_hosts([]) == [("storage.googleapis.com", 443)]
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert sources._download_hosts(["https://a.example/x"]) == [("proxy.example", 3128)]

    import socket

    with socket.socket() as server:  # loopback only: tests never touch the network
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert _REAL_PROBE([("127.0.0.1", port)], timeout=2) is None
    reason = _REAL_PROBE([("127.0.0.1", port)], timeout=2)  # now closed
    assert reason is not None and reason.startswith(f"127.0.0.1:{port}: ")


# --------------------------------------------------------- 16-bit and converted images


def _resave(folder: Path, convert) -> None:
    """Rewrite every PNG of an image folder as ``convert(8-bit pixels)`` -> PIL image."""
    from PIL import Image

    for png in sorted(folder.rglob("*.png")):
        with Image.open(png) as img:
            pixels = np.asarray(img)
        convert(pixels).save(png)


def test_16_bit_grey_pngs_are_scaled_not_clipped(make_image_folder, tmp_path, tiny_image):
    """16-bit grey PNGs (PIL mode I;16) decode to the same 8-bit images, in a folder and a
    zip (issue 46: convert() clipped them to white), with one note counting them."""
    from PIL import Image

    root = make_image_folder(tmp_path / "grey16", (28, 28, 1), (2, 1))
    want = load_dataset("mnist", root).x_train
    # v * 257 maps 0..255 onto 0..65535; its high byte is v again
    _resave(root, lambda p: Image.fromarray(p.astype(np.uint16) * 257))
    with Image.open(next(root.rglob("*.png"))) as img:
        assert img.mode == "I;16"
    zip_path = _zip_folder(root, tmp_path / "grey16.zip", "")
    for source in (root, zip_path):
        ds = load_dataset("mnist", source)
        np.testing.assert_array_equal(ds.x_train, want)
        assert (ds.x_train == 255).mean() < 0.1
        assert len(ds.notes) == 1 and "30 16-bit grey (scaled to 8 bits)" in ds.notes[0]


def test_16_bit_grey_pngs_become_rgb_for_cifar(make_image_folder, tmp_path, capsys):
    from PIL import Image

    grey8 = make_image_folder(tmp_path / "grey8", (32, 32, 3), (3, 2))
    _resave(grey8, lambda p: Image.fromarray(p[..., 1]))  # 8-bit grey ("L")
    want = load_dataset("cifar10", grey8)
    assert "50 grey (L)" in want.notes[0]
    capsys.readouterr()
    grey16 = make_image_folder(tmp_path / "grey16", (32, 32, 3), (3, 2))
    # high byte g, low byte 255: 16 bits scale to g (clipping made them all 255)
    _resave(grey16, lambda p: Image.fromarray(p[..., 1].astype(np.uint16) * 256 + 255))
    ds = load_dataset("cifar10", grey16)
    np.testing.assert_array_equal(ds.x_train, want.x_train)
    np.testing.assert_array_equal(ds.x_test, want.x_test)
    assert (ds.x_train == 255).mean() < 0.1
    out = capsys.readouterr().out
    assert out.count("note: ") == 1 and "50 16-bit grey" in out
    load_dataset("cifar10", grey16)  # from the cache: the note again, once
    out = capsys.readouterr().out
    assert out.count("note: ") == 1 and "50 16-bit grey" in out


def test_a_cache_of_the_old_decoding_is_not_reused(make_image_folder, tmp_path, monkeypatch):
    """A cache written by the clipping decoder (cache version 1) is not read again."""
    from PIL import Image

    root = make_image_folder(tmp_path / "old", (28, 28, 1), (2, 1))
    _resave(root, lambda p: Image.fromarray(p.astype(np.uint16) * 257))
    with monkeypatch.context() as m:
        m.setattr(sources, "_CACHE_VERSION", 1)
        m.setattr(sources, "_image_pixels",
                  lambda img, mode, key, where: (np.full((28, 28), 255, np.uint8), None))
        assert (load_dataset("mnist", root).x_train == 255).all()  # the old, white images
    assert len(list(Path(sources.cache_dir()).glob("mnist-*.npz"))) == 1
    ds = load_dataset("mnist", root)
    assert (ds.x_train == 255).mean() < 0.1
    # the stale cache of the same source was replaced by the new one
    assert len(list(Path(sources.cache_dir()).glob("mnist-*.npz"))) == 1


def test_converted_images_are_counted_in_one_note(image_folder_dir, capsys):
    from PIL import Image

    pngs = sorted(image_folder_dir.rglob("*.png"))
    for i, png in enumerate(pngs):
        with Image.open(png) as img:
            rgb = img.convert("RGB")
        if i % 5 == 0:
            rgb.convert("L").save(png)
        elif i % 5 == 1:
            rgb.convert("RGBA").save(png)
        elif i % 5 == 2:
            rgb.convert("P").save(png)
    ds = load_dataset("cifar10", image_folder_dir)
    assert ds.x_train.shape == (30, 32, 32, 3)
    [note] = ds.notes
    assert "8-bit RGB" in note
    for kind in ("10 grey (L)", "10 colour with alpha (RGBA, alpha dropped)",
                 "10 palette (P)"):
        assert kind in note
    out = capsys.readouterr().out
    assert out.count("note: ") == 1


def test_no_note_when_nothing_is_converted(image_folder_dir, capsys):
    assert load_dataset("cifar10", image_folder_dir).notes == ()
    assert "note:" not in capsys.readouterr().out


def test_an_image_mode_that_cannot_be_converted_is_refused(make_image_folder, tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path / "float", (28, 28, 1), (2, 1))
    png = sorted(root.rglob("*.png"))[0]
    tiff = png.with_suffix(".png")
    Image.fromarray(np.zeros((28, 28), np.float32)).save(tiff, format="TIFF")
    with pytest.raises(DataError, match="mode F.*cannot be converted"):
        load_dataset("mnist", root)
