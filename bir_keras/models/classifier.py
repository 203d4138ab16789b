"""The classifier: optional conv trunk, FC hidden layers, one output unit per class; and its
loss, written once: ``Classifier.loss_terms`` against ``HardTargets`` (labels),
``SoftTargets`` (distillation) or ``TaskHeadsTargets`` (every Task-IL head at once), used by
its ``train_step`` (``model.fit``) and by every continual-learning method."""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from bir_keras.models.layers import FCStack, conv_trunk, float32, masked_logits, torch_uniform_init


def masked_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Per-sample cross-entropy with the softmax over active units only (method.md 1)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=masked_logits(logits, active))


def distillation_loss(logits: tf.Tensor, target_probs: tf.Tensor, active: tf.Tensor,
                      temperature: float) -> tf.Tensor:
    """Per-sample -T^2 sum_c p_old,c log softmax(z/T)_c over active units (method.md 4.2)."""
    log_p = tf.nn.log_softmax(masked_logits(logits, active) / temperature)
    log_p = tf.where(active > 0, log_p, 0.0)
    return -(temperature ** 2) * tf.reduce_sum(target_probs * log_p, axis=-1)


class HardTargets(NamedTuple):
    """Labels, with the softmax over each sample's active units (method.md 1)."""

    labels: tf.Tensor   # [batch]
    active: tf.Tensor   # [batch, units], 1 for units the softmax runs over

    def loss(self, logits: tf.Tensor) -> tf.Tensor:
        """Per-sample cross-entropy."""
        return masked_cross_entropy(logits, self.labels, self.active)


class SoftTargets(NamedTuple):
    """The previous model's probabilities at temperature T (distillation, method.md 4.2)."""

    probs: tf.Tensor    # [batch, units], zero outside ``active``
    active: tf.Tensor   # [batch, units]
    temperature: float

    def loss(self, logits: tf.Tensor) -> tf.Tensor:
        """Per-sample -T^2 sum_c p_old,c log softmax(z/T)_c."""
        return distillation_loss(logits, self.probs, self.active, self.temperature)


class TaskHeadsTargets(NamedTuple):
    """Task-IL targets for every task's head at once: ``labels`` [batch, tasks] (hard) or
    ``probs`` [batch, tasks, classes_per_task] (soft, ``temperature``), each head's loss
    weighted by ``task_weights`` [tasks] (replay not generated for one task, method.md 4.1)."""

    labels: tf.Tensor | None
    probs: tf.Tensor | None
    task_weights: tf.Tensor
    classes_per_task: int
    temperature: float

    def loss(self, logits: tf.Tensor) -> tf.Tensor:
        """Per-sample weighted sum over the heads of each head's loss."""
        cpt = self.classes_per_task
        flat = tf.reshape(logits, [-1, cpt])
        ones = tf.ones_like(flat)
        if self.probs is not None:
            per = distillation_loss(flat, tf.reshape(self.probs, [-1, cpt]), ones, self.temperature)
        else:
            per = masked_cross_entropy(flat, tf.reshape(self.labels, [-1]), ones)
        return tf.reduce_sum(tf.reshape(per, [tf.shape(logits)[0], -1]) * self.task_weights, -1)


Targets = HardTargets | SoftTargets | TaskHeadsTargets


class Classifier(keras.Model):
    """FC classifier (optional conv trunk) with active-unit masking and optional XdG masks
    (applied before each hidden layer's bias, as the authors' code). Weights start from
    PyTorch's default initialisation drawn from ``seed`` (``torch_uniform_init``)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, fc_units: list[int],
                 conv: bool = False, xdg_masks: list[np.ndarray] | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.input_shape_ = tuple(input_shape)
        self.num_outputs = num_outputs
        self.trunk = conv_trunk() if conv else None
        self.fc = FCStack(fc_units, name="fc")
        self.head = keras.layers.Dense(num_outputs, name="classifier")
        # XdG (method.md 3): per task, a fixed mask over every hidden layer's units.
        self.xdg_masks = (None if xdg_masks is None
                          else [tf.constant(m, tf.float32) for m in xdg_masks])
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build((None, *self.input_shape_))
        torch_uniform_init(self, seed, salt=1)

    def build(self, input_shape):
        """Create the weights by running a dummy batch through the network."""
        self.call(tf.zeros((1, *self.input_shape_)), tf.zeros((1,), tf.int32))
        self.built = True

    def hidden(self, x: tf.Tensor, task_ids: tf.Tensor | None = None,
               training: bool = False) -> tf.Tensor:
        """Activations of the last hidden layer."""
        if self.trunk is not None:
            x = self.trunk(x, training=training)
        masks = None
        if self.xdg_masks is not None:
            if task_ids is None:
                raise ValueError("XdG needs the task identity of every sample")
            masks = [tf.gather(m, task_ids) for m in self.xdg_masks]
        return self.fc(x, masks=masks)

    def call(self, x: tf.Tensor, task_ids: tf.Tensor | None = None,
             training: bool = False) -> tf.Tensor:
        """Logits over all output units (float32 under any precision policy)."""
        return float32(self.head(self.hidden(x, task_ids, training=training)))

    def classify(self, x: tf.Tensor, task_ids: tf.Tensor | None = None,
                 training: bool = False) -> tf.Tensor:
        """Logits over all output units (the same call for every model that classifies)."""
        return self(x, task_ids, training=training)

    def loss_terms(self, x: tf.Tensor, targets: Targets, task_ids: tf.Tensor | None = None,
                   training: bool = True) -> dict[str, tf.Tensor]:
        """The model's loss, per sample: ``class`` (cross-entropy or distillation, as the
        targets say). ``train_step`` and every continual-learning method use it."""
        return {"class": targets.loss(self(x, task_ids, training=training))}

    @property
    def metrics(self):
        """Trackers reset by ``fit`` at each epoch."""
        return [self.loss_tracker]

    def train_step(self, data):
        """One step of ``fit`` on a single task: data = (x, y, active [B, outputs]) or, with
        XdG masks, (x, y, active, task_ids)."""
        x, y, active = data[:3]
        task_ids = data[3] if len(data) > 3 else None
        with tf.GradientTape() as tape:
            terms = self.loss_terms(x, HardTargets(y, active), task_ids, training=True)
            loss = tf.reduce_mean(terms["class"])
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}
