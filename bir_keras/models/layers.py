"""Layer blocks shared by the models: FC stacks with optional unit masks, the CIFAR conv
trunk, the transposed-conv decoder, and the fixed random masks used by XdG and BI-R's
gates."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# Large negative logit for units outside the active set (not -inf, so 0 * logit stays finite).
INACTIVE_LOGIT = -1e9


def masked_logits(logits: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Push inactive units to a huge negative logit so the softmax runs over active units only."""
    return tf.where(active > 0, logits, tf.cast(INACTIVE_LOGIT, logits.dtype))


def make_unit_masks(num_contexts: int, units: int, prop: float, seed: int) -> np.ndarray:
    """Fixed random 0/1 masks, one per context, each silencing round(prop * units) units."""
    if not 0.0 <= prop < 1.0:
        raise ValueError(f"masking proportion must be in [0, 1), got {prop}")
    rng = np.random.RandomState(seed)
    masks = np.ones((num_contexts, units), np.float32)
    n_off = int(round(prop * units))
    for c in range(num_contexts):
        masks[c, rng.permutation(units)[:n_off]] = 0.0
    return masks


class FCStack(keras.layers.Layer):
    """A stack of ReLU dense layers; each layer's output may be multiplied by a unit mask."""

    def __init__(self, units: list[int], name: str = "fc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.units = list(units)
        self.layers_ = [keras.layers.Dense(u, activation="relu", name=f"{name}{i + 1}")
                        for i, u in enumerate(self.units)]

    def call(self, x: tf.Tensor, masks: list[tf.Tensor] | None = None) -> tf.Tensor:
        for i, layer in enumerate(self.layers_):
            x = layer(x)
            if masks is not None and masks[i] is not None:
                x = x * masks[i]
        return x


def conv_trunk(name: str = "conv_trunk") -> keras.Sequential:
    """The 5 conv layers of method.md 4.4: 3x3, pad 1, 16-32-64-128-256, BN + ReLU -> 1024."""
    layers: list[keras.layers.Layer] = [keras.layers.Input((32, 32, 3))]
    for i, (ch, stride) in enumerate(zip((16, 32, 64, 128, 256), (1, 2, 2, 2, 2))):
        layers += [keras.layers.Conv2D(ch, 3, strides=stride, padding="same", name=f"conv{i + 1}"),
                   keras.layers.BatchNormalization(name=f"bn{i + 1}"),
                   keras.layers.ReLU(name=f"relu{i + 1}")]
    layers.append(keras.layers.Flatten(name="flatten"))
    return keras.Sequential(layers, name=name)


CONV_FEATURES = 2 * 2 * 256


def deconv_decoder(name: str = "deconv") -> keras.Sequential:
    """Pixel-level CIFAR decoder of method.md 4.4: 1024 -> 2x2x256 -> 128-64-32-16 -> 3."""
    layers: list[keras.layers.Layer] = [keras.layers.Input((CONV_FEATURES,)),
                                        keras.layers.Reshape((2, 2, 256))]
    for i, ch in enumerate((128, 64, 32, 16)):
        layers += [keras.layers.Conv2DTranspose(ch, 4, strides=2, padding="same", name=f"dconv{i + 1}"),
                   keras.layers.BatchNormalization(name=f"dbn{i + 1}"),
                   keras.layers.ReLU(name=f"drelu{i + 1}")]
    layers.append(keras.layers.Conv2DTranspose(3, 3, strides=1, padding="same", name="dconv_out"))
    return keras.Sequential(layers, name=name)
