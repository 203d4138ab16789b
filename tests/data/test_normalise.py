"""One input normalisation (``protocols.normalise_pixels``) for numpy and TensorFlow, bit for
bit the formulas it replaced; the decoded-image cache is written through ``fileio``."""

import os
from pathlib import Path

import numpy as np
import pytest

from bir_keras.data import sources
from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, make_protocol, normalise_pixels
from bir_keras.data.sources import Dataset, load_dataset
from tests.conftest import make_blobs


def _pixels(shape=(50, 32, 32, 3)):
    return np.random.RandomState(0).randint(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("name", [None, "cifar10", "cifar100"])
def test_numpy_and_tensorflow_bit_identical_to_the_old_formulas(name):
    import tensorflow as tf

    mean = CIFAR_MEAN[name] if name else None
    std = CIFAR_STD[name] if name else None
    x = _pixels()
    # what Protocol.preprocess_np, Trainer.preprocess and apps.pretrain wrote before
    old_np = x.astype(np.float32) / 255.0
    old_tf = tf.cast(tf.constant(x), tf.float32) / 255.0
    if mean is not None:
        old_np = (old_np - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        old_tf = (old_tf - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    new_np = normalise_pixels(x.astype(np.float32), mean, std)
    new_tf = normalise_pixels(tf.cast(tf.constant(x), tf.float32), mean, std)
    assert new_np.dtype == np.float32 and new_tf.dtype == tf.float32
    np.testing.assert_array_equal(new_np.view(np.uint32), old_np.view(np.uint32))
    np.testing.assert_array_equal(new_tf.numpy().view(np.uint32), old_tf.numpy().view(np.uint32))

    # in a graph (Grappler may rewrite the division, as it did for the old formula), with
    # and without XLA
    def old_graph(v):
        v = tf.cast(v, tf.float32) / 255.0
        if mean is not None:
            v = (v - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
        return v

    def new_graph(v):
        return normalise_pixels(tf.cast(v, tf.float32), mean, std)

    for jit in (False, True):
        got = tf.function(new_graph, jit_compile=jit)(tf.constant(x)).numpy()
        want = tf.function(old_graph, jit_compile=jit)(tf.constant(x)).numpy()
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if mean is not None:   # apps.pretrain's train step: tf constants made once, outside
        m, s = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
        old_pretrain = (tf.cast(tf.constant(x), tf.float32) / 255.0 - m) / s
        np.testing.assert_array_equal(new_tf.numpy().view(np.uint32),
                                      old_pretrain.numpy().view(np.uint32))


def test_protocol_preprocess_in_graph_equals_numpy_twin():
    import tensorflow as tf

    ds = make_blobs(100, 400, 200, shape=(32, 32, 3))
    ds = Dataset("cifar100", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)
    p = make_protocol("split_cifar100", "class", dataset=ds)
    x = p.task(0).x_train[:20]
    np.testing.assert_array_equal(p.preprocess(tf.constant(x)).numpy(), p.preprocess_np(x))
    feats = np.random.RandomState(1).randn(4, 8).astype(np.float32)
    np.testing.assert_array_equal(p.preprocess(tf.constant(feats)).numpy(), feats)


def test_cache_written_atomically_with_usual_permissions(image_folder_dir):
    load_dataset("cifar10", str(image_folder_dir))
    folder = Path(sources.cache_dir())
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 1 and files[0].startswith("cifar10-") and files[0].endswith(".npz")
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / files[0]).stat().st_mode & 0o777 == 0o666 & ~umask
    with np.load(folder / files[0]) as npz:
        assert npz["x_train"].shape[1:] == (32, 32, 3)


def test_unwritable_cache_folder_is_not_fatal(image_folder_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("BIR_KERAS_CACHE_DIR", str(blocker / "cache"))   # parent is a file
    ds = load_dataset("cifar10", str(image_folder_dir))
    assert ds.x_train.shape[1:] == (32, 32, 3)
    assert blocker.is_file() and blocker.read_text() == ""


def test_failed_cache_write_leaves_no_temp_file(image_folder_dir, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sources.np, "savez", disk_full)
    ds = load_dataset("cifar10", str(image_folder_dir))
    assert ds.x_train.shape[1:] == (32, 32, 3)
    assert list(Path(sources.cache_dir()).iterdir()) == []
