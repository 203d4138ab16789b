"""A run's products: the SavedModel (``classify`` and ``sample`` signatures, loadable with
TensorFlow alone), the training checkpoint used by ``--resume_from``, and ``run.json``.

Everything is written atomically: into a temporary sibling directory, then renamed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bir_keras import rundirs
from bir_keras.data.streams import STREAM_FILE, save_learned
from bir_keras.fileio import atomic_dir, atomic_write_json
from bir_keras.strategies.base import Trainer
from bir_keras.strategies.records import VariableList

SAVED_MODEL = "saved_model"
CHECKPOINT = "checkpoint"
RUN_JSON = "run.json"
TASK_PROGRESS = "task_progress"
PROGRESS_JSON = "progress.json"


def checkpoint_for(trainer: Trainer) -> tf.train.Checkpoint:
    """Every piece of training state (``Trainer.checkpoint_parts``): weights, optimiser
    slots, frozen copies, regulariser state (Fisher, Omega, anchors), a buffer's memory,
    the random generator and the number of tasks learned."""
    return tf.train.Checkpoint(**trainer.checkpoint_parts())


class _Ref:
    """Holds a Keras model out of the SavedModel's object graph (so Keras adds no default
    serving function, which an XdG classifier without task ids could not trace); the
    variables it uses are tracked explicitly instead."""

    def __init__(self, obj):
        self.obj = obj


class RunModule(tf.Module):
    """What the SavedModel serves: ``classify`` and, for generative replay, ``sample``.

    Inputs are pixels in [0, 1] in the protocol's layout (flattened for FC protocols,
    32x32x3 for CIFAR); normalisation and, with internal replay, the frozen conv trunk are
    applied inside. A batch holding a finite value outside [0, 1] (images of 0..255, or
    already normalised) is refused with ``InvalidArgumentError``; a row holding NaN or inf
    gets no prediction (``_predict``). ``sample`` refuses, with ``InvalidArgumentError``,
    class ids outside those of the tasks learned.

    A run on your own data (``data.streams``) takes inputs shaped as its samples: images
    ``[H, W(, C)]`` as pixels in [0, 1], or raw feature vectors, standardised inside with
    the training statistics; ``sample`` gives them back in that shape and scale. The
    export keeps the learned tasks' test sets and the statistics in ``stream.npz``."""

    def __init__(self, trainer: Trainer, pixels, trunk=None):
        super().__init__()
        p = trainer.protocol
        self._trainer = trainer
        self._pixels = pixels
        nets = trainer.networks()
        self._model = _Ref(nets["model"])
        self.model_variables = list(nets["model"].variables)
        self._trunk = _Ref(trunk)
        self.trunk_variables = list(trunk.variables) if trunk is not None else []
        # a stream's inputs come as the user's samples are shaped (images [H, W(, C)] or
        # features [D]); the paper's protocols' as the protocol stores them
        self._stream = p.stream
        shape = p.stream.sample_shape if p.stream is not None else pixels.input_shape
        spec = tf.TensorSpec([None, *shape], tf.float32, name="x")
        self.classify = tf.function(self._classify, autograph=False, input_signature=[spec])
        self.classify_task = tf.function(self._classify_task, autograph=False, input_signature=[
            spec, tf.TensorSpec([None], tf.int32, name="task_ids")])
        self.mode_labels = tf.constant(p.mode_to_label(np.arange(p.num_pairs)), tf.int32)
        # The map to the dataset: mode m (task m // cpt, its class m % cpt) is the dataset's
        # class mode_dataset_labels[m], named mode_class_names[m]; output unit u is mode u in
        # Task-IL and Class-IL, mode task * cpt + u in Domain-IL.
        labels = mode_dataset_labels(p)
        self.mode_dataset_labels = tf.constant(labels, tf.int32)
        self.mode_class_names = tf.constant([str(p.class_names[c]) if c >= 0 else ""
                                             for c in labels])
        self.dataset_class_names = tf.constant([str(n) for n in p.class_names])
        self.scenario = tf.constant(p.scenario)
        self.classes_per_task = tf.constant(p.classes_per_task, tf.int32)
        learned = max(1, trainer.tasks_learned)
        self.tasks_learned = tf.constant(learned, tf.int32)
        # units a prediction may take: per task (classify_task) and for any learned task
        table = p.active_table(learned - 1)
        self._active = tf.constant(table)
        self._active_any = tf.constant(np.max(table[:learned], axis=0))
        self.labels = tf.function(self._labels, autograph=False, input_signature=[])
        self.sample = None
        if trainer.can_sample:
            if "generator" in nets:
                self.generator_variables = list(nets["generator"].variables)
            self.sample = tf.function(self._sample, autograph=False, input_signature=[
                tf.TensorSpec([None], tf.int32, name="class_ids")])
        self.classify_features = None
        if p.features:
            self.classify_features = tf.function(
                self._classify_features, autograph=False,
                input_signature=[tf.TensorSpec([None, *p.input_shape], tf.float32, name="h")])

    def _inputs(self, x):
        if self._stream is not None:
            x = tf.reshape(x, [tf.shape(x)[0], -1])
            if self._stream.feature_mean is not None:
                # features standardised as in training (``streams.standardise``)
                return (x - tf.constant(self._stream.feature_mean)) / tf.constant(
                    self._stream.feature_std)
        x = self._check_pixels(x)
        if self._pixels.mean is not None:
            x = (x - tf.constant(self._pixels.mean)) / tf.constant(self._pixels.std)
        if self._trunk.obj is not None:
            x = self._trunk.obj(x, training=False)
        return x

    @staticmethod
    def _check_pixels(x):
        """``x`` itself, once every finite value in it is known to lie in [0, 1]; else an
        ``InvalidArgumentError`` naming the range and the values found. NaN and inf pass
        here: such a row gets no prediction (``_predict``)."""
        values = tf.where(tf.math.is_finite(x), x, tf.constant(0.5, x.dtype))
        low, high = tf.reduce_min(values), tf.reduce_max(values)   # +inf, -inf if empty
        message = tf.strings.format(
            "x must be pixels in [0, 1] (divide 0..255 images by 255; do not normalise "
            "them: the model does); this batch holds values from {} to {}", [low, high])
        check = tf.debugging.Assert((low >= 0.0) & (high <= 1.0), [message])
        with tf.control_dependencies([check]):
            return tf.identity(x)

    def _check_class_ids(self, class_ids):
        """``class_ids`` itself, once each is a class id of a task learned (0 to
        tasks_learned * classes_per_task - 1); else an ``InvalidArgumentError`` naming the
        bad ids (each once) and the ids learned with their dataset labels."""
        n = self.tasks_learned * self.classes_per_task
        bad, _ = tf.unique(tf.boolean_mask(class_ids, (class_ids < 0) | (class_ids >= n)))
        message = tf.strings.format(
            "class_ids {} not learned: this model has learned {} task(s), class ids 0 to {} "
            "(ids in the order the classes were learned, not dataset labels: id m is "
            "dataset label mode_dataset_labels[m], for ids 0 to {}: {})",
            [bad, self.tasks_learned, n - 1, n - 1, self.mode_dataset_labels[:n]],
            summarize=20)
        check = tf.debugging.Assert(tf.size(bad) == 0, [message])
        with tf.control_dependencies([check]):
            return tf.identity(class_ids)

    def _check_task_ids(self, task_ids):
        """``task_ids`` itself, once each is a task learned (0 to tasks_learned - 1); else an
        ``InvalidArgumentError`` naming the bad ids (each once)."""
        bad, _ = tf.unique(tf.boolean_mask(
            task_ids, (task_ids < 0) | (task_ids >= self.tasks_learned)))
        message = tf.strings.format(
            "task_ids {} not learned: this model has learned {} task(s), task ids 0 to {}",
            [bad, self.tasks_learned, self.tasks_learned - 1], summarize=20)
        check = tf.debugging.Assert(tf.size(bad) == 0, [message])
        with tf.control_dependencies([check]):
            return tf.identity(task_ids)

    def _labels(self):
        """The map from the model's ids to the dataset's labels and class names."""
        return {"mode_dataset_labels": self.mode_dataset_labels,
                "mode_class_names": self.mode_class_names,
                "dataset_class_names": self.dataset_class_names,
                "scenario": self.scenario, "classes_per_task": self.classes_per_task,
                "tasks_learned": self.tasks_learned}

    def _predict(self, logits, task_ids, active, x):
        """Logits plus the prediction among the units ``active`` [batch, units], as the
        output unit, the dataset label and the class name. An input with a non-finite
        value (NaN, inf) gets NaN logits, unit and label -1 and an empty class name: no
        prediction, rather than a confident one made of NaN."""
        unit = tf.argmax(tf.where(active > 0, logits, tf.constant(-np.inf, logits.dtype)), -1,
                         output_type=tf.int32)
        mode = unit if self._trainer.protocol.scenario != "domain" \
            else task_ids * self._trainer.protocol.classes_per_task + unit
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        ok = tf.reduce_all(tf.math.is_finite(flat), axis=-1) & tf.reduce_all(
            tf.math.is_finite(logits), axis=-1)
        none = tf.fill(tf.shape(unit), -1)
        return {"logits": tf.where(ok[:, None], logits, tf.constant(np.nan, logits.dtype)),
                "unit": tf.where(ok, unit, none),
                "label": tf.where(ok, tf.gather(self.mode_dataset_labels, mode), none),
                "class_name": tf.where(ok, tf.gather(self.mode_class_names, mode), "")}

    def _classify(self, x):
        """Logits over all units, and the prediction among the classes of every task
        learned, as a dataset label and class name (Domain-IL: read as task 1's classes).
        ``x``: pixels in [0, 1] (a finite value outside is an ``InvalidArgumentError``; a
        row with NaN or inf gets unit and label -1)."""
        task_ids = tf.zeros(tf.shape(x)[:1], tf.int32)
        logits = self._model.obj.classify(self._inputs(x), task_ids)
        return self._predict(logits, task_ids, tf.ones_like(logits) * self._active_any, x)

    def _classify_task(self, x, task_ids):
        """Logits with the task identity of each input (needed by XdG's masks), and the
        prediction among the units of that task (Task-IL) or of every learned task. ``x``
        as for ``classify``; a task id outside 0 .. tasks_learned - 1 (a task not learned,
        whose units would answer with untrained weights) is an ``InvalidArgumentError``
        naming it."""
        task_ids = self._check_task_ids(task_ids)
        logits = self._model.obj.classify(self._inputs(x), task_ids)
        return self._predict(logits, task_ids, tf.gather(self._active, task_ids), x)

    def _classify_features(self, h):
        """Logits for hidden features (what internal replay generates)."""
        task_ids = tf.zeros(tf.shape(h)[:1], tf.int32)
        logits = self._model.obj.classify(h, task_ids)
        return self._predict(logits, task_ids, tf.ones_like(logits) * self._active_any, h)

    def _sample(self, class_ids):
        """One sample per requested class id: the output label in Task-IL and Class-IL, the
        (task, class) pair ``task * classes_per_task + class`` in Domain-IL, where the
        generator's mode is the class (shared by the tasks) and a per-task gate, if any,
        the task's. Ids follow the order in which the classes were learned, not the
        dataset's labels (``dataset_labels`` in the result, and ``labels()``, give those);
        an id outside 0 .. tasks_learned * classes_per_task - 1 (a class not learned) is
        an ``InvalidArgumentError`` naming it and the ids learned."""
        p, tr = self._trainer.protocol, self._trainer
        cpt = p.classes_per_task
        class_ids = self._check_class_ids(class_ids)
        modes = class_ids % cpt if p.scenario == "domain" else class_ids
        eps = tf.random.normal([tf.shape(class_ids)[0], tr.config.z_dim])
        x = tr.sample(modes, class_ids // cpt, eps)
        if self._stream is not None:
            # as the user's samples come: features in their own scale, images in their shape
            if self._stream.feature_mean is not None:
                x = x * tf.constant(self._stream.feature_std) + tf.constant(
                    self._stream.feature_mean)
            else:
                x = tf.clip_by_value(x, 0.0, 1.0)
            x = tf.reshape(x, [tf.shape(x)[0], *self._stream.sample_shape])
        elif not self._trainer.protocol.features:
            if self._pixels.mean is not None:
                x = x * tf.constant(self._pixels.std) + tf.constant(self._pixels.mean)
            x = tf.clip_by_value(x, 0.0, 1.0)
        return {"x": x, "labels": tf.gather(self.mode_labels, class_ids),
                "dataset_labels": tf.gather(self.mode_dataset_labels, class_ids),
                "class_names": tf.gather(self.mode_class_names, class_ids)}


def mode_dataset_labels(protocol) -> list[int]:
    """The dataset label of each (task, class) pair ``t * classes_per_task + k``:
    ``class_order[pair]`` for split protocols (the order the classes are learned in), the
    digit ``k`` for permuted MNIST (every task has all ten)."""
    order = [int(c) for c in protocol.class_order]
    n, cpt = protocol.num_pairs, protocol.classes_per_task
    if len(order) >= n:
        return order[:n]
    if protocol.stream is not None:
        # your own data: the classes of tasks not yet learned are not known (-1, no name)
        return order + [-1] * (n - len(order))
    return [order[m % cpt] for m in range(n)]


def export_run(trainer: Trainer, export_dir: str | os.PathLike, record: dict,
               pixels=None, trunk=None) -> Path:
    """Write SavedModel, checkpoint and run.json into ``export_dir`` (atomically)."""

    def write(tmp: Path) -> None:
        module = RunModule(trainer, pixels or trainer.protocol, trunk)
        sigs = {"classify": module.classify, "classify_task": module.classify_task,
                "labels": module.labels}
        if module.sample is not None:
            sigs["sample"] = module.sample
        if module.classify_features is not None:
            sigs["classify_features"] = module.classify_features
        tf.saved_model.save(module, str(tmp / SAVED_MODEL), signatures=sigs)
        checkpoint_for(trainer).write(str(tmp / CHECKPOINT / "ckpt"))
        if trainer.protocol.stream is not None:
            # the learned tasks' test sets and the input statistics, to learn more later
            save_learned(trainer.protocol, trainer.tasks_learned, tmp / STREAM_FILE)
        atomic_write_json(tmp / RUN_JSON, record)
        _keep_quality_scores(Path(export_dir), tmp, trainer.verbose)
        rundirs.write_marker(tmp, rundirs.EXPORT)

    return atomic_dir(export_dir, write, overwrite=True,
                      check=rundirs.replace_check(rundirs.EXPORT, "--export_dir", "run's export"))


QUALITY = "quality.json"


def _keep_quality_scores(old: Path, new: Path, verbose: bool) -> None:
    """Carry ``apps.evaluate_generator``'s scores from the export being replaced into the
    new one: its ``quality.json`` (of the model after the tasks the old export had learned)
    as ``quality-after-task<K>.json``, and those kept before; they describe an earlier
    model, so the new export has no ``quality.json`` until it is scored again."""
    try:
        learned = int(json.loads((old / RUN_JSON).read_text())["tasks_learned"])
    except (OSError, ValueError, KeyError, TypeError):
        learned = None
    kept = [p for p in old.glob("quality-after-task*.json")
            if rundirs.CONTENT_PATTERNS[rundirs.EXPORT].match(p.name)]
    if (old / QUALITY).is_file() and learned is not None:
        shutil.copyfile(old / QUALITY, new / f"quality-after-task{learned}.json")
        if verbose:
            print(f"note: {old / QUALITY} scores the model after task {learned}; kept as "
                  f"quality-after-task{learned}.json (score the new export with "
                  "apps.evaluate_generator)", flush=True)
    for p in kept:
        if not (new / p.name).exists():
            shutil.copyfile(p, new / p.name)


def save_progress(trainer: Trainer, export_dir: str | os.PathLike, record: dict) -> Path:
    """The state of a task part-way through (``--checkpoint_every``): the whole training
    checkpoint plus the batch counter, and ``progress.json`` (the run record with its
    ``task_progress``), into ``<export_dir>/task_progress`` (atomically; the export of the
    last complete task beside it is untouched). The next complete export replaces it."""
    export_dir = Path(export_dir)
    check = rundirs.replace_check(rundirs.EXPORT, "--export_dir", "run's export")
    if not export_dir.exists():
        # no task complete yet: an export directory that holds only the progress
        atomic_dir(export_dir, lambda tmp: rundirs.write_marker(tmp, rundirs.EXPORT),
                   overwrite=False, check=check)
    else:
        check(export_dir)

    def write(tmp: Path) -> None:
        progress_checkpoint(trainer).write(str(tmp / CHECKPOINT / "ckpt"))
        atomic_write_json(tmp / PROGRESS_JSON, record)
        rundirs.write_marker(tmp, rundirs.PROGRESS)

    return atomic_dir(export_dir / TASK_PROGRESS, write, overwrite=True,
                      check=rundirs.replace_check(rundirs.PROGRESS, "--export_dir",
                                                  "task progress checkpoint"))


def progress_checkpoint(trainer: Trainer) -> tf.train.Checkpoint:
    """``checkpoint_for`` plus where the task's batches stand (its own checkpoint, so that
    a complete export's checkpoint keeps the layout older exports have). Networks are saved
    as flat lists of their weights, in order: restored through Keras' object graph, the
    dense layers of a frozen copy (``prev_model``, built as a second instance of the same
    class) were found to keep the values they had, which a complete export never shows
    (the copy is taken afresh before each task) but a checkpoint inside a task would."""
    parts = {k: VariableList(v.weights) if isinstance(v, keras.Model) else v
             for k, v in trainer.checkpoint_parts().items()}
    return tf.train.Checkpoint(**parts, batch_counter=trainer.batch_counter)


def read_checkpoint(ckpt: tf.train.Checkpoint, path: Path, what: str) -> None:
    """Restore ``ckpt`` from ``path`` (a ``.../ckpt`` prefix), every saved object matched;
    a missing, truncated or unreadable checkpoint raises ``CheckpointUnreadable``, one that
    does not fit these networks ``CheckpointMismatch`` (both say which in one line)."""
    _require_files(path, what)
    status = None
    try:
        status = ckpt.read(str(path))
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, IndexError, OSError) as e:
        # e.g. "Read less bytes than requested" (IndexError) from a cut-off data file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointUnreadable(f"{what}: the checkpoint in {path.parent} is truncated or "
                                   f"corrupt ({first})") from None
    except (AssertionError, ValueError) as e:
        # a variable of another shape (ValueError) or one the checkpoint lacks
        # without expect_partial, the pending restore logs a warning for every unmatched
        # value when it is garbage-collected
        if status is not None:
            status.expect_partial()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointMismatch(f"{what}: its checkpoint does not fit the networks of this "
                                 f"run ({first})") from None


def check_progress(export_dir: str | os.PathLike) -> None:
    """Raise ``CheckpointUnreadable`` unless ``save_progress``'s checkpoint there is complete
    and readable (without restoring anything)."""
    path = Path(export_dir) / TASK_PROGRESS / CHECKPOINT / "ckpt"
    what = f"--resume_from={export_dir}"
    _require_files(path, what)
    try:
        reader = tf.train.load_checkpoint(str(path))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointUnreadable(f"{what}: the checkpoint in {path.parent} is truncated or "
                                   f"corrupt ({first})") from None


def _require_files(path: Path, what: str) -> None:
    if not Path(str(path) + ".index").is_file() or not list(path.parent.glob(path.name + ".data-*")):
        raise CheckpointUnreadable(f"{what}: {path.parent} holds no checkpoint (its "
                                   "ckpt.index or ckpt.data-* files are missing)")


class CheckpointUnreadable(ValueError):
    """A checkpoint that is missing, truncated or corrupt."""


class CheckpointMismatch(ValueError):
    """A readable checkpoint saved from other networks."""


def restore_checkpoint(trainer: Trainer, export_dir: str | os.PathLike) -> None:
    """Load the training state saved by ``export_run`` into a freshly built trainer."""
    read_checkpoint(checkpoint_for(trainer), Path(export_dir) / CHECKPOINT / "ckpt",
                    f"--resume_from={export_dir}")


def restore_progress(trainer: Trainer, export_dir: str | os.PathLike) -> None:
    """Load the state saved by ``save_progress`` (call after ``start_task`` of its task)."""
    read_checkpoint(progress_checkpoint(trainer),
                    Path(export_dir) / TASK_PROGRESS / CHECKPOINT / "ckpt",
                    f"--resume_from={export_dir}")
