"""Pre-train the CIFAR conv layers (method.md 4.4) on CIFAR-10.

    python -m apps.pretrain --data_dir=/path/to/cifar10 --epochs=100

The 5 conv layers of ``bir_keras.models.layers.conv_trunk()`` (1024 features) are trained
with a classifier head (the paper's code: FC 2000-2000 + 10 softmax units; ``--head_units``
and ``--head_layers`` change it), Adam (lr 1e-4, betas 0.9/0.999), batch 256, random crop
(zero padding of 4 pixels, crop 32x32) and horizontal flips done in-graph, inputs
normalised per channel with the CIFAR-10 mean and std (x / 255, then (x - mean) / std: the
protocols' ``normalise_pixels``). Only the conv trunk is saved (``trunk.save_weights``), to
``--out``, after every epoch (atomically), next to a JSON record (``conv_trunk.json``:
epochs, test accuracy, seconds, command). ``bir_keras.experiment.load_trunk(path)`` loads it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from absl import flags

from bir_keras import interrupts
from bir_keras.fileio import atomic_write, atomic_write_text

FLAGS = flags.FLAGS
DEFAULT_OUT = str(Path(__file__).resolve().parent.parent / "saved_models" / "cifar10_conv"
                  / "conv_trunk.weights.h5")

flags.DEFINE_string("data_dir", None, "CIFAR-10 data: cifar-10-batches-py/, an image folder or "
                    "its .zip; default: TFDS (downloads where the internet is reachable)")
flags.DEFINE_integer("epochs", 100, "training epochs over CIFAR-10 (default 100, the paper's)")
flags.DEFINE_integer("batch", 256, "batch size (default 256)")
flags.DEFINE_float("lr", 1e-4, "Adam learning rate (default 1e-4)")
flags.DEFINE_integer("seed", 0, "random seed: initialisation, shuffling, augmentation (default 0)")
flags.DEFINE_string("out", DEFAULT_OUT, "where the conv trunk's weights go (must end with "
                    ".weights.h5); the JSON record is written next to it as conv_trunk.json")
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
    """Parse flags, train, report test accuracy per epoch, save the trunk and the record."""
    del argv
    command = "python -m apps.pretrain " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        out = Path(FLAGS.out)
        if not out.name.endswith(".weights.h5"):
            raise UsageError(f"--out={FLAGS.out} must end with .weights.h5 (Keras weights file)")
        for name in ("epochs", "batch"):
            if getattr(FLAGS, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(FLAGS, name)}")
        if not FLAGS.lr > 0 or FLAGS.lr == float("inf"):  # also NaN
            raise UsageError(f"--lr must be a finite number > 0, got {FLAGS.lr}")
        if not 0 <= FLAGS.seed < 2 ** 32:
            raise UsageError(f"--seed must be in [0, 2^32), got {FLAGS.seed}")
        if out.is_dir() or any(p.is_file() for p in out.parents):
            raise UsageError(f"--out={FLAGS.out} is a directory, or a folder on its path is a "
                             "file")
        if FLAGS.head_layers < 0 or FLAGS.head_units < 1:
            raise UsageError("--head_layers must be >= 0 and --head_units >= 1")
        for name in ("limit", "test_limit"):
            v = getattr(FLAGS, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name} must be at least 1, got {v}")
        from bir_keras.data.sources import DataError, load_dataset

        try:
            data = load_dataset("cifar10", FLAGS.data_dir)
        except DataError as e:
            raise UsageError(str(e)) from e
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with interrupts.deferred():
            train(data, out, command)
    except BaseException as e:
        from bir_keras.experiment import caused_by_interrupt

        if not caused_by_interrupt(e):
            raise
        rec = record_path(out)
        old = json.loads(rec.read_text()) if rec.exists() else {}
        done = old.get("epochs") if old.get("command") == command else None
        print(f"interrupted; {out} and {rec.name} hold epoch {done}" if done
              else "interrupted before the first epoch ended; nothing written", file=sys.stderr)
        return 130
    return 0


def train(data, out: Path, command: str) -> None:
    """The training loop (a compiled step on in-memory uint8 batches)."""
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
    from bir_keras.strategies.base import make_adam

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
    for epoch in range(1, FLAGS.epochs + 1):
        t0 = time.time()
        perm = order_rng.permutation(n)
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(0, n, FLAGS.batch):
            idx = np.sort(perm[s:s + FLAGS.batch])
            loss, c = train_step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
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
        # after every epoch: an interrupted run still leaves usable weights and their record
        atomic_write(out, trunk.save_weights)
        rec = {"epochs": epoch, "epochs_planned": FLAGS.epochs, "test_accuracy": acc,
               "train_images": n, "test_images": int(len(y_test)),
               "seconds": time.time() - start, "command": command,
               "batch": FLAGS.batch, "lr": FLAGS.lr, "seed": FLAGS.seed,
               "augment": FLAGS.augment,
               "head": [FLAGS.head_units] * FLAGS.head_layers + [data.num_classes],
               "weights": out.name, "finished": epoch == FLAGS.epochs, "history": history}
        text = json.dumps(rec, indent=1) + "\n"
        atomic_write_text(rec_path, text)
    print(json.dumps({"test_accuracy": history[-1]["test_accuracy"], "epochs": FLAGS.epochs,
                      "seconds": round(time.time() - start, 1), "weights": str(out),
                      "record": str(rec_path)}), flush=True)


if __name__ == "__main__":
    from apps.common import run_app

    run_app(main)
