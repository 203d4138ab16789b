"""Shared pytest fixtures: tiny datasets written in each supported on-disk format."""
# ruff: noqa: E402
# (E402: the TF log level must be set before anything imports TensorFlow.)

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gzip
import pickle
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR100_NAMES = [f"fine_{k:02d}" for k in range(100)]


def _pattern(index: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Deterministic uint8 image number ``index``: (7*index + 3*row + 5*col + 11*ch) % 256."""
    rows, cols, chans = np.indices(shape)
    return ((7 * index + 3 * rows + 5 * cols + 11 * chans) % 256).astype(np.uint8)


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_python():
    """Ctrl-C handled as in a terminal, also where the suite was started with SIGINT ignored
    (a background job of a script, nohup): Python keeps an inherited SIG_IGN, and the
    processes the tests start would inherit it too, so the interrupt tests would see no
    Ctrl-C. Python's own handler here gives each child the default disposition at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the decoded-image cache of bir_keras out of the user's home during tests."""
    monkeypatch.setenv("BIR_KERAS_CACHE_DIR", str(tmp_path_factory.mktemp("bir_keras_cache")))


@pytest.fixture
def tiny_image() -> Callable[[int, tuple[int, int, int]], np.ndarray]:
    """The pixel pattern the tiny-dataset fixtures write: ``tiny_image(index, (H, W, C))``.

    Train image i has index i; test image j has index 1000 + j. Train image i has label
    i % num_classes and test image j has label j % num_classes.
    """
    return _pattern


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """Write a uint8 array as a gzipped IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_idx_dir(tmp_path: Path) -> Path:
    """Gzipped MNIST IDX files: 30 train / 20 test 28x28 images, 10 classes."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n, offset in (("train", 30, 0), ("t10k", 20, 1000)):
        images = np.stack([_pattern(offset + i, (28, 28, 1))[..., 0] for i in range(n)])
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x00000803)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x00000801)
    return folder


def _cifar_data(n: int, offset: int) -> np.ndarray:
    """Images of the tiny pattern as CIFAR pickle rows ([N, 3072], channel-major)."""
    images = np.stack([_pattern(offset + i, (32, 32, 3)) for i in range(n)])
    return images.transpose(0, 3, 1, 2).reshape(n, 3072)


def _pickle(path: Path, obj: dict) -> None:
    """Write a pickle the way the CIFAR python files are written."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar10_pickle_dir(tmp_path: Path) -> Path:
    """DIR/cifar-10-batches-py: 5 batches of 4 train images, 10 test images, batches.meta."""
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        labels = [(4 * b + i) % 10 for i in range(4)]
        batch = {
            b"batch_label": b"training batch",
            b"labels": labels,
            b"data": _cifar_data(4, 4 * b),
        }
        _pickle(folder / f"data_batch_{b + 1}", batch)
    test = {b"labels": [j % 10 for j in range(10)], b"data": _cifar_data(10, 1000)}
    _pickle(folder / "test_batch", test)
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 4}
    _pickle(folder / "batches.meta", meta)
    return folder.parent


@pytest.fixture
def cifar100_pickle_dir(tmp_path: Path) -> Path:
    """DIR/cifar-100-python: 200 train, 100 test images (fine label = i % 100), meta."""
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n, offset in (("train", 200, 0), ("test", 100, 1000)):
        fine = [i % 100 for i in range(n)]
        obj = {
            b"data": _cifar_data(n, offset),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
        }
        _pickle(folder / split, obj)
    meta = {
        b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
        b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(20)],
    }
    _pickle(folder / "meta", meta)
    return folder.parent


def _write_image_folder(
    root: Path, shape: tuple[int, int, int], per_class: tuple[int, int] = (3, 2)
) -> Path:
    """Write root/{train,test}/<cifar10 class>/NNNN.png; see ``tiny_image`` for content."""
    from PIL import Image

    mode = "L" if shape[2] == 1 else "RGB"
    for split, n, offset in (("train", per_class[0] * 10, 0), ("test", per_class[1] * 10, 1000)):
        for i in range(n):
            folder = root / split / CIFAR10_NAMES[i % 10]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = _pattern(offset + i, shape)
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(
                folder / f"{i:04d}.png"
            )
    return root


@pytest.fixture
def image_folder_dir(tmp_path: Path) -> Path:
    """Image folder of 32x32 RGB PNGs, 10 cifar10-named classes, 3 train / 2 test per class."""
    return _write_image_folder(tmp_path / "images", (32, 32, 3), (3, 2))


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """Factory ``make_image_folder(root, (H, W, C), (train, test) per class)`` of PNG folders.

    Train image i (file train/<class i % 10>/i.png) has pattern index i, test image j index
    1000 + j; classes are the ten CIFAR-10 names.
    """
    return _write_image_folder


def make_blobs(num_classes: int = 10, n_train: int = 600, n_test: int = 200,
               shape: tuple[int, int, int] = (8, 8, 1), noise: float = 25.0, seed: int = 0):
    """A learnable toy dataset: one random prototype image per class plus pixel noise."""
    from bir_keras.data.sources import Dataset

    rng = np.random.RandomState(seed)
    protos = rng.randint(0, 256, (num_classes, *shape))

    def draw(n: int):
        y = np.arange(n) % num_classes
        x = np.clip(protos[y] + rng.randn(n, *shape) * noise, 0, 255).astype(np.uint8)
        return x, y.astype(np.int64)

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return Dataset("digits", xtr, ytr, xte, yte, [str(i) for i in range(num_classes)])


@pytest.fixture
def blobs():
    """Ten separable classes of 8x8 images, shaped like sklearn's digits."""
    return make_blobs()


@pytest.fixture
def tiny_setup(blobs):
    """``tiny_setup(scenario, tasks=None, **config)`` -> (resolved Config, Protocol) on blobs."""
    from bir_keras.config import Config, resolve
    from bir_keras.data.protocols import make_protocol

    def make(scenario: str = "class", tasks: int | None = None, **kw):
        base = dict(experiment="split_digits", scenario=scenario, tasks=tasks, iters=60,
                    batch=32, fc_units=40, z_dim=8, fisher_n=50, keep_label_order=True)
        base.update(kw)
        cfg = Config(**base)
        proto = make_protocol("split_digits", scenario, tasks=tasks, dataset=blobs,
                              keep_label_order=cfg.keep_label_order, seed=cfg.seed)
        return resolve(cfg, proto.conv), proto

    return make


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (whole grids, minutes each)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a whole grid of combinations; run with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="a whole grid (minutes): run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
