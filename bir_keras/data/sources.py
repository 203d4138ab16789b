"""Load raw datasets into numpy arrays.

One entry point, :func:`load_dataset`, returns a :class:`Dataset` of uint8 images
``[N, H, W, C]`` and int64 labels. Sources, by what is passed:

* ``digits``: scikit-learn's bundled 8x8 digits (always offline).
* ``data_dir`` given: local files, format detected from what is there:
  MNIST IDX files (``mnist``, ``fashion_mnist``), the CIFAR python pickles
  (``cifar10``, ``cifar100``), or an image folder ``train/<class>/*.png`` and
  ``test/<class>/*.png`` (any dataset), either a directory or a ``.zip`` file.
* no ``data_dir``: TensorFlow Datasets (downloads, or reads ``TFDS_DATA_DIR``); with no
  prepared copy and no answer from the download host it refuses at once.

Every problem (missing, unreadable, truncated or ill-shaped data) is a one-line
:class:`DataError`; an OS refusal is never called corruption.

Images of an image folder become the dataset's 8-bit grey or RGB: 16-bit grey PNGs are
scaled to 8 bits (their high byte); grey, colour, alpha and palette images that need a
conversion to the dataset's channels are converted and counted, in one ``note:`` line per
load (``Dataset.notes``); a mode that cannot be converted faithfully is a ``DataError``.
Decoded image folders are cached as ``.npz`` under ``~/.cache/bir_keras/``
(or ``$BIR_KERAS_CACHE_DIR``), never next to the user's data.

Note: the CIFAR pickle format is read with :mod:`pickle`; only load pickles
from a source you trust.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import re
import socket
import stat
import threading
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable

import numpy as np

from bir_keras.fileio import atomic_write

logger = logging.getLogger(__name__)

EXPECTED_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "digits": (8, 8, 1),
}
EXPECTED_CLASSES: dict[str, int] = {
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "digits": 10,
}

MNIST_CLASS_NAMES = [str(i) for i in range(10)]
FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
_STANDARD_CLASS_NAMES = {
    "mnist": MNIST_CLASS_NAMES,
    "fashion_mnist": FASHION_MNIST_CLASS_NAMES,
    "cifar10": CIFAR10_CLASS_NAMES,
}

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_FILES = ["train", "test", "meta"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
# 2: 16-bit grey PNGs scaled to 8 bits (version 1 clipped them to white), with the notes
_CACHE_VERSION = 2
_ZIP_LOCAL_HEADER_MAGIC = b"PK\x03\x04"
# Seconds to wait for a TCP connection to the TFDS download host before calling it unreachable.
NETWORK_PROBE_TIMEOUT_S = 3.0
# Where TFDS fetches from when a builder lists no download URLs of its own.
_TFDS_FALLBACK_HOST = ("storage.googleapis.com", 443)
_IMAGE_FOLDER_HELP = (
    "an image folder DIR/train/<class>/*.png|*.jpg and DIR/test/<class>/*.png|*.jpg, "
    "or a .zip file holding that layout (optionally under one top folder)"
)


class DataError(ValueError):
    """Raised for missing, corrupt or ill-shaped data, with a message that says what to do."""


@dataclasses.dataclass
class Dataset:
    """A dataset as uint8 images ``[N, H, W, C]`` and int64 labels ``[N]``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    # what loading changed that the user should know (images converted to the dataset's
    # channels), printed once per load as "note: ..." lines
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (local files), scikit-learn (digits) or TFDS."""
    if name not in EXPECTED_SHAPES:
        raise DataError(
            f"unknown dataset {name!r}; valid names are: {', '.join(sorted(EXPECTED_SHAPES))}"
        )
    if name == "digits":
        dataset = _load_digits()
    elif data_dir is not None:
        dataset = _load_local(name, os.fspath(data_dir))
    else:
        dataset = _load_tfds(name)
    _validate(dataset, str(data_dir) if data_dir is not None and name != "digits" else "")
    return dataset


# --------------------------------------------------------------------------- checks


def _formats_help(name: str) -> str:
    """Describe the local formats accepted for ``name``."""
    formats = []
    if name in ("mnist", "fashion_mnist"):
        files = ", ".join(f + ".gz" for f in IDX_FILES.values())
        formats.append(f"the MNIST IDX files {files} (or the same names without .gz)")
    if name == "cifar10":
        formats.append(
            f"the CIFAR-10 python pickles {CIFAR10_FOLDER}/{{{', '.join(CIFAR10_FILES)}}} "
            f"(DIR may be the {CIFAR10_FOLDER} folder itself)"
        )
    if name == "cifar100":
        formats.append(
            f"the CIFAR-100 python pickles {CIFAR100_FOLDER}/{{{', '.join(CIFAR100_FILES)}}} "
            f"(DIR may be the {CIFAR100_FOLDER} folder itself)"
        )
    formats.append(_IMAGE_FOLDER_HELP)
    return "accepted formats: " + "; ".join(formats)


def _shape_error(name: str, found: tuple[int, ...], where: str) -> DataError:
    """Build the error for images of the wrong shape."""
    return DataError(
        f"{where}: images have shape {tuple(found)} but {name} expects "
        f"{EXPECTED_SHAPES[name]} (height, width, channels); pass a data_dir holding "
        f"{name} data, or load it under the dataset name whose shape it has"
    )


def _validate(ds: Dataset, where: str) -> None:
    """Check dtypes, shapes, label ranges and class count of a loaded dataset."""
    where = where or ds.name
    expected_classes = EXPECTED_CLASSES[ds.name]
    if len(ds.class_names) != expected_classes:
        raise DataError(
            f"{where}: found {len(ds.class_names)} classes but {ds.name} has "
            f"{expected_classes}; check that data_dir holds {ds.name} data"
        )
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x.dtype != np.uint8 or y.dtype != np.int64:
            raise DataError(
                f"{where}: {split} arrays have dtypes {x.dtype}/{y.dtype}, not uint8/int64"
            )
        if x.ndim != 4 or x.shape[1:] != EXPECTED_SHAPES[ds.name]:
            raise _shape_error(ds.name, x.shape[1:], f"{where} ({split})")
        if y.shape != (x.shape[0],):
            raise DataError(
                f"{where}: {split} has {x.shape[0]} images but labels of shape {y.shape}"
            )
        if x.shape[0] == 0:
            raise DataError(f"{where}: the {split} split is empty")
        if y.min() < 0 or y.max() >= expected_classes:
            raise DataError(
                f"{where}: {split} labels range {y.min()}..{y.max()}, outside "
                f"0..{expected_classes - 1} for {ds.name}"
            )


# --------------------------------------------------------------------------- digits


def _load_digits() -> Dataset:
    """Load scikit-learn's 8x8 digits, scaled to 0..255, split 80/20 per class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    test_index = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(0.2 * len(idx)))
        test_index.append(idx[len(idx) - n_test :])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_index)] = True
    return Dataset(
        name="digits",
        x_train=images[~is_test],
        y_train=labels[~is_test],
        x_test=images[is_test],
        y_test=labels[is_test],
        class_names=list(MNIST_CLASS_NAMES),
    )


# --------------------------------------------------------------------------- local files


def _os_reason(err: OSError) -> str:
    """The OS's words for ``err`` ("Permission denied"), without errno and path."""
    return err.strerror or str(err) or type(err).__name__


def _unreadable(path: str, err: OSError, data_dir: str | None = None) -> DataError:
    """The error for a file or folder the OS refuses to read (never called corrupt)."""
    same = data_dir is not None and os.path.normpath(path) == os.path.normpath(data_dir)
    where = f"data_dir {path}" if same else path
    if isinstance(err, PermissionError):
        hint = "check its permissions (ls -l), or copy the data somewhere you may read"
    else:
        hint = "check the disk, or copy the data again"
    return DataError(f"{where}: cannot read it ({_os_reason(err)}); {hint}")


def _list_dir(path: str, data_dir: str | None = None) -> list[str]:
    """List a folder, raising DataError when it cannot be listed or searched."""
    try:
        names = os.listdir(path)
        if names:  # listing needs read permission, looking inside needs search (x) permission
            os.stat(os.path.join(path, names[0]), follow_symlinks=False)
    except OSError as err:
        raise _unreadable(path, err, data_dir) from err
    return names


def _load_local(name: str, data_dir: str) -> Dataset:
    """Detect the format of ``data_dir`` and load it; every OS error becomes a DataError."""
    try:
        return _detect_and_load(name, data_dir)
    except OSError as err:  # a safety net: the readers below name the file themselves
        raise _unreadable(os.fspath(err.filename or data_dir), err, data_dir) from err


def _detect_and_load(name: str, data_dir: str) -> Dataset:
    """Detect the format of ``data_dir`` and load it."""
    try:
        mode = os.stat(data_dir).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"data_dir {data_dir} does not exist; {_formats_help(name)}") from None
    except OSError as err:
        raise _unreadable(data_dir, err, data_dir) from err
    if stat.S_ISREG(mode):
        return _load_local_file(name, data_dir)
    if not stat.S_ISDIR(mode):
        raise DataError(
            f"data_dir {data_dir} is neither a folder nor a regular file; {_formats_help(name)}"
        )
    _list_dir(data_dir, data_dir)

    if name in ("mnist", "fashion_mnist"):
        found = {key: _find_idx_file(data_dir, base) for key, base in IDX_FILES.items()}
        if any(found.values()):
            missing = [IDX_FILES[k] + ".gz" for k, path in found.items() if path is None]
            if missing:
                raise DataError(
                    f"data_dir {data_dir} lacks {', '.join(missing)} (or the same without "
                    f".gz); {_formats_help(name)}"
                )
            return _load_idx(name, found)
    if name == "cifar10":
        folder = _find_pickle_folder(data_dir, CIFAR10_FOLDER, CIFAR10_FILES)
        if folder is not None:
            return _load_cifar10_pickles(folder)
    if name == "cifar100":
        folder = _find_pickle_folder(data_dir, CIFAR100_FOLDER, CIFAR100_FILES)
        if folder is not None:
            return _load_cifar100_pickles(folder)

    root = _find_image_folder_root(data_dir)
    if root is not None:
        return _load_image_dir(name, root)
    raise DataError(f"data_dir {data_dir} holds no {name} data: {_missing_hint(name, data_dir)}")


def _load_local_file(name: str, path: str) -> Dataset:
    """Load a data_dir that is a file: only a .zip of an image folder is accepted."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_LOCAL_HEADER_MAGIC))
    except OSError as err:
        raise _unreadable(path, err, path) from err
    if zipfile.is_zipfile(path):
        return _load_image_zip(name, path)
    if head == _ZIP_LOCAL_HEADER_MAGIC:
        raise DataError(
            f"data_dir {path} is a truncated or corrupt .zip (it starts like a .zip but its "
            f"end-of-archive directory is missing or damaged); download or copy it again"
        )
    raise DataError(
        f"data_dir {path} is a file but not a .zip archive (extract other archives "
        f"first); {_formats_help(name)}"
    )


def _missing_hint(name: str, data_dir: str) -> str:
    """Name the files that were looked for and not found."""
    if name in ("mnist", "fashion_mnist"):
        looked = [f + ".gz" for f in IDX_FILES.values()]
    elif name == "cifar10":
        looked = [os.path.join(CIFAR10_FOLDER, f) for f in CIFAR10_FILES]
    elif name == "cifar100":
        looked = [os.path.join(CIFAR100_FOLDER, f) for f in CIFAR100_FILES]
    else:
        looked = []
    looked += ["train/", "test/"]
    return f"missing {', '.join(looked)}; {_formats_help(name)}"


# ---- MNIST IDX


def _find_idx_file(data_dir: str, base: str) -> str | None:
    """Return the path of ``base.gz`` or ``base`` in ``data_dir``, if either exists."""
    for candidate in (base + ".gz", base):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes into an array."""
    fname = os.path.basename(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # before OSError: BadGzipFile is one
        raise DataError(
            f"{path}: cannot decompress it ({err}); the file is truncated or corrupt, "
            f"download {fname} again"
        ) from err
    except OSError as err:
        raise _unreadable(path, err) from err
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path}: only {len(raw)} bytes, too short for an IDX header; download {fname} again"
        )
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise DataError(
            f"{path}: IDX magic number {found_magic:#010x}, expected {magic:#010x}; "
            f"is this really {fname}?"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says {dims} ({expected} bytes) but the file has {len(raw)} "
            f"bytes; the file is truncated or corrupt, download {fname} again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _load_idx(name: str, paths: dict[str, str]) -> Dataset:
    """Load the four MNIST-style IDX files."""
    arrays = {}
    for split in ("train", "test"):
        x_path, y_path = paths[f"x_{split}"], paths[f"y_{split}"]
        x = _read_idx(x_path, _IDX_IMAGES_MAGIC, 3)
        y = _read_idx(y_path, _IDX_LABELS_MAGIC, 1)
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{x_path} holds {x.shape[0]} images but {y_path} holds {y.shape[0]} "
                f"labels; one of them is from another dataset or damaged"
            )
        if x.shape[1:] + (1,) != EXPECTED_SHAPES[name]:
            raise _shape_error(name, x.shape[1:] + (1,), x_path)
        arrays[f"x_{split}"] = x[..., None].copy()
        arrays[f"y_{split}"] = y.astype(np.int64)
    _check_mnist_family(name, arrays["x_train"], paths["x_train"])
    return Dataset(name=name, class_names=list(_STANDARD_CLASS_NAMES[name]), **arrays)


# Mean pixel (0..255) of the training images: MNIST's digits cover about a fifth of the
# frame, Fashion-MNIST's clothes more than half of it. The two share the IDX file names.
MEAN_PIXEL = {"mnist": 33.3, "fashion_mnist": 72.9}
_FAMILY_LABEL = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
# below this many images a file is a sample or a test fixture, not the dataset: no check
MIN_IMAGES_TO_CHECK = 1000


def _check_mnist_family(name: str, x: np.ndarray, where: str) -> None:
    """Refuse Fashion-MNIST files given as MNIST, and the reverse (same names, same shapes)."""
    if len(x) < MIN_IMAGES_TO_CHECK:
        return
    mean = float(x[:10000].mean())
    other = "fashion_mnist" if name == "mnist" else "mnist"
    if abs(mean - MEAN_PIXEL[other]) < abs(mean - MEAN_PIXEL[name]):
        raise DataError(
            f"{where}: these images look like {_FAMILY_LABEL[other]}, not "
            f"{_FAMILY_LABEL[name]} (mean pixel {mean:.1f}; {_FAMILY_LABEL[name]}'s is about "
            f"{MEAN_PIXEL[name]:.0f}, {_FAMILY_LABEL[other]}'s about {MEAN_PIXEL[other]:.0f}); "
            f"load them as {other} (e.g. --experiment=split_{other})"
        )


# ---- CIFAR pickles


def _find_pickle_folder(data_dir: str, folder: str, files: list[str]) -> str | None:
    """Return the CIFAR pickle folder (data_dir/folder or data_dir), or None if absent.

    Raises DataError when the folder is there but some of its files are missing.
    """
    for candidate in (os.path.join(data_dir, folder), data_dir):
        if not os.path.isdir(candidate):
            continue
        names = set(_list_dir(candidate))
        present = [f for f in files if f in names and os.path.isfile(os.path.join(candidate, f))]
        if candidate == data_dir and not present:
            continue
        missing = [f for f in files if f not in present]
        if missing:
            raise DataError(
                f"{candidate} lacks {', '.join(missing)}; the {folder} folder must "
                f"hold {', '.join(files)}"
            )
        return candidate
    return None


def _read_pickle(path: str) -> dict:
    """Unpickle one CIFAR file (bytes keys)."""
    try:
        f = open(path, "rb")  # closed by the with below; failing to open is not damage
    except OSError as err:
        raise _unreadable(path, err) from err
    try:
        with f:
            obj = pickle.load(f, encoding="bytes")
    except OSError as err:  # the OS failed to read it: not a damaged file
        raise _unreadable(path, err) from err
    except Exception as err:  # any other unpickling failure means a damaged file
        raise DataError(
            f"{path}: cannot unpickle ({type(err).__name__}: {err}); the file is truncated "
            f"or corrupt, download it again"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _cifar_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read images (as NHWC) and labels from one CIFAR pickle."""
    batch = _read_pickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"{path}: no {key!r} entry; is this a CIFAR python pickle?")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: b'data' has shape {data.shape} and dtype {data.dtype}, expected "
            f"[N, 3072] uint8"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _names(meta: dict, key: bytes, path: str) -> list[str]:
    """Decode a list of label names from a CIFAR meta pickle."""
    if key not in meta:
        raise DataError(f"{path}: no {key!r} entry; is this a CIFAR meta file?")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _load_cifar10_pickles(folder: str) -> Dataset:
    """Load the CIFAR-10 python pickles."""
    parts = [_cifar_batch(os.path.join(folder, f"data_batch_{i}"), b"labels") for i in range(1, 6)]
    x_test, y_test = _cifar_batch(os.path.join(folder, "test_batch"), b"labels")
    meta_path = os.path.join(folder, "batches.meta")
    return Dataset(
        name="cifar10",
        x_train=np.concatenate([p[0] for p in parts]),
        y_train=np.concatenate([p[1] for p in parts]),
        x_test=x_test,
        y_test=y_test,
        class_names=_names(_read_pickle(meta_path), b"label_names", meta_path),
    )


def _load_cifar100_pickles(folder: str) -> Dataset:
    """Load the CIFAR-100 python pickles with fine labels."""
    x_train, y_train = _cifar_batch(os.path.join(folder, "train"), b"fine_labels")
    x_test, y_test = _cifar_batch(os.path.join(folder, "test"), b"fine_labels")
    meta_path = os.path.join(folder, "meta")
    return Dataset(
        name="cifar100",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=_names(_read_pickle(meta_path), b"fine_label_names", meta_path),
    )


# ---- image folders (directory or zip)


def _is_image(filename: str) -> bool:
    """Whether a file name looks like a readable image (and is not hidden)."""
    base = os.path.basename(filename)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _find_image_folder_root(data_dir: str) -> str | None:
    """Return the folder holding train/ and test/: data_dir or its single subfolder."""
    if os.path.isdir(os.path.join(data_dir, "train")) or os.path.isdir(
        os.path.join(data_dir, "test")
    ):
        return data_dir
    with os.scandir(data_dir) as it:
        subdirs = [e.path for e in it if e.is_dir() and not e.name.startswith((".", "__"))]
    if len(subdirs) == 1:
        names = _list_dir(subdirs[0])  # an unreadable single subfolder may hold the data
        if any(
            split in names and os.path.isdir(os.path.join(subdirs[0], split))
            for split in ("train", "test")
        ):
            return subdirs[0]
    return None


def _group_entries(
    entries: list[tuple[str, str, str]], where: str
) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Turn (split, class, key) entries into sorted class names and per-split (key, label) lists."""
    classes = {
        split: sorted({c for s, c, _ in entries if s == split}) for split in ("train", "test")
    }
    for split in ("train", "test"):
        if not classes[split]:
            raise DataError(
                f"{where}: no images under {split}/<class>/ (*.png, *.jpg, *.jpeg); an image "
                f"folder needs train/<class>/ and test/<class>/ with the same class folders"
            )
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise DataError(
            f"{where}: train/ and test/ must hold the same class folders; only in train: "
            f"{only_train or 'none'}, only in test: {only_test or 'none'}"
        )
    label_of = {c: i for i, c in enumerate(classes["train"])}
    grouped: dict[str, list[tuple[str, int]]] = {}
    for split in ("train", "test"):
        items = sorted((label_of[c], key) for s, c, key in entries if s == split)
        grouped[split] = [(key, label) for label, key in items]
    return classes["train"], grouped


# image modes PIL opens, and how each becomes the experiment's 8-bit grey ("L") or RGB:
# a conversion the experiment's images do not need is counted under its kind and named in
# one note per dataset; the 16-bit grey modes are scaled to 8 bits (their high byte, as PIL
# itself reduces 16-bit colour PNGs); a mode missing here is refused.
_MODE_KINDS = {"1": "black-and-white (1)", "L": "grey (L)", "LA": "grey with alpha (LA, "
               "alpha dropped)", "La": "grey with alpha (La, alpha dropped)",
               "P": "palette (P)", "PA": "palette with alpha (PA, alpha dropped)",
               "RGB": "colour (RGB)", "RGBA": "colour with alpha (RGBA, alpha dropped)",
               "RGBa": "colour with alpha (RGBa, alpha dropped)", "RGBX": "colour (RGBX)",
               "CMYK": "CMYK", "YCbCr": "YCbCr"}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _image_pixels(img, mode: str, key: str, where: str) -> tuple[np.ndarray, str | None]:
    """``img`` as uint8 ``[H, W]`` (``mode`` "L") or ``[H, W, 3]`` ("RGB"), and the kind of
    conversion that took (None: the image already was that)."""
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{where}: image {key} holds {img.mode} values outside 0..65535, which "
                f"cannot be made 8-bit faithfully; save it as an 8- or 16-bit PNG")
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)  # 16 bits -> 8: high byte
        kind = "16-bit grey (scaled to 8 bits)"
        if mode == "L":
            return grey, kind
        return np.repeat(grey[..., None], 3, axis=-1), kind
    if img.mode == mode:
        return np.asarray(img, dtype=np.uint8), None
    if img.mode not in _MODE_KINDS:
        raise DataError(
            f"{where}: image {key} has PIL mode {img.mode}, which cannot be converted to "
            f"8-bit {'grey' if mode == 'L' else 'RGB'} faithfully; save it as an 8- or "
            f"16-bit grey or RGB PNG (or a JPEG)")
    return np.asarray(img.convert(mode), dtype=np.uint8), _MODE_KINDS[img.mode]


def _conversion_note(where: str, mode: str, counts: dict[str, int],
                     whose: str = "the experiment's") -> str | None:
    """The one note about the images that were converted (None: none was) to ``whose``
    8-bit grey (``mode`` "L") or RGB."""
    if not counts:
        return None
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    target = "8-bit grey" if mode == "L" else "8-bit RGB"
    return f"{where}: images converted to {whose} {target}: {kinds}"


def _decode_problem(err: Exception, data: bytes) -> str:
    """What is wrong with an image PIL could not decode, in words: PIL's own message names
    the in-memory file object by its address (``<_io.BytesIO object at 0x...>``), which
    says nothing."""
    from PIL import UnidentifiedImageError

    if not data:
        return "an empty file"
    if isinstance(err, UnidentifiedImageError):
        return "not an image PIL can read"
    text = " ".join(re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).split())
    return text or type(err).__name__


def _decode_image(data: bytes, key: str, where: str, decode: Callable):
    """``decode(img)`` of the PIL image in ``data`` (``key`` names it); a decoding failure
    is a ``DataError`` saying what is wrong with the file, ``DataError`` passes through."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return decode(img)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, zlib.error) as err:  # decoding only
        raise DataError(
            f"{where}: cannot decode image {key} ({_decode_problem(err, data)}); the file "
            f"is truncated, corrupt or not an image, remove or replace it"
        ) from err


def _decode_images(
    name: str,
    items: list[tuple[str, int]],
    read: Callable[[str], bytes],
    where: str,
    counts: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode images with PIL into a uint8 array of the dataset's expected shape; the
    images that needed a conversion are counted by kind in ``counts``."""
    height, width, channels = EXPECTED_SHAPES[name]
    mode = "L" if channels == 1 else "RGB"
    x = np.empty((len(items), height, width, channels), dtype=np.uint8)
    y = np.fromiter((label for _, label in items), dtype=np.int64, count=len(items))
    for i, (key, _) in enumerate(items):
        data = read(key)  # raises DataError itself, saying whether the OS or the data failed

        def decode(img, key=key):
            found = (img.height, img.width, len(img.getbands()))
            if found[:2] != (height, width):
                raise _shape_error(name, found, f"{where}: {key}")
            return _image_pixels(img, mode, key, where)

        pixels, kind = _decode_image(data, key, where, decode)
        if kind is not None and counts is not None:
            counts[kind] = counts.get(kind, 0) + 1
        x[i] = pixels.reshape(height, width, channels)
    return x, y


def _notes(name: str, where: str, counts: dict[str, int]) -> tuple[str, ...]:
    note = _conversion_note(where, "L" if EXPECTED_SHAPES[name][2] == 1 else "RGB", counts)
    return (note,) if note else ()


def _file_state(path: str) -> dict:
    """Size and mtime of a file, for cache keys."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _scandir(path: str) -> list[os.DirEntry]:
    """The entries of a folder, raising DataError when the OS refuses to list it."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as err:
        raise _unreadable(path, err) from err


def _load_image_dir(name: str, root: str) -> Dataset:
    """Load an image folder root/{train,test}/<class>/* (cached)."""
    entries = []
    state = []
    for split in ("train", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for cls in _scandir(split_dir):
            if not cls.is_dir() or cls.name.startswith("."):
                continue
            for f in _scandir(cls.path):
                if f.is_file() and _is_image(f.name):
                    rel = f"{split}/{cls.name}/{f.name}"
                    entries.append((split, cls.name, rel))
                    try:
                        st = f.stat()
                    except OSError as err:
                        raise _unreadable(f.path, err) from err
                    state.append((rel, st.st_size, st.st_mtime_ns))
    state.sort()
    fingerprint = hashlib.sha256(json.dumps(state).encode()).hexdigest()

    def build() -> Dataset:
        class_names, grouped = _group_entries(entries, root)

        def read(rel: str) -> bytes:
            path = os.path.join(root, rel)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as err:
                raise _unreadable(path, err) from err

        counts: dict[str, int] = {}
        x_train, y_train = _decode_images(name, grouped["train"], read, root, counts)
        x_test, y_test = _decode_images(name, grouped["test"], read, root, counts)
        return Dataset(name, x_train, y_train, x_test, y_test, class_names,
                       _notes(name, root, counts))

    return _cached(name, root, {"kind": "dir", "fingerprint": fingerprint}, build)


def _load_image_zip(name: str, zip_path: str) -> Dataset:
    """Load an image folder stored in a .zip, without extracting it (cached)."""

    def build() -> Dataset:
        try:
            zf = zipfile.ZipFile(zip_path)
        except (zipfile.BadZipFile, EOFError) as err:
            raise DataError(
                f"{zip_path}: is a truncated or corrupt .zip ({err}); download or copy it again"
            ) from err
        except OSError as err:
            raise _unreadable(zip_path, err, zip_path) from err

        def read(member: str) -> bytes:
            try:
                return zf.read(member)
            except (zipfile.BadZipFile, EOFError, zlib.error) as err:
                raise DataError(
                    f"{zip_path}: cannot extract {member} ({err}); the .zip is truncated or "
                    f"corrupt, download or copy it again"
                ) from err
            except (NotImplementedError, RuntimeError) as err:  # compression, encryption
                raise DataError(
                    f"{zip_path}: cannot extract {member} ({err}); make the .zip again "
                    f"without a password, stored or deflated"
                ) from err
            except OSError as err:
                raise _unreadable(zip_path, err, zip_path) from err

        with zf:
            entries = _zip_entries(zf, zip_path)
            class_names, grouped = _group_entries(entries, zip_path)
            counts: dict[str, int] = {}
            x_train, y_train = _decode_images(name, grouped["train"], read, zip_path, counts)
            x_test, y_test = _decode_images(name, grouped["test"], read, zip_path, counts)
        return Dataset(name, x_train, y_train, x_test, y_test, class_names,
                       _notes(name, zip_path, counts))

    return _cached(name, zip_path, {"kind": "zip", **_file_state(zip_path)}, build)


def _zip_entries(zf: zipfile.ZipFile, zip_path: str) -> list[tuple[str, str, str]]:
    """List (split, class, member name) for images in [top/]{train,test}/<class>/file."""
    members = [
        info.filename
        for info in zf.infolist()
        if not info.is_dir()
        and _is_image(info.filename)
        and not info.filename.startswith("__MACOSX/")
    ]
    parsed = [m.split("/") for m in members]
    at_root = [p for p in parsed if len(p) == 3 and p[0] in ("train", "test")]
    if at_root:
        return [(p[0], p[1], "/".join(p)) for p in at_root]
    nested = [p for p in parsed if len(p) == 4 and p[1] in ("train", "test")]
    tops = {p[0] for p in nested}
    if len(tops) > 1:
        raise DataError(
            f"{zip_path}: several top folders hold train/ or test/ ({', '.join(sorted(tops))}); "
            f"the zip must hold one image folder"
        )
    if not nested:
        raise DataError(
            f"{zip_path}: no images at train/<class>/* or test/<class>/* (optionally under "
            f"one top folder); the zip must hold {_IMAGE_FOLDER_HELP}"
        )
    return [(p[1], p[2], "/".join(p)) for p in nested]


# ---- cache


def cache_dir() -> str:
    """Folder for decoded-image caches: $BIR_KERAS_CACHE_DIR or ~/.cache/bir_keras."""
    return os.environ.get("BIR_KERAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "bir_keras"
    )


def _cached(name: str, source: str, state: dict, build: Callable[[], Dataset]) -> Dataset:
    """Return ``build()``, through an .npz cache keyed by source path and state."""
    source = os.path.abspath(source)
    path_key = hashlib.sha256(f"{name}\0{source}".encode()).hexdigest()[:16]
    state_key = hashlib.sha256(
        json.dumps({"version": _CACHE_VERSION, **state}, sort_keys=True).encode()
    ).hexdigest()[:16]
    folder = cache_dir()
    prefix = f"{name}-{path_key}-"
    path = os.path.join(folder, f"{prefix}{state_key}.npz")

    dataset = _read_cache(name, path)
    if dataset is None:
        dataset = build()
        _validate(dataset, source)
        _write_cache(dataset, folder, path, prefix)
    for note in dataset.notes:  # once per load, from the cache too
        print(f"note: {note}", flush=True)
    return dataset


def _read_cache(name: str, path: str) -> Dataset | None:
    """Load a cache file, or None if absent or unusable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            dataset = Dataset(
                name=name,
                x_train=npz["x_train"],
                y_train=npz["y_train"],
                x_test=npz["x_test"],
                y_test=npz["y_test"],
                class_names=[str(c) for c in npz["class_names"]],
                notes=tuple(str(n) for n in npz["notes"]),
            )
        _validate(dataset, path)
    except Exception as err:  # a corrupt cache is rebuilt, never fatal
        logger.warning("ignoring unusable cache file %s (%s)", path, err)
        return None
    return dataset


def _write_cache(dataset: Dataset, folder: str, path: str, prefix: str) -> None:
    """Write the cache atomically and drop stale caches of the same source."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(
                f,
                x_train=dataset.x_train,
                y_train=dataset.y_train,
                x_test=dataset.x_test,
                y_test=dataset.y_test,
                class_names=np.array(dataset.class_names, dtype=str),
                notes=np.array(dataset.notes, dtype=str),
            )

    try:
        atomic_write(path, write)
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and entry.path != path:
                os.remove(entry.path)
    except OSError as err:
        logger.warning("could not write cache %s (%s); continuing without it", path, err)


# --------------------------------------------------------------------------- TFDS


def _probe_network(
    hosts: Iterable[tuple[str, int]], timeout: float = NETWORK_PROBE_TIMEOUT_S
) -> str | None:
    """Try a TCP connection to each ``(host, port)``; None if all answer, else why not.

    Each connection runs in a daemon thread so that a hanging name lookup (which ignores
    socket timeouts) cannot hold the caller longer than ``timeout`` seconds in all.
    """
    hosts = list(dict.fromkeys(hosts))
    failures: dict[tuple[str, int], str | None] = {}

    def connect(host: str, port: int) -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            failures[(host, port)] = None
        except OSError as err:
            failures[(host, port)] = _os_reason(err)

    threads = [threading.Thread(target=connect, args=hp, daemon=True) for hp in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for host, port in hosts:
        if (host, port) not in failures:
            return f"{host}:{port}: no answer within {timeout:g} s"
        if failures[(host, port)] is not None:
            return f"{host}:{port}: {failures[(host, port)]}"
    return None


def _download_hosts(urls: Iterable[str]) -> list[tuple[str, int]]:
    """The ``(host, port)`` to connect to for each URL: its proxy's, if one is set for it."""
    proxies = urllib.request.getproxies()
    hosts = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            continue
        proxy = proxies.get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname):
            parts = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
        if parts.hostname:
            default_port = 443 if parts.scheme == "https" else 80
            hosts.append((parts.hostname, parts.port or default_port))
    return list(dict.fromkeys(hosts)) or [_TFDS_FALLBACK_HOST]


def _tfds_offline_error(name: str, data_dir_root: str, reason: str) -> DataError:
    """The error for: no --data_dir, no prepared TFDS copy, and no way to download one."""
    return DataError(
        f"no --data_dir given, TFDS has no local copy of {name} (in {data_dir_root}), and "
        f"the internet is unreachable ({reason}); pass --data_dir=DIR with local files "
        f"({_formats_help(name)}), or set TFDS_DATA_DIR to a folder where TFDS already "
        f"prepared {name}"
    )


def _tfds_is_prepared(builder) -> bool:
    """``builder.is_prepared()``, without TFDS's warnings about half-made variant folders."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return bool(builder.is_prepared())
    finally:
        absl_logger.setLevel(level)


def _load_tfds(name: str) -> Dataset:
    """Load ``name`` with TensorFlow Datasets, or explain how to get the data otherwise.

    When TFDS has no prepared copy and its download host does not answer within
    ``NETWORK_PROBE_TIMEOUT_S``, refuse at once, before TFDS creates any folder.
    """
    try:
        import tensorflow_datasets as tfds

        # TFDS reads TFDS_DATA_DIR once, at import; read it here so a later setting counts.
        tfds_data_dir = os.environ.get("TFDS_DATA_DIR") or None
        builder = tfds.builder(name, data_dir=tfds_data_dir)
        if not _tfds_is_prepared(builder):
            reason = _probe_network(_download_hosts(builder.url_infos or {}))
            if reason is not None:
                raise _tfds_offline_error(name, os.fspath(builder.data_dir_root), reason)
        (train, test), info = tfds.load(
            name,
            split=["train", "test"],
            data_dir=tfds_data_dir,
            batch_size=-1,
            as_supervised=True,
            with_info=True,
        )
        x_train, y_train = tfds.as_numpy(train)
        x_test, y_test = tfds.as_numpy(test)
        names = list(info.features["label"].names)
    except DataError:
        raise
    except Exception as err:  # no internet, no TFDS, broken TFDS data dir, ...
        raise DataError(
            f"could not load {name!r} with TensorFlow Datasets ({type(err).__name__}: "
            f"{str(err).strip()[:300]}). To fix, either pass --data_dir=DIR pointing at "
            f"local files ({_formats_help(name)}), or run where TFDS can download {name} or "
            f"already has it in its data dir (set TFDS_DATA_DIR to that folder)."
        ) from err
    return Dataset(
        name=name,
        x_train=np.asarray(x_train, dtype=np.uint8),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.asarray(x_test, dtype=np.uint8),
        y_test=np.asarray(y_test, dtype=np.int64),
        class_names=list(_STANDARD_CLASS_NAMES.get(name, names)),
    )
