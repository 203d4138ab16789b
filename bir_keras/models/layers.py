"""Layer blocks shared by the models: FC stacks with optional unit masks, the CIFAR conv
trunk, the transposed-conv decoder, and the fixed random masks used by XdG and BI-R's
gates."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Large negative logit for units outside the active set (not -inf, so 0 * logit stays finite).
INACTIVE_LOGIT = -1e9


def float32(x: tf.Tensor) -> tf.Tensor:
    """``x`` in float32: what a network hands to a loss, a softmax or a density (under the
    mixed_bfloat16 policy its layers compute in bfloat16; in float32 this is ``x`` itself)."""
    return tf.cast(x, tf.float32)


def masked_logits(logits: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Push inactive units to a huge negative logit so the softmax runs over active units only."""
    return tf.where(active > 0, logits, tf.cast(INACTIVE_LOGIT, logits.dtype))


def dense_gradients(grads: list) -> list:
    """Gradients as dense tensors, as PyTorch's (the authors' code) are.

    ``tf.gather`` of a variable (the mixture prior's means and log-variances, gathered per
    sample's mode) has an ``IndexedSlices`` gradient, one slice per sample; Keras' Adam
    then squares each slice before summing duplicates, so a mode drawn n times gets a
    second moment of sum g_i^2 instead of (sum g_i)^2 and steps up to sqrt(n) times too
    far. The authors' prior is an ``nn.Parameter`` indexed per sample (models/vae.py in their repository,
    ``z_class_means``), whose gradient is dense: summed first, then Adam."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def make_unit_masks(num_contexts: int, units: int, prop: float, seed: int) -> np.ndarray:
    """XdG's fixed random 0/1 masks, one per task, each silencing int(prop * units) units
    chosen without replacement (the authors' ``define_XdGmask``)."""
    if not 0.0 <= prop < 1.0:
        raise ValueError(f"masking proportion must be in [0, 1), got {prop}")
    rng = np.random.RandomState(seed)
    masks = np.ones((num_contexts, units), np.float32)
    n_off = int(prop * units)
    for c in range(num_contexts):
        masks[c, rng.choice(units, n_off, replace=False)] = 0.0
    return masks


def make_gate_masks(num_contexts: int, units: int, prop: float, seed: int) -> np.ndarray:
    """BI-R's decoder gates: per context, each unit is silenced with probability ``prop``
    independently (the authors' ``fc_layer_fixed_gates``: ``np.random.choice([0, 1],
    p=[prop, 1 - prop])``), so the number silenced varies around ``prop * units``."""
    if not 0.0 <= prop < 1.0:
        raise ValueError(f"gating proportion must be in [0, 1), got {prop}")
    rng = np.random.RandomState(seed)
    return (rng.uniform(size=(num_contexts, units)) >= prop).astype(np.float32)


def torch_uniform_init(model: keras.layers.Layer, seed: int, salt: int = 0) -> None:
    """Re-initialise every dense, conv and transposed-conv layer of ``model`` as PyTorch does
    by default (the authors' code): kernel and bias uniform in +-1/sqrt(fan_in), fan_in the
    product of the kernel's dimensions but the last (PyTorch's fan_in of a transposed conv
    counts its *output* channels, which is Keras' kernel dimension -2, so the same rule holds;
    fidelity.md item 5). Batch-norm and the GMM prior keep their own initialisation.
    ``salt`` tells apart the models built from one seed (classifier, generator)."""
    kinds = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Conv2DTranspose)
    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if isinstance(layer, kinds)]
    for i, layer in enumerate(layers):
        bound = 1.0 / np.sqrt(float(np.prod(layer.kernel.shape[:-1])))
        for j, v in enumerate((layer.kernel, layer.bias)):
            if v is None:
                continue
            v.assign(tf.random.stateless_uniform(v.shape, [seed, 100_000 * salt + 1000 * i + j], -bound, bound))


class FCStack(keras.layers.Layer):
    """A stack of ReLU dense layers.

    ``masks`` (XdG) multiply each layer's pre-activation *before* the bias is added, so a
    masked unit still outputs relu(bias) (the authors' excitability buffer, fidelity.md
    item 8). ``gates`` (BI-R's decoder gates, possibly soft) multiply the pre-activation
    *after* the bias, as the authors' ``fc_layer_fixed_gates``; since relu(g z) = g relu(z)
    for g >= 0 they are applied to the layer's output."""

    def __init__(self, units: list[int], name: str = "fc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = list(units)
        self.layers_ = [keras.layers.Dense(u, name=f"{name}{i + 1}")
                        for i, u in enumerate(self.units)]

    def build(self, input_shape):
        """Build each dense layer on its input width."""
        width = input_shape[-1]
        for layer, u in zip(self.layers_, self.units):
            layer.build((None, width))
            width = u
        self.built = True

    def call(self, x: tf.Tensor, masks: list[tf.Tensor] | None = None,
             gates: list[tf.Tensor] | None = None) -> tf.Tensor:
        """The stack's output, in the layer's compute dtype (masks and gates cast to it)."""
        for i, layer in enumerate(self.layers_):
            z = tf.matmul(x, layer.kernel)
            if masks is not None and masks[i] is not None:
                z = z * tf.cast(masks[i], z.dtype)
            x = tf.nn.relu(z + layer.bias)
            if gates is not None and gates[i] is not None:
                x = x * tf.cast(gates[i], x.dtype)
        return x


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    # PyTorch's BatchNorm defaults (the authors' code): momentum 0.1 of the new batch,
    # i.e. Keras momentum 0.9, and epsilon 1e-5 (fidelity.md item 6)
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def conv_trunk(name: str = "conv_trunk", padding: str = "torch") -> keras.Sequential:
    """The 5 conv layers of method.md 4.4: 3x3, pad 1, 16-32-64-128-256 -> 1024 features.

    BN + ReLU after the first four; the fifth is linear (no BN, no ReLU), as the authors'
    ``ConvLayers(output="none")`` with ``no_fnl=True`` (fidelity.md item 4): the features
    that internal replay reconstructs can be negative.

    ``padding="torch"`` (the default): one zero row and column on every side, as the
    authors' ``nn.Conv2d(kernel_size=3, padding=1)``; at stride 2 (32 -> 16) their windows
    start at -1 and the bottom/right padding is never read. ``padding="same"``: Keras'
    "same", which at stride 2 pads only the bottom/right (windows start at 0): the same
    shapes and weights, but features shifted by a pixel at each stride-2 layer (the trunk
    in ``saved_models/cifar10_conv`` was pre-trained with it; kept to measure it)."""
    if padding not in ("torch", "same"):
        raise ValueError(f"padding must be 'torch' or 'same', not {padding!r}")
    layers: list[keras.layers.Layer] = [keras.layers.Input((32, 32, 3))]
    for i, (ch, stride) in enumerate(zip((16, 32, 64, 128, 256), (1, 2, 2, 2, 2))):
        if stride == 1 or padding == "same":  # stride 1: "same" pads 1 on every side too
            layers.append(keras.layers.Conv2D(ch, 3, strides=stride, padding="same",
                                              name=f"conv{i + 1}"))
        else:
            layers += [keras.layers.ZeroPadding2D(1, name=f"pad{i + 1}"),
                       keras.layers.Conv2D(ch, 3, strides=stride, padding="valid",
                                           name=f"conv{i + 1}")]
        if i < 4:
            layers += [_batch_norm(f"bn{i + 1}"), keras.layers.ReLU(name=f"relu{i + 1}")]
    layers.append(keras.layers.Flatten(name="flatten"))
    return keras.Sequential(layers, name=name)


CONV_FEATURES = 2 * 2 * 256


def deconv_decoder(name: str = "deconv") -> keras.Sequential:
    """Pixel-level CIFAR decoder of method.md 4.4: 1024 -> 2x2x256 -> 128-64-32-16 -> 3."""
    layers: list[keras.layers.Layer] = [keras.layers.Input((CONV_FEATURES,)),
                                        keras.layers.Reshape((2, 2, 256))]
    for i, ch in enumerate((128, 64, 32, 16)):
        layers += [keras.layers.Conv2DTranspose(ch, 4, strides=2, padding="same", name=f"dconv{i + 1}"),
                   _batch_norm(f"dbn{i + 1}"),
                   keras.layers.ReLU(name=f"drelu{i + 1}")]
    layers.append(keras.layers.Conv2DTranspose(3, 3, strides=1, padding="same", name="dconv_out"))
    return keras.Sequential(layers, name=name)
