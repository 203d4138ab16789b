"""Your own data from files as a :class:`~bir_keras.data.streams.TaskStream`.

:func:`load_stream` reads either form:

* an ``.npz`` file (``np.savez``) with the arrays ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` and optionally ``class_names`` (strings; then the labels are integers
  0..C-1), as :class:`TaskStream` takes them: uint8 images or float features;
* a folder of task folders ``DIR/<task>/{train,test}/<class>/*.png|*.jpg|*.jpeg``: the
  tasks in the order of their folder names, each with the classes of its class folders
  (sorted by name, the folder's name is the class's name), so the folders fix the tasks.
  The images need one size; when every one is grey (8- or 16-bit grey, black-and-white,
  a palette of greys) the stream is 8-bit grey ``[N, H, W]``, otherwise RGB
  ``[N, H, W, 3]``. What was converted on the way (16-bit grey scaled to 8 bits by the
  high byte, alpha dropped, grey made RGB) is said in one line of ``stream.notes``.

Names starting with ``.`` are ignored, and so are files that are not images. Every problem
is a one-line :class:`~bir_keras.data.sources.DataError` naming the path and what to fix.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib

import numpy as np

from bir_keras.data.sources import (
    _SIXTEEN_BIT,
    DataError,
    _conversion_note,
    _decode_image,
    _image_pixels,
    _is_image,
    _scandir,
    _unreadable,
)
from bir_keras.data.streams import TaskStream

__all__ = ["load_stream", "read_npz", "read_task_folders", "stream_of"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL = ("class_names",)
FORMS = ("a folder of task folders DIR/<task>/{train,test}/<class>/*.png|*.jpg|*.jpeg, or an "
         ".npz file with x_train, y_train, x_test, y_test[, class_names]")
_GREY_MODES = {"1", "L", "LA", "La", *_SIXTEEN_BIT}


def load_stream(path: str | os.PathLike) -> TaskStream:
    """The stream in ``path``: an ``.npz`` file (:func:`read_npz`) or a folder of task
    folders (:func:`read_task_folders`); ``DataError`` for anything else."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path} does not exist; give {FORMS}") from None
    except OSError as err:
        raise _unreadable(path, err) from err
    if stat.S_ISDIR(mode):
        return read_task_folders(path)
    if stat.S_ISREG(mode) and path.lower().endswith(".npz"):
        return read_npz(path)
    raise DataError(f"{path} is neither a folder nor an .npz file; give {FORMS}")


def read_npz(path: str | os.PathLike) -> TaskStream:
    """The stream in the ``.npz`` file ``path`` (keys ``x_train``, ``y_train``, ``x_test``,
    ``y_test``, optional ``class_names``; no other keys, no pickled object arrays), named
    by its file name."""
    path = os.fspath(path)
    not_npz = (f"{path}: is not an .npz file (a zip of arrays, as np.savez writes); "
               f"save x_train, y_train, x_test, y_test[, class_names] with np.savez")
    try:
        z = np.load(path, allow_pickle=False)
    except OSError as err:
        raise _unreadable(path, err) from err
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(not_npz) from err
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(not_npz.replace("is not", "is one array (.npy), not"))
    with z:
        missing = [k for k in NPZ_KEYS if k not in z.files]
        extra = sorted(set(z.files) - set(NPZ_KEYS + NPZ_OPTIONAL))
        if missing:
            raise DataError(f"{path}: lacks {', '.join(missing)}; an .npz stream holds "
                            f"{', '.join(NPZ_KEYS + NPZ_OPTIONAL)} (the last optional)")
        if extra:
            raise DataError(f"{path}: has unknown arrays {', '.join(extra)}; an .npz stream "
                            f"holds only {', '.join(NPZ_KEYS + NPZ_OPTIONAL)}")
        arrays = {}
        for key in z.files:
            try:
                arrays[key] = z[key]
            except ValueError as err:  # an object array, which needs pickle
                raise DataError(f"{path}: {key} is an object array (it needs pickle, which "
                                f"is not loaded); save plain arrays: numbers, or strings "
                                f"as np.array(names, dtype=str)") from err
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(f"{path}: cannot read {key} ({err}); the file is truncated "
                                f"or corrupt, save it again") from err
    names = arrays.get("class_names")
    if names is not None and names.ndim != 1:
        raise DataError(f"{path}: class_names must be one name per class (1-D), got shape "
                        f"{list(names.shape)}")
    return TaskStream(*(arrays[k] for k in NPZ_KEYS), class_names=names,
                      name=os.path.basename(path))


def _folders(path: str) -> list[os.DirEntry]:
    """The visible subfolders of ``path``, by name."""
    return sorted((e for e in _scandir(path) if not e.name.startswith(".") and e.is_dir()),
                  key=lambda e: e.name)


def _split_classes(task: str, split: str) -> dict[str, list[str]]:
    """Each class folder of ``task/split`` with the paths of its images, sorted."""
    classes = {}
    for cls in _folders(os.path.join(task, split)):
        images = sorted(e.path for e in _scandir(cls.path) if e.is_file() and _is_image(e.name))
        if not images:
            raise DataError(f"{cls.path}: holds no images (*.png, *.jpg, *.jpeg); add some "
                            "or remove the folder")
        classes[cls.name] = images
    if not classes:
        raise DataError(f"{os.path.join(task, split)}: holds no class folders; give "
                        f"{split}/<class>/*.png (or .jpg) for each class of the task")
    return classes


def read_task_folders(path: str | os.PathLike) -> TaskStream:
    """The stream in the folder ``path`` of task folders
    ``<task>/{train,test}/<class>/*.png|*.jpg|*.jpeg``: tasks by folder name, their classes
    by class folder name (``stream.tasks``); images grey ``[N, H, W]`` when all are grey,
    else RGB ``[N, H, W, 3]``, the conversions in ``stream.notes``."""
    root = os.fspath(path)
    tasks = _folders(root)
    if any(t.name in ("train", "test") for t in tasks):
        raise DataError(f"{root}: holds train/ or test/ itself, the image folder of the "
                        f"paper's datasets, not a stream's tasks; give {FORMS}")
    if not any(os.path.isdir(os.path.join(t.path, s)) for t in tasks for s in ("train", "test")):
        raise DataError(f"{root}: holds no task folders with train/ and test/; give {FORMS}")
    files: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    which: dict[str, list[int]] = {"train": [], "test": []}   # each image's task folder
    task_classes = []
    for task in tasks:
        for split in ("train", "test"):
            if not os.path.isdir(os.path.join(task.path, split)):
                raise DataError(f"{task.path}: lacks {split}/; each task folder needs "
                                "train/<class>/ and test/<class>/ with the same class folders")
        found = {s: _split_classes(task.path, s) for s in ("train", "test")}
        if found["train"].keys() != found["test"].keys():
            only = [f"only in {s}: {', '.join(sorted(found[s].keys() - found[o].keys())) or 'none'}"
                    for s, o in (("train", "test"), ("test", "train"))]
            raise DataError(f"{task.path}: train/ and test/ must hold the same class folders; "
                            f"{'; '.join(only)}")
        task_classes.append(list(found["train"]))
        for s in ("train", "test"):
            files[s] += [(c, p) for c, paths in found[s].items() for p in paths]
            which[s] += [len(task_classes) - 1] * (len(files[s]) - len(which[s]))
    class_names = list(dict.fromkeys(c for t in task_classes for c in t))
    label = {c: i for i, c in enumerate(class_names)}
    decoded, first = {}, []
    for s in ("train", "test"):
        decoded[s] = [_decode(root, p, first) for _, p in files[s]]
    colour = any(not grey for s in decoded for _, grey, _ in decoded[s])
    counts: dict[str, int] = {}
    xs = {}
    for s in ("train", "test"):
        images = []
        for pixels, grey, kind in decoded[s]:
            if colour and grey:
                pixels, kind = np.repeat(pixels[..., None], 3, axis=-1), kind or "grey (L)"
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
            images.append(pixels)
        xs[s] = np.stack(images)
    ys = {s: np.array([label[c] for c, _ in files[s]], np.int64) for s in files}
    stream = TaskStream(xs["train"], ys["train"], xs["test"], ys["test"],
                        class_names=class_names, tasks=task_classes,
                        task_ids=(np.array(which["train"]), np.array(which["test"])),
                        name=os.path.basename(os.path.normpath(root)))
    note = _conversion_note(root, "RGB" if colour else "L", counts, "the stream's")
    stream.notes = (note,) if note else ()
    return stream


def _decode(root: str, path: str, first: list) -> tuple[np.ndarray, bool, str | None]:
    """The image at ``path`` as 8-bit grey ``[H, W]`` or RGB ``[H, W, 3]``, whether it is
    grey, and the kind of conversion it took; its size must be that of ``first[0]`` (the
    first image's path and size, set here by the first image)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise _unreadable(path, err) from err

    def decode(img):
        size = (img.height, img.width)
        if not first:
            first.append((path, size))
        elif size != first[0][1]:
            (h0, w0), (h, w) = first[0][1], size
            raise DataError(f"{path}: is {h}x{w} pixels (height x width) but {first[0][0]} is "
                            f"{h0}x{w0}; a stream's images need one size, resize them")
        if img.mode in ("P", "PA"):  # a palette: grey when every pixel's colour is
            rgb = np.asarray(img.convert("RGB"))
            grey = bool((rgb == rgb[..., :1]).all())
        else:
            grey = img.mode in _GREY_MODES
        pixels, kind = _image_pixels(img, "L" if grey else "RGB", os.path.relpath(path, root),
                                     root)
        return pixels, grey, kind

    return _decode_image(data, os.path.relpath(path, root), root, decode)


def stream_of(data: TaskStream | None, data_dir: str | None) -> TaskStream:
    """The data of a run on your own data: ``data`` (Python), else the file or folder at
    ``data_dir`` (``--data_dir``); ``ConfigError`` where neither is given. ``data`` wins
    where both are: the apps read ``--data_dir`` before TensorFlow loads and pass it on."""
    from bir_keras.config import CUSTOM, ConfigError

    if data is not None:
        return data
    if not data_dir:
        raise ConfigError(f"--experiment={CUSTOM} reads your data: pass --data_dir=FILE.npz or "
                          "a folder of task folders (data= in Python)")
    return load_stream(data_dir)
