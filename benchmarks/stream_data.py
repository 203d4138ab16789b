"""Real data as your own data: write the README's two stream examples from the offline files.

    python -m benchmarks.stream_data --fashion_mnist=/usr/share/datasets/fashion-mnist \
        --folder=data/fashion_tasks
    python -m benchmarks.stream_data --cifar10=../shared/data/cifar10-jpg.zip \
        --features=data/cifar10_features.npz

``--folder``: Fashion-MNIST (its four IDX files) as a folder of task folders,
``<folder>/task<i>/{train,test}/<class name>/<n>.png``, two classes per task in label
order: what a user with images sorted into folders has. ``--features``: the 1024 features
of the shipped pre-trained conv trunk ``ours`` (``saved_models/cifar10_conv``; the measured
runs in docs/data.md had it with Keras' "same" padding) for every image of
the CIFAR-10 zip, as an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and
``class_names``: what a user with an embedding from their own backbone has. Neither path
may exist (nothing is replaced); each is written under a temporary name, then renamed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bir_keras.data.sources import DataError, load_dataset


def write_folder(source: str, folder: Path) -> None:
    """Fashion-MNIST at ``source`` as task folders in ``folder``."""
    from PIL import Image

    ds = load_dataset("fashion_mnist", source)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for task in range(ds.num_classes // 2):
            for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
                for c in (2 * task, 2 * task + 1):
                    name = "".join(ch if ch.isalnum() else "_" for ch in ds.class_names[c])
                    d = tmp / f"task{task + 1}" / split / name
                    d.mkdir(parents=True)
                    for i in np.flatnonzero(y == c):
                        Image.fromarray(x[i, ..., 0]).save(d / f"{i:05d}.png")
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_features(source: str, out: Path) -> None:
    """CIFAR-10 at ``source`` through the shipped conv trunk, as an ``.npz`` at ``out``."""
    from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, normalise_pixels
    from bir_keras.setup import load_trunk

    ds = load_dataset("cifar10", source)
    trunk = load_trunk("ours")

    def features(x: np.ndarray) -> np.ndarray:
        return np.concatenate([trunk(normalise_pixels(x[s:s + 1000].astype(np.float32),
                                                      CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]),
                                     training=False).numpy() for s in range(0, len(x), 1000)])

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".npz", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=features(ds.x_train), y_train=ds.y_train.astype(np.int64),
                     x_test=features(ds.x_test), y_test=ds.y_test.astype(np.int64),
                     class_names=np.array(ds.class_names))
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.stream_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fashion_mnist", help="folder of Fashion-MNIST's four IDX files")
    p.add_argument("--folder", help="the task folders to write (must not exist)")
    p.add_argument("--cifar10", help="CIFAR-10: its zip, image folder or pickles")
    p.add_argument("--features", help="the .npz to write (must not exist)")
    a = p.parse_args(argv)
    jobs = [(a.fashion_mnist, a.folder, write_folder, "--fashion_mnist", "--folder"),
            (a.cifar10, a.features, write_features, "--cifar10", "--features")]
    if not any(src or dst for src, dst, *_ in jobs):
        p.error("give --fashion_mnist with --folder, or --cifar10 with --features")
    for src, dst, _, sflag, dflag in jobs:
        if bool(src) != bool(dst):
            p.error(f"{sflag} and {dflag} go together")
        if dst and os.path.lexists(dst):
            p.error(f"{dflag}={dst} exists: choose a new path (nothing is replaced)")
        if dst and not Path(dst).resolve().parent.is_dir():
            p.error(f"{dflag}={dst}: its folder does not exist")
    try:
        for src, dst, write, *_ in jobs:
            if src:
                write(src, Path(dst))
                print(f"wrote {dst}", flush=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
