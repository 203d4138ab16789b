"""Pre-train the CIFAR conv layers (method.md 4.4) on CIFAR-10.

    python -m apps.pretrain --data_dir=/path/to/cifar10 --epochs=100

The 5 conv layers of ``bir_keras.models.layers.conv_trunk()`` (1024 features) are trained
with a classifier head (the paper's code: FC 2000-2000 + 10 softmax units; ``--head_units``
and ``--head_layers`` change it), Adam (lr 1e-4, betas 0.9/0.999), batch 256, random crop
(zero padding of 4 pixels, crop 32x32) and horizontal flips done in-graph, inputs
normalised per channel with the CIFAR-10 mean and std (x / 255, then (x - mean) / std: the
protocols' ``normalise_pixels``). Only the conv trunk is saved (``trunk.save_weights``), to
``--out``, after every epoch (atomically), next to a JSON record (``conv_trunk.json``:
epochs, test accuracy, seconds, command, and the SHA-256 of the weights it describes).
``bir_keras.experiment.load_trunk(path)`` loads it; apps.train takes it as
``--conv_weights=PATH``.

``--out`` defaults to ``saved_models/pretrained_conv/conv_trunk.weights.h5`` (in the working
directory). The shipped weights in ``saved_models/authors_c3_5x16_bn/`` (the authors' trunk,
what CIFAR runs load by default) and ``saved_models/cifar10_conv/`` (``--conv_weights=ours``)
are never an output. An existing ``--out`` (or its record) is replaced only with
``--overwrite``, and only if apps.pretrain wrote it: the record beside it names this
program and holds the weights' digest; any other file is never replaced.

Exit codes: 0 done, 2 refused input (one ``error:`` line, before the data or TensorFlow
load: also a numeric flag out of its range), 1 out of memory or a diverged run (a loss or
weights that are not finite: one ``error:`` line naming ``--lr``; nothing of that epoch is
written), 130 Ctrl-C (the weights and record hold the last whole epoch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

from absl import flags

from bir_keras import appfiles, interrupts, rundirs
from bir_keras.weightsfile import TRUNKS

FLAGS = flags.FLAGS
# the folders of the shipped pre-trained weights (--conv_weights=authors, the default, and
# --conv_weights=ours; bir_keras.experiment.DEFAULT_CONV_WEIGHTS lies in one): never written
SHIPPED_DIRS = tuple(path.parent for path in TRUNKS.values())
DEFAULT_OUT = os.path.join("saved_models", "pretrained_conv", "conv_trunk.weights.h5")
WRITTEN_BY = "bir_keras apps.pretrain"

flags.DEFINE_string("data_dir", None, "CIFAR-10 data: cifar-10-batches-py/, an image folder or "
                    "its .zip; default: TFDS (downloads where the internet is reachable)")
flags.DEFINE_integer("epochs", 100, "training epochs over CIFAR-10 (default 100, the paper's)")
flags.DEFINE_integer("batch", 256, "batch size (default 256)")
flags.DEFINE_float("lr", 1e-4, "Adam learning rate (default 1e-4)")
flags.DEFINE_integer("seed", 0, "random seed: initialisation, shuffling, augmentation (default 0)")
flags.DEFINE_string("out", DEFAULT_OUT, "where the conv trunk's weights go (must end with "
                    ".weights.h5; default saved_models/pretrained_conv/conv_trunk.weights.h5 "
                    "in the working directory, never the shipped saved_models/authors_c3_5x16_bn/ "
                    "or saved_models/cifar10_conv/ that --conv_weights=authors|ours load); "
                    "the JSON record is written next to it "
                    "as conv_trunk.json; apps.train uses them with --conv_weights=PATH")
flags.DEFINE_bool("overwrite", False, "replace an existing --out (and its record) that "
                  "apps.pretrain wrote; any other file is never replaced (default false)",
                  allow_override=True)
flags.DEFINE_integer("limit", None, "use only the first N training images, taken in a fixed "
                     "shuffled order so that all classes appear (tests, timing)")
flags.DEFINE_integer("test_limit", None, "evaluate on only the first N test images")
flags.DEFINE_integer("head_units", 2000, "units of each hidden FC layer of the head (default 2000)")
flags.DEFINE_integer("head_layers", 2, "hidden FC layers of the head (default 2; 0 = linear head)")
flags.DEFINE_bool("augment", True, "random crop (pad 4) + horizontal flip (default true)")
flags.DEFINE_bool("deterministic", True, "deterministic ops (same seed, same numbers)")

PAD = 4
SIZE = 32


class UsageError(ValueError):
    """Bad flags, refused before any training."""


def record_path(weights: Path) -> Path:
    """The JSON record beside the weights: ``conv_trunk.weights.h5`` -> ``conv_trunk.json``."""
    name = weights.name[:-len(".weights.h5")]
    return weights.with_name(f"{name}.json")


def record_of(weights: Path) -> dict | None:
    """The record beside ``weights`` if apps.pretrain wrote it, else None."""
    try:
        rec = json.loads(record_path(weights).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("written_by") == WRITTEN_BY else None


def weights_ours(path: Path) -> bool:
    """Whether the weights file is one apps.pretrain wrote: its record says so and holds its
    digest (the record is written just before the weights it describes, so the digest of
    the weights before those counts as well)."""
    rec = record_of(path)
    if rec is None:
        return False
    digest = appfiles.sha256(path)
    return digest in (rec.get("weights_sha256"), rec.get("previous_weights_sha256"))


def file_digest(path: Path) -> str | None:
    """The digest of a plain file at ``path``, None where nothing is there."""
    if path.is_file() and not path.is_symlink():
        return appfiles.sha256(path)
    return "(not a file)" if os.path.lexists(path) else None


def record_ours(path: Path) -> bool:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("written_by") == WRITTEN_BY


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that may not be written or replaced (before any work)."""
    try:
        shipped = [d for d in SHIPPED_DIRS if out.resolve().parent == d.resolve()]
    except OSError:
        shipped = []
    if shipped:
        raise UsageError(f"--out={out} is in {shipped[0]}, the shipped pre-trained conv "
                         "weights that CIFAR runs load by name: they are never an output "
                         f"of apps.pretrain (not even with --overwrite); choose another path "
                         f"(the default is {DEFAULT_OUT})")
    appfiles.check_target(out, "--out", "weights")
    rec = record_path(out)
    appfiles.replaceable_file(out, "--out", overwrite, weights_ours, "apps.pretrain")
    try:
        appfiles.replaceable_file(rec, "--out", overwrite, record_ours, "apps.pretrain")
    except rundirs.PathRefused as e:
        raise rundirs.PathRefused(f"{e} (the record that goes beside --out={out})") from None


# the ranges of the numeric flags, checked before the data or TensorFlow load
LIMITS = {"epochs": (1, 100_000), "batch": (1, 1 << 20), "head_units": (1, 1 << 16),
          "head_layers": (0, 100), "limit": (1, 1 << 31), "test_limit": (1, 1 << 31)}
# the learning rate: a float32 (the optimizer's dtype) that is neither 0 nor subnormal there
# (the smallest normal float32), nor infinite
LR_MIN, LR_MAX = 2.0 ** -126, 3.4e38


def check_numbers() -> None:
    """``UsageError`` (one line) for a numeric flag out of its range."""
    for name, (low, high) in LIMITS.items():
        v = getattr(FLAGS, name)
        if v is not None and not low <= v <= high:
            raise UsageError(f"--{name} must be in [{low}, {high}], got {v}")
    lr = FLAGS.lr
    if not (math.isfinite(lr) and LR_MIN <= lr <= LR_MAX):  # also NaN
        raise UsageError(f"--lr must be a finite number in [{LR_MIN:.4g}, {LR_MAX:.4g}] (a "
                         f"float32 that is not 0), got {lr}")
    if not 0 <= FLAGS.seed < 2 ** 32:
        raise UsageError(f"--seed must be in [0, 2^32), got {FLAGS.seed}")


def build_model(num_classes: int, head_units: int, head_layers: int):
    """(full model, its conv trunk): conv_trunk() -> [Dense(head_units, relu)] x layers -> 10."""
    import keras

    from bir_keras.models.layers import conv_trunk, torch_uniform_init

    trunk = conv_trunk()
    inputs = keras.layers.Input((SIZE, SIZE, 3))
    h = trunk(inputs)
    for i in range(head_layers):
        h = keras.layers.Dense(head_units, activation="relu", name=f"head_fc{i + 1}")(h)
    logits = keras.layers.Dense(num_classes, name="head_out")(h)
    model = keras.Model(inputs, logits, name="pretrain_classifier")
    # PyTorch's default initialisation, as the authors' main_pretrain.py (fidelity.md item 5)
    torch_uniform_init(model, FLAGS.seed, salt=9)
    return model, trunk


def main(argv: list[str]) -> int:
    """Parse flags, train, report test accuracy per epoch, save the trunk and the record.

    Exit codes: ``apps.common.run_work``'s (see the module's docstring)."""
    del argv
    from apps.common import TrainingFailed, run_work

    command = "python -m apps.pretrain " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    written: dict = {}  # the last epoch this run wrote

    def interrupted(e: BaseException) -> str:
        out = Path(FLAGS.out)
        done = written.get("epochs")
        return (f"interrupted; {out} and {record_path(out).name} hold epoch {done}" if done
                else "interrupted before the first epoch ended; nothing written")

    return run_work(lambda: _main(command, written),
                    refused=(UsageError, rundirs.PathRefused, FileExistsError),
                    failed=(TrainingFailed,), interrupted=interrupted)


def _main(command: str, written: dict) -> None:
    from apps.common import out_of_memory_names

    out = Path(FLAGS.out)
    if not out.name.endswith(".weights.h5"):
        raise UsageError(f"--out={FLAGS.out} must end with .weights.h5 (Keras weights file)")
    check_numbers()
    check_out(out, FLAGS.overwrite)
    with contextlib.ExitStack() as claims:
        # one writer per path: a second apps.pretrain on these files is refused now
        claims.enter_context(rundirs.claim(out, "--out"))
        claims.enter_context(rundirs.claim(record_path(out), "--out"))
        check_out(out, FLAGS.overwrite)
        from bir_keras.data.sources import DataError, load_dataset

        try:
            data = load_dataset("cifar10", FLAGS.data_dir)
        except DataError as e:
            raise UsageError(str(e)) from e
        with out_of_memory_names("--batch (or --head_units)"), interrupts.deferred():
            train(data, out, command, written)


def diverged(what: str, out: Path, written: dict | None) -> None:
    """Raise ``TrainingFailed``: pre-training diverged; no weights of it are written."""
    from apps.common import TrainingFailed

    done = (written or {}).get("epochs")
    kept = (f"{out} holds epoch {done}, the last whole epoch with finite numbers" if done
            else "no weights were written")
    raise TrainingFailed(f"pre-training diverged: {what}; lower --lr (now {FLAGS.lr:g}) and "
                         f"run again ({kept})")


def train(data, out: Path, command: str, written: dict | None = None) -> None:
    """The training loop (a compiled step on in-memory uint8 batches); ``written`` gets the
    number of the last epoch saved."""
    import keras
    import numpy as np
    import tensorflow as tf

    from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, normalise_pixels

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    x_train, y_train = data.x_train, data.y_train.astype(np.int32)
    x_test, y_test = data.x_test, data.y_test.astype(np.int32)
    # image folders come sorted by class: subsets are drawn in a fixed shuffled order
    if FLAGS.limit:
        keep = np.sort(np.random.RandomState(0).permutation(len(y_train))[:FLAGS.limit])
        x_train, y_train = x_train[keep], y_train[keep]
    if FLAGS.test_limit:
        keep = np.sort(np.random.RandomState(1).permutation(len(y_test))[:FLAGS.test_limit])
        x_test, y_test = x_test[keep], y_test[keep]
    n = len(x_train)
    model, trunk = build_model(data.num_classes, FLAGS.head_units, FLAGS.head_layers)
    from bir_keras.strategies.execution import make_adam

    optimizer = make_adam(FLAGS.lr)  # epsilon 1e-8, as PyTorch (fidelity.md item 7)
    optimizer.build(model.trainable_variables)
    mean, std = CIFAR_MEAN["cifar10"], CIFAR_STD["cifar10"]
    aug_rng = tf.random.Generator.from_seed(FLAGS.seed + 1)
    order_rng = np.random.RandomState(FLAGS.seed)

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
        if FLAGS.augment:
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

    print(f"pre-training the conv trunk on CIFAR-10: {n} training / {len(y_test)} test images, "
          f"{FLAGS.epochs} epochs, batch {FLAGS.batch}, lr {FLAGS.lr}, head "
          f"{[FLAGS.head_units] * FLAGS.head_layers + [data.num_classes]}", flush=True)
    start = time.time()
    history = []
    rec_path = record_path(out)
    # the digest of what is at --out: an earlier output of apps.pretrain that it was allowed
    # to replace (checked before the data loaded), then what each epoch wrote
    known = {"sha": file_digest(out) if weights_ours(out) else None}
    for epoch in range(1, FLAGS.epochs + 1):
        t0 = time.time()
        perm = order_rng.permutation(n)
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(0, n, FLAGS.batch):
            idx = np.sort(perm[s:s + FLAGS.batch])
            loss, c = train_step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
            if not math.isfinite(float(loss)):
                diverged(f"the training loss became {float(loss)} at epoch {epoch}, step "
                         f"{s // FLAGS.batch + 1}", out, written)
            loss_sum += float(loss) * len(idx)
            correct += int(c)
            seen += len(idx)
            interrupts.raise_if_requested()  # Ctrl-C lands here, between steps
        acc = test_accuracy()
        epoch_s = time.time() - t0
        history.append({"epoch": epoch, "train_loss": loss_sum / seen,
                        "train_accuracy": correct / seen, "test_accuracy": acc,
                        "seconds": epoch_s})
        print(f"epoch {epoch}/{FLAGS.epochs}: train loss {loss_sum / seen:.4f}, train accuracy "
              f"{correct / seen:.4f}, test accuracy {acc:.4f} ({epoch_s:.1f}s)", flush=True)
        if not all(np.isfinite(w).all() for w in model.get_weights()):
            diverged(f"the weights became non-finite in epoch {epoch}", out, written)
        # after every epoch: an interrupted run still leaves usable weights and their record

        def write_weights(tmp: str, epoch=epoch, acc=acc) -> None:
            trunk.save_weights(tmp)
            if file_digest(out) != known["sha"]:
                raise rundirs.PathRefused(
                    f"--out={out} changed while apps.pretrain was training (it is not the "
                    "file it wrote or was allowed to replace); nothing was replaced")
            # the record first (with the new weights' digest, and the digest of those still
            # at --out), then the weights go in place
            previous, known["new"] = known["sha"], appfiles.sha256(tmp)
            rec = {"written_by": WRITTEN_BY, "epochs": epoch, "epochs_planned": FLAGS.epochs,
                   "test_accuracy": acc, "train_images": n, "test_images": int(len(y_test)),
                   "seconds": time.time() - start, "command": command,
                   "batch": FLAGS.batch, "lr": FLAGS.lr, "seed": FLAGS.seed,
                   "augment": FLAGS.augment,
                   "head": [FLAGS.head_units] * FLAGS.head_layers + [data.num_classes],
                   "weights": out.name, "weights_sha256": known["new"],
                   "previous_weights_sha256": previous, "finished": epoch == FLAGS.epochs,
                   "history": history}
            text = json.dumps(rec, indent=1) + "\n"
            appfiles.write_file(rec_path, lambda t: Path(t).write_text(text),
                                check=appfiles.replace_check("--out", record_ours,
                                                             "apps.pretrain"))

        appfiles.write_file(out, write_weights,
                            check=appfiles.replace_check("--out", weights_ours, "apps.pretrain"))
        known["sha"] = known["new"]
        if written is not None:
            written["epochs"] = epoch
    print(json.dumps({"test_accuracy": history[-1]["test_accuracy"], "epochs": FLAGS.epochs,
                      "seconds": round(time.time() - start, 1), "weights": str(out),
                      "record": str(rec_path)}), flush=True)


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
