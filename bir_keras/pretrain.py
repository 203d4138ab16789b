"""Pre-training the CIFAR conv layers (method.md 4.4): the library behind ``apps.pretrain``.

    from bir_keras.data.sources import load_dataset
    from bir_keras.pretrain import PretrainConfig, pretrain

    c = PretrainConfig(epochs=100)
    c.check()
    history = pretrain(load_dataset("cifar10", DIR), "conv_trunk.weights.h5", c)

The 5 conv layers of ``bir_keras.models.layers.conv_trunk()`` (1024 features) are trained
with a classifier head (the authors' ``main_pretrain.py``: FC 2000-2000 + 10 softmax units;
``head_units`` and ``head_layers`` change it), Adam (lr 1e-4, betas 0.9/0.999, epsilon
1e-8), batch 256, random crop (zero padding of 4 pixels, crop 32x32) and horizontal flips
done in-graph, inputs normalised per channel with the CIFAR-10 mean and std (x / 255, then
(x - mean) / std: the protocols' ``normalise_pixels``). Only the conv trunk is saved
(``trunk.save_weights``), after every epoch and atomically, next to a JSON record
(``<name>.json``: epochs, test accuracy, seconds, command, and the SHA-256 of the weights it
describes). ``bir_keras.setup.load_trunk(path)`` loads it (apps.train: ``--conv_weights=PATH``).

What may be written: never a file in the shipped ``saved_models/`` folders of
``--conv_weights=authors|ours``; an existing output (or its record) only with ``overwrite``
and only if this module wrote it (its record names the writer and holds the weights'
digest). ``check_out`` says so before any work; the write itself checks again.

Errors: ``ConfigError`` for settings out of range, ``PathRefused`` for an output that may
not be written, ``PretrainDiverged`` when the loss or the weights stop being finite (nothing
of that epoch is written). This module never reads flags; ``apps.pretrain`` maps its flags
onto ``PretrainConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from bir_keras import appfiles, interrupts, rundirs
from bir_keras.config import ConfigError
from bir_keras.weightsfile import TRUNKS

# the folders of the shipped pre-trained weights (--conv_weights=authors, the default, and
# --conv_weights=ours): never written
SHIPPED_DIRS = tuple(path.parent for path in TRUNKS.values())
DEFAULT_OUT = os.path.join("saved_models", "pretrained_conv", "conv_trunk.weights.h5")
WRITTEN_BY = "bir_keras apps.pretrain"   # the records' writer (kept: earlier records say so)
PAD = 4
SIZE = 32

# the ranges of the numeric settings, checked before the data or TensorFlow load
LIMITS = {"epochs": (1, 100_000), "batch": (1, 1 << 20), "head_units": (1, 1 << 16),
          "head_layers": (0, 100), "limit": (1, 1 << 31), "test_limit": (1, 1 << 31)}
# the learning rate: a float32 (the optimizer's dtype) that is neither 0 nor subnormal there
# (the smallest normal float32), nor infinite
LR_MIN, LR_MAX = 2.0 ** -126, 3.4e38


class PretrainDiverged(RuntimeError):
    """The training loss or the weights became non-finite (lower the learning rate)."""


@dataclasses.dataclass
class PretrainConfig:
    """Settings of a pre-training run (the defaults are the paper's, method.md 4.4)."""
    epochs: int = 100
    batch: int = 256
    lr: float = 1e-4
    # initialisation, shuffling, augmentation
    seed: int = 0
    head_units: int = 2000
    head_layers: int = 2
    # random crop (pad 4) + horizontal flip
    augment: bool = True
    deterministic: bool = True
    # only the first N training (test) images, in a fixed shuffled order (tests, timing)
    limit: int | None = None
    test_limit: int | None = None

    def check(self) -> None:
        """``ConfigError`` (one line) for a setting out of its range."""
        for name, (low, high) in LIMITS.items():
            v = getattr(self, name)
            if v is not None and not low <= v <= high:
                raise ConfigError(f"--{name} must be in [{low}, {high}], got {v}")
        if not (math.isfinite(self.lr) and LR_MIN <= self.lr <= LR_MAX):  # also NaN
            raise ConfigError(f"--lr must be a finite number in [{LR_MIN:.4g}, {LR_MAX:.4g}] "
                              f"(a float32 that is not 0), got {self.lr}")
        if not 0 <= self.seed < 2 ** 32:
            raise ConfigError(f"--seed must be in [0, 2^32), got {self.seed}")

    @property
    def head(self) -> list[int]:
        return [self.head_units] * self.head_layers


def record_path(weights: Path) -> Path:
    """The JSON record beside the weights: ``conv_trunk.weights.h5`` -> ``conv_trunk.json``."""
    name = weights.name[:-len(".weights.h5")]
    return weights.with_name(f"{name}.json")


def record_of(weights: Path) -> dict | None:
    """The record beside ``weights`` if this module wrote it, else None."""
    try:
        rec = json.loads(record_path(weights).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("written_by") == WRITTEN_BY else None


def weights_ours(path: Path) -> bool:
    """Whether the weights file is one this module wrote: its record says so and holds its
    digest (the record is written just before the weights it describes, so the digest of
    the weights before those counts as well)."""
    rec = record_of(path)
    if rec is None:
        return False
    digest = appfiles.sha256(path)
    return digest in (rec.get("weights_sha256"), rec.get("previous_weights_sha256"))


def _digest(path: Path) -> str | None:
    """The digest of a plain file at ``path``, None where nothing is there."""
    if path.is_file() and not path.is_symlink():
        return appfiles.sha256(path)
    return "(not a file)" if os.path.lexists(path) else None


def _record_ours(path: Path) -> bool:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("written_by") == WRITTEN_BY


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output that may not be written or replaced (before any work):
    ``ConfigError`` for a name without ``.weights.h5``, ``PathRefused`` otherwise."""
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"--out={out} must end with .weights.h5 (Keras weights file)")
    try:
        shipped = [d for d in SHIPPED_DIRS if out.resolve().parent == d.resolve()]
    except OSError:
        shipped = []
    if shipped:
        raise rundirs.PathRefused(
            f"--out={out} is in {shipped[0]}, the shipped pre-trained conv weights that CIFAR "
            "runs load by name: they are never an output of apps.pretrain (not even with "
            f"--overwrite); choose another path (the default is {DEFAULT_OUT})")
    appfiles.check_target(out, "--out", "weights")
    appfiles.replaceable_file(out, "--out", overwrite, weights_ours, "apps.pretrain")
    try:
        appfiles.replaceable_file(record_path(out), "--out", overwrite, _record_ours,
                                  "apps.pretrain")
    except rundirs.PathRefused as e:
        raise rundirs.PathRefused(f"{e} (the record that goes beside --out={out})") from None


def build_model(num_classes: int, config: PretrainConfig):
    """(full model, its conv trunk): conv_trunk() -> [Dense(head_units, relu)] x layers -> out."""
    import keras

    from bir_keras.models.layers import conv_trunk, torch_uniform_init

    trunk = conv_trunk()
    inputs = keras.layers.Input((SIZE, SIZE, 3))
    h = trunk(inputs)
    for i, units in enumerate(config.head):
        h = keras.layers.Dense(units, activation="relu", name=f"head_fc{i + 1}")(h)
    logits = keras.layers.Dense(num_classes, name="head_out")(h)
    model = keras.Model(inputs, logits, name="pretrain_classifier")
    # PyTorch's default initialisation, as the authors' main_pretrain.py (fidelity.md item 5)
    torch_uniform_init(model, config.seed, salt=9)
    return model, trunk


def _diverged(what: str, out: Path, config: PretrainConfig, epochs_written: int | None):
    kept = (f"{out} holds epoch {epochs_written}, the last whole epoch with finite numbers"
            if epochs_written else "no weights were written")
    return PretrainDiverged(f"pre-training diverged: {what}; lower --lr (now {config.lr:g}) "
                            f"and run again ({kept})")


def pretrain(data, out: str | os.PathLike, config: PretrainConfig, *, overwrite: bool = False,
             command: str = "", on_epoch: Callable[[dict], None] | None = None,
             report: Callable[[str], None] | None = None) -> list[dict]:
    """Pre-train the conv trunk on ``data`` (a ``bir_keras.data.sources.Dataset`` of
    32x32x3 uint8 images, CIFAR-10's) and write its weights to ``out`` after every epoch;
    return the history (one dict per epoch: train loss and accuracy, test accuracy,
    seconds). ``on_epoch(entry)`` is called after each epoch is written (its ``epoch`` is
    then safe on disk); ``report(line)`` gets the line that describes the run before it
    trains. ``command`` goes into the record. Ctrl-C (with
    ``bir_keras.interrupts.deferred``) stops between steps; the files hold the last whole
    epoch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, normalise_pixels
    from bir_keras.strategies.execution import make_adam

    out = Path(out)
    config.check()
    check_out(out, overwrite)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = data.x_train, data.y_train.astype(np.int32)
    x_test, y_test = data.x_test, data.y_test.astype(np.int32)
    # image folders come sorted by class: subsets are drawn in a fixed shuffled order
    if config.limit:
        keep = np.sort(np.random.RandomState(0).permutation(len(y_train))[:config.limit])
        x_train, y_train = x_train[keep], y_train[keep]
    if config.test_limit:
        keep = np.sort(np.random.RandomState(1).permutation(len(y_test))[:config.test_limit])
        x_test, y_test = x_test[keep], y_test[keep]
    n = len(x_train)
    model, trunk = build_model(data.num_classes, config)
    optimizer = make_adam(config.lr)  # epsilon 1e-8, as PyTorch (fidelity.md item 7)
    optimizer.build(model.trainable_variables)
    mean, std = CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]
    aug_rng = tf.random.Generator.from_seed(config.seed + 1)
    order_rng = np.random.RandomState(config.seed)

    def augment(x):
        """Per sample: zero-pad by 4 pixels (in pixel space, before normalising, as
        torchvision's RandomCrop(32, padding=4)), crop 32x32 at a random offset, flip."""
        b = tf.shape(x)[0]
        padded = tf.pad(x, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
        offs = aug_rng.uniform([b, 2], 0, 2 * PAD + 1, dtype=tf.int32)
        rows = offs[:, :1] + tf.range(SIZE)[None]
        cols = offs[:, 1:] + tf.range(SIZE)[None]
        crop = tf.gather(padded, rows, axis=1, batch_dims=1)
        crop = tf.gather(crop, cols, axis=2, batch_dims=1)
        flip = aug_rng.uniform([b]) < 0.5
        return tf.where(flip[:, None, None, None], tf.reverse(crop, [2]), crop)

    sig = [tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8), tf.TensorSpec([None], tf.int32)]

    @tf.function(input_signature=sig)
    def train_step(xb, yb):
        x = tf.cast(xb, tf.float32)
        if config.augment:
            x = augment(x)
        x = normalise_pixels(x, mean, std)  # after augmenting: the padding stays 0 pixels
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb),
                                        tf.int32))
        return loss, correct

    @tf.function(input_signature=sig)
    def eval_step(xb, yb):
        logits = model(normalise_pixels(tf.cast(xb, tf.float32), mean, std), training=False)
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb),
                                     tf.int32))

    def test_accuracy() -> float:
        correct = 0
        for s in range(0, len(y_test), 1000):
            correct += int(eval_step(tf.constant(x_test[s:s + 1000]),
                                     tf.constant(y_test[s:s + 1000])))
        return correct / len(y_test)

    if report is not None:
        report(f"pre-training the conv trunk on CIFAR-10: {n} training / {len(y_test)} test "
               f"images, {config.epochs} epochs, batch {config.batch}, lr {config.lr}, head "
               f"{config.head + [data.num_classes]}")
    start = time.time()
    history: list[dict] = []
    rec_path = record_path(out)
    # the digest of what is at ``out``: an earlier output of this module that it was allowed
    # to replace (checked before the data loaded), then what each epoch wrote
    known = {"sha": _digest(out) if weights_ours(out) else None}
    written = None
    for epoch in range(1, config.epochs + 1):
        t0 = time.time()
        perm = order_rng.permutation(n)
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(0, n, config.batch):
            idx = np.sort(perm[s:s + config.batch])
            loss, c = train_step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
            if not math.isfinite(float(loss)):
                raise _diverged(f"the training loss became {float(loss)} at epoch {epoch}, "
                                f"step {s // config.batch + 1}", out, config, written)
            loss_sum += float(loss) * len(idx)
            correct += int(c)
            seen += len(idx)
            interrupts.raise_if_requested()  # Ctrl-C lands here, between steps
        acc = test_accuracy()
        entry = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                 "test_accuracy": acc, "seconds": time.time() - t0}
        history.append(entry)
        if not all(np.isfinite(w).all() for w in model.get_weights()):
            raise _diverged(f"the weights became non-finite in epoch {epoch}", out, config,
                            written)
        # after every epoch: an interrupted run still leaves usable weights and their record

        def write_weights(tmp: str, epoch=epoch, acc=acc) -> None:
            trunk.save_weights(tmp)
            if _digest(out) != known["sha"]:
                raise rundirs.PathRefused(
                    f"--out={out} changed while apps.pretrain was training (it is not the "
                    "file it wrote or was allowed to replace); nothing was replaced")
            # the record first (with the new weights' digest, and the digest of those still
            # at ``out``), then the weights go in place
            previous, known["new"] = known["sha"], appfiles.sha256(tmp)
            rec = {"written_by": WRITTEN_BY, "epochs": epoch, "epochs_planned": config.epochs,
                   "test_accuracy": acc, "train_images": n, "test_images": int(len(y_test)),
                   "seconds": time.time() - start, "command": command,
                   "batch": config.batch, "lr": config.lr, "seed": config.seed,
                   "augment": config.augment, "head": config.head + [data.num_classes],
                   "weights": out.name, "weights_sha256": known["new"],
                   "previous_weights_sha256": previous, "finished": epoch == config.epochs,
                   "history": history}
            text = json.dumps(rec, indent=1) + "\n"
            appfiles.write_file(rec_path, lambda t: Path(t).write_text(text),
                                check=appfiles.replace_check("--out", _record_ours,
                                                             "apps.pretrain"))

        appfiles.write_file(out, write_weights,
                            check=appfiles.replace_check("--out", weights_ours, "apps.pretrain"))
        known["sha"], written = known["new"], epoch
        if on_epoch is not None:
            on_epoch(entry)
    return history
