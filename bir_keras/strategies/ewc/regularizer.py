"""(Online) EWC's regulariser (its declaration: ``bir_keras.strategies.ewc``) and its
diagonal Fisher.

The Fisher of FC classifiers is computed without materialising per-sample gradients. For
a dense layer z = h W + b, the gradient of one sample's log p_c is h^T delta_c, so its
square is (h^2)^T (delta_c^2) and the sum over samples is one matrix product:
F_W = sum_c (H^2)^T (p_c * Delta_c^2), F_b = sum_c sum_n p_c delta_c^2, where delta_c holds
every sample's gradient of log p_c w.r.t. the layer's pre-activations (one backward pass of
sum_n log p_{n,c} gives them all, as samples do not interact). Exact, and orders of
magnitude cheaper than a Jacobian of [samples, classes, parameters]. With XdG a hidden
layer is z = (h W) * m + b (the mask before the bias), so W's gradient is
h^T (delta * m) and, m being 0/1, its square uses delta^2 * m. Other models (conv trunk,
RtF) use one vectorised Jacobian per chunk of samples (``fisher_diagonal``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bir_keras.config import Config
from bir_keras.models.classifier import Classifier
from bir_keras.models.layers import masked_logits
from bir_keras.strategies.regularizers import Regularizer, TrainerView, state_variable


def dense_fisher(model, variables: list, x: tf.Tensor, tid: tf.Tensor,
                 active: tf.Tensor) -> list[tf.Tensor] | None:
    """The Fisher of ``variables`` for an FC ``Classifier``; None when it does not apply
    (conv trunk, other models, or variables outside the FC layers)."""
    if not isinstance(model, Classifier) or model.trunk is not None:
        return None
    layers = list(model.fc.layers_) + [model.head]
    wanted = {id(v) for v in variables}
    owned = {id(v) for layer in layers for v in (layer.kernel, layer.bias)}
    if not wanted <= owned:
        return None
    masks = None
    if model.xdg_masks is not None:
        masks = [tf.gather(m, tid) for m in model.xdg_masks]
    fisher = _fisher_fn(model, layers, masks is not None)(x, active, masks or [])
    by_id = {}
    for layer, (fw, fb) in zip(layers, fisher):
        by_id[id(layer.kernel)], by_id[id(layer.bias)] = fw, fb
    n = tf.cast(tf.shape(x)[0], tf.float32)
    return [by_id[id(v)] / n for v in variables]


def _fisher_fn(model, layers, with_masks: bool):
    # The compiled function is kept on the model itself, so it lives and dies with it (a
    # cache keyed by id(model) could hand a new model a freed model's function).
    cache = model.__dict__.setdefault("_bir_fisher_fns", {})
    if with_masks not in cache:
        @tf.function(reduce_retracing=True, autograph=False)
        def fn(x, active, masks):
            with tf.GradientTape(persistent=True) as tape:
                h, inputs, zs = x, [], []
                for i, layer in enumerate(layers):
                    inputs.append(h)
                    z = tf.matmul(h, layer.kernel)
                    if with_masks and i < len(layers) - 1:
                        z = z * masks[i]
                    z = z + layer.bias
                    zs.append(z)
                    if i < len(layers) - 1:
                        h = tf.nn.relu(z)
                log_p = tf.nn.log_softmax(masked_logits(zs[-1], active))
                per_class = tf.unstack(tf.reduce_sum(log_p, axis=0))
            probs = tf.where(active > 0, tf.exp(log_p), 0.0)
            sq_inputs = [tf.square(h) for h in inputs]
            out = [[tf.zeros_like(layer.kernel), tf.zeros_like(layer.bias)] for layer in layers]
            for c, lp in enumerate(per_class):
                deltas = tape.gradient(lp, zs)
                w = probs[:, c:c + 1]
                for j, d in enumerate(deltas):
                    d2 = w * tf.square(d)
                    dk = d2 * masks[j] if with_masks and j < len(layers) - 1 else d2
                    out[j][0] += tf.matmul(sq_inputs[j], dk, transpose_a=True)
                    out[j][1] += tf.reduce_sum(d2, 0)
            del tape
            return out

        cache[with_masks] = fn
    return cache[with_masks]


def from_config(config: Config) -> EWC:
    """The EWC (or, with ``--online``, online EWC) regulariser of a resolved config."""
    return EWC(config.ewc_lambda, online=config.online, gamma=config.gamma)


class EWC(Regularizer):
    """(Online) EWC: penalty (lambda/2) sum_k sum_i F_k,i (theta_i - theta*_k,i)^2.

    sum_k F_k (theta - theta*_k)^2 = A (theta - m)^2 + c with A = sum_k F_k and
    m = sum_k F_k theta*_k / A, so one precision ``A``, one Fisher-weighted anchor ``m``
    and one scalar ``c`` hold every task's term exactly (and stay stable in float32).
    Online EWC (Schwarz et al.): A <- gamma A + F_new, m = theta after the last task.
    """

    name = "ewc"

    def __init__(self, lam: float, online: bool = False, gamma: float = 1.0):
        self.lam, self.online, self.gamma = float(lam), online, float(gamma)

    def build(self, variables):
        """Create precision, anchor and offset variables."""
        super().build(variables)
        self.precision = [state_variable(v, "ewc_fisher") for v in self.vars]
        self.anchor = [state_variable(v, "ewc_anchor") for v in self.vars]
        self.offset = tf.Variable(0.0, trainable=False, name="ewc_offset",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.tasks_seen = tf.Variable(0, trainable=False, name="ewc_tasks",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def penalty(self):
        """(lambda / 2) * (sum_i A_i (theta_i - m_i)^2 + c)."""
        total = self.offset
        for a, m, v in zip(self.precision, self.anchor, self.vars):
            total = total + tf.reduce_sum(a * tf.square(v - m))
        return 0.5 * self.lam * total

    def after_task(self, task, trainer):
        """Fold the task's Fisher (``task_fisher``) and anchor into the quadratic form."""
        self.fold(task_fisher(trainer, task))

    def fold(self, fisher: list[tf.Tensor]) -> None:
        """Fold a new task's Fisher, anchored at the parameters now, into the quadratic form."""
        if self.online:
            for a, m, v, f in zip(self.precision, self.anchor, self.vars, fisher):
                a.assign(self.gamma * a + f)
                m.assign(v)
            self.offset.assign(0.0)
        else:
            offset = self.offset
            for a, m, v, f in zip(self.precision, self.anchor, self.vars, fisher):
                # c_new = c + A m^2 + F v^2 - A_new m_new^2, with A_new m_new = A m + F v
                new_a = a + f
                weighted = a * m + f * v
                new_m = tf.math.divide_no_nan(weighted, new_a)
                offset = offset + tf.reduce_sum(a * m * m + f * v * v - new_a * new_m * new_m)
                a.assign(new_a)
                m.assign(new_m)
            self.offset.assign(tf.maximum(offset, 0.0))
        self.tasks_seen.assign_add(1)

    def state(self):
        """Fisher, anchors and offset."""
        return {"precision": self.precision, "anchor": self.anchor, "offset": self.offset,
                "tasks_seen": self.tasks_seen}


def task_fisher(trainer: TrainerView, t: int) -> list[tf.Tensor]:
    """Diagonal Fisher of task ``t`` for the trainer's protected variables, from
    ``fisher_n`` training samples, with the model's own predicted distribution over the
    active classes (method.md 3)."""
    c, p = trainer.config, trainer.protocol
    task = p.task(t)
    n = min(c.fisher_n, len(task.y_train))
    sel = np.random.RandomState(c.seed + 7 * t).permutation(len(task.y_train))[:n]
    x = trainer.preprocess(tf.constant(task.x_train[sel]))
    tid = tf.fill([n], tf.constant(t, tf.int32))
    active = tf.gather(tf.constant(p.active_table(t)), tid)
    variables = trainer.protected_variables()
    model = trainer.networks()["model"]
    fast = dense_fisher(model, variables, x, tid, active)
    if fast is not None:
        return fast
    return fisher_diagonal(lambda xb, tb: trainer.logits(model, xb, tb), variables,
                           x, tid, active)


def fisher_diagonal(logits_fn, variables: list, x: tf.Tensor, tid: tf.Tensor,
                    active: tf.Tensor, chunk: int | None = None) -> list[tf.Tensor]:
    """E_x sum_c p(c|x) (d log p(c|x) / d theta)^2 over active c, with per-sample,
    per-class gradients from one vectorised Jacobian per chunk of samples."""
    n = int(x.shape[0])
    n_out = int(active.shape[-1])
    params = sum(int(np.prod(v.shape)) for v in variables)
    if chunk is None:  # keep the Jacobian near 256 MB
        chunk = max(1, min(n, int(64e6 // max(1, params * n_out))))
    totals = [tf.zeros(v.shape) for v in variables]

    @tf.function(reduce_retracing=True, autograph=False)
    def part(xb, tb, ab):
        with tf.GradientTape() as tape:
            log_p = tf.nn.log_softmax(masked_logits(logits_fn(xb, tb), ab))
        jac = tape.jacobian(log_p, variables, experimental_use_pfor=True)
        weight = tf.stop_gradient(tf.where(ab > 0, tf.exp(log_p), 0.0))
        out = []
        for j in jac:
            w = tf.reshape(weight, tf.concat([tf.shape(weight), [1] * (len(j.shape) - 2)], 0))
            out.append(tf.reduce_sum(w * tf.square(j), axis=[0, 1]))
        return out

    for s in range(0, n, chunk):
        res = part(x[s:s + chunk], tid[s:s + chunk], active[s:s + chunk])
        totals = [a + r for a, r in zip(totals, res)]
    return [tf_total / float(n) for tf_total in totals]
