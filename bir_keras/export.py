"""A run's products: the SavedModel (``classify`` and ``sample`` signatures, loadable with
TensorFlow alone), the training checkpoint used by ``--resume_from``, and ``run.json``.

Everything is written atomically: into a temporary sibling directory, then renamed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from bir_keras import rundirs
from bir_keras.fileio import atomic_dir, atomic_write_json
from bir_keras.strategies.base import Trainer

SAVED_MODEL = "saved_model"
CHECKPOINT = "checkpoint"
RUN_JSON = "run.json"


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
    applied inside."""

    def __init__(self, trainer: Trainer, pixels, trunk=None):
        super().__init__()
        p = trainer.protocol
        self._trainer = trainer
        self._pixels = pixels
        self._model = _Ref(trainer.model)
        self.model_variables = list(trainer.model.variables)
        self._trunk = _Ref(trunk)
        self.trunk_variables = list(trunk.variables) if trunk is not None else []
        spec = tf.TensorSpec([None, *pixels.input_shape], tf.float32, name="x")
        self.classify = tf.function(self._classify, input_signature=[spec])
        self.classify_task = tf.function(self._classify_task, input_signature=[
            spec, tf.TensorSpec([None], tf.int32, name="task_ids")])
        self.mode_labels = tf.constant(p.mode_to_label(np.arange(p.num_pairs)), tf.int32)
        # The map to the dataset: mode m (task m // cpt, its class m % cpt) is the dataset's
        # class mode_dataset_labels[m], named mode_class_names[m]; output unit u is mode u in
        # Task-IL and Class-IL, mode task * cpt + u in Domain-IL.
        labels = mode_dataset_labels(p)
        self.mode_dataset_labels = tf.constant(labels, tf.int32)
        self.mode_class_names = tf.constant([str(p.class_names[c]) for c in labels])
        self.dataset_class_names = tf.constant([str(n) for n in p.class_names])
        self.scenario = tf.constant(p.scenario)
        self.classes_per_task = tf.constant(p.classes_per_task, tf.int32)
        learned = max(1, trainer.tasks_learned)
        self.tasks_learned = tf.constant(learned, tf.int32)
        # units a prediction may take: per task (classify_task) and for any learned task
        table = p.active_table(learned - 1)
        self._active = tf.constant(table)
        self._active_any = tf.constant(np.max(table[:learned], axis=0))
        self.labels = tf.function(self._labels, input_signature=[])
        self.sample = None
        if trainer.can_sample:
            nets = trainer.networks()
            if "generator" in nets:
                self.generator_variables = list(nets["generator"].variables)
            self.sample = tf.function(self._sample, input_signature=[
                tf.TensorSpec([None], tf.int32, name="class_ids")])
        self.classify_features = None
        if p.features:
            self.classify_features = tf.function(self._classify_features, input_signature=[
                tf.TensorSpec([None, *p.input_shape], tf.float32, name="h")])

    def _inputs(self, x):
        if self._pixels.mean is not None:
            x = (x - tf.constant(self._pixels.mean)) / tf.constant(self._pixels.std)
        if self._trunk.obj is not None:
            x = self._trunk.obj(x, training=False)
        return x

    def _labels(self):
        """The map from the model's ids to the dataset's labels and class names."""
        return {"mode_dataset_labels": self.mode_dataset_labels,
                "mode_class_names": self.mode_class_names,
                "dataset_class_names": self.dataset_class_names,
                "scenario": self.scenario, "classes_per_task": self.classes_per_task,
                "tasks_learned": self.tasks_learned}

    def _predict(self, logits, task_ids, active):
        """Logits plus the prediction among the units ``active`` [batch, units], as the
        output unit, the dataset label and the class name."""
        unit = tf.argmax(tf.where(active > 0, logits, tf.constant(-np.inf, logits.dtype)), -1,
                         output_type=tf.int32)
        mode = unit if self._trainer.protocol.scenario != "domain" \
            else task_ids * self._trainer.protocol.classes_per_task + unit
        return {"logits": logits, "unit": unit,
                "label": tf.gather(self.mode_dataset_labels, mode),
                "class_name": tf.gather(self.mode_class_names, mode)}

    def _classify(self, x):
        """Logits over all units, and the prediction among the classes of every task
        learned, as a dataset label and class name (Domain-IL: read as task 1's classes)."""
        task_ids = tf.zeros(tf.shape(x)[:1], tf.int32)
        logits = self._model.obj.classify(self._inputs(x), task_ids)
        return self._predict(logits, task_ids, tf.ones_like(logits) * self._active_any)

    def _classify_task(self, x, task_ids):
        """Logits with the task identity of each input (needed by XdG's masks), and the
        prediction among the units of that task (Task-IL) or of every learned task."""
        logits = self._model.obj.classify(self._inputs(x), task_ids)
        return self._predict(logits, task_ids, tf.gather(self._active, task_ids))

    def _classify_features(self, h):
        """Logits for hidden features (what internal replay generates)."""
        task_ids = tf.zeros(tf.shape(h)[:1], tf.int32)
        logits = self._model.obj.classify(h, task_ids)
        return self._predict(logits, task_ids, tf.ones_like(logits) * self._active_any)

    def _sample(self, class_ids):
        """One sample per requested class id: the output label in Task-IL and Class-IL, the
        (task, class) pair ``task * classes_per_task + class`` in Domain-IL, where the
        generator's mode is the class (shared by the tasks) and a per-task gate, if any,
        the task's."""
        p, tr = self._trainer.protocol, self._trainer
        cpt = p.classes_per_task
        modes = class_ids % cpt if p.scenario == "domain" else class_ids
        eps = tf.random.normal([tf.shape(class_ids)[0], tr.config.z_dim])
        x = tr.sample(modes, class_ids // cpt, eps)
        if not self._trainer.protocol.features:
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
        atomic_write_json(tmp / RUN_JSON, record)
        rundirs.write_marker(tmp, rundirs.EXPORT)

    return atomic_dir(export_dir, write, overwrite=True)


def restore_checkpoint(trainer: Trainer, export_dir: str | os.PathLike) -> None:
    """Load the training state saved by ``export_run`` into a freshly built trainer."""
    path = Path(export_dir) / CHECKPOINT / "ckpt"
    status = checkpoint_for(trainer).read(str(path))
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        # a mismatch is reported by the caller in one line; without this, the pending
        # restore logs a warning for every unmatched value when it is garbage-collected
        status.expect_partial()
        raise
