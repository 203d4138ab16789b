"""EWC's diagonal Fisher for FC classifiers without materialising per-sample gradients.

For a dense layer z = h W + b, the gradient of one sample's log p_c is h^T delta_c, so its
square is (h^2)^T (delta_c^2) and the sum over samples is one matrix product:
F_W = sum_c (H^2)^T (p_c * Delta_c^2), F_b = sum_c sum_n p_c delta_c^2, where delta_c holds
every sample's gradient of log p_c w.r.t. the layer's pre-activations (one backward pass of
sum_n log p_{n,c} gives them all, as samples do not interact). Exact, and orders of
magnitude cheaper than a Jacobian of [samples, classes, parameters]. With XdG a hidden
layer is z = (h W) * m + b (the mask before the bias), so W's gradient is
h^T (delta * m) and, m being 0/1, its square uses delta^2 * m.
"""

from __future__ import annotations

import tensorflow as tf

from bir_keras.models.classifier import Classifier
from bir_keras.models.layers import masked_logits


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
