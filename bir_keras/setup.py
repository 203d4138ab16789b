"""What a run is made of before it trains: a resolved config, its protocol (conv features
cached once where the conv layers are frozen) and the pre-trained conv trunk (``prepare``);
the run itself is ``bir_keras.experiment``, and what it saves on Ctrl-C and logs to
TensorBoard (``salvage``, ``tensorboard_log``) reads a ``Setup`` from here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bir_keras.config import CUSTOM, Config, ConfigError, conv_features, resolve
from bir_keras.data.protocols import Protocol, make_protocol
from bir_keras.data.stream_files import stream_of
from bir_keras.data.streams import TaskStream, check_stream_run, protocol_for
from bir_keras.models.layers import CONV_FEATURES, conv_trunk
from bir_keras.weightsfile import DEFAULT_TRUNK, TRUNKS, check_weights_file, resolve_conv_weights

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# the authors' pre-trained trunk, converted (saved_models/authors_c3_5x16_bn); --conv_weights=ours
# names the one pre-trained here (saved_models/cifar10_conv)
DEFAULT_CONV_WEIGHTS = TRUNKS[DEFAULT_TRUNK]


@dataclasses.dataclass
class Setup:
    """A resolved config, its protocol (features if conv layers are frozen and cached), the
    pixel-level protocol and the pre-trained conv trunk (CIFAR only)."""

    config: Config
    protocol: Protocol
    pixels: Protocol
    trunk: object | None


def load_trunk(path: str | None):
    """The CIFAR conv trunk with pre-trained weights: ``path`` a file, a name of
    ``TRUNKS`` (``"authors"``, ``"ours"``), ``None`` for the default (``"authors"``) or
    ``"random"`` (untrained, for tests)."""
    trunk = conv_trunk()
    if path == "random":
        return trunk
    flag = "--conv_weights" if path else "the shipped --conv_weights default"
    named = path if isinstance(path, str) and path in TRUNKS else None
    file = Path(resolve_conv_weights(path))
    if not file.exists():
        raise ConfigError(f"pre-trained conv weights not found at {file}; run "
                          "`python -m apps.pretrain` or pass --conv_weights=FILE")
    # one line for a file that is not the trunk's weights (a name: the line shows the file too)
    check_weights_file(named or file, flag)
    trunk.load_weights(str(file))
    return trunk


def prepare(config: Config, data: TaskStream | None = None,
            resume_from: str | None = None) -> Setup:
    """Load the data, fill the paper's defaults, check flags, cache frozen conv features.

    ``config.experiment == "custom"``: the data is ``data`` (a ``TaskStream``) or the
    ``.npz`` or folder of task folders at ``config.data_dir``; ``resume_from``, an export of
    a run on such data, continues it (its tasks' test sets and input statistics are read
    from there: ``bir_keras.data.streams.read_learned``)."""
    if config.experiment == CUSTOM:
        resolve(config, False)   # the settings refused before the data is read
        pixels = protocol_for(config, stream_of(data, config.data_dir), resume_from)
    else:
        if data is not None:
            raise ConfigError(f"data is read by experiment={CUSTOM!r} (your own data); "
                              f"{config.experiment} loads its own")
        pixels = make_protocol(config.experiment, config.scenario, tasks=config.tasks,
                               data_dir=config.data_dir, seed=config.seed,
                               keep_label_order=config.keep_label_order)
    c = resolve(config, pixels.conv)
    if pixels.stream is not None:
        check_stream_run(c, pixels)
    protocol, trunk = pixels, None
    if pixels.conv:
        trunk = load_trunk(c.conv_weights)
        trunk.trainable = False
        # Frozen layers give the same output for the same input: compute the features of
        # each dataset once (internal replay, method.md 4.3.4) and train the FC part on them.
        if conv_features(c):
            def features(x: np.ndarray) -> np.ndarray:
                return np.concatenate([trunk(x[s:s + 1000], training=False).numpy()
                                       for s in range(0, len(x), 1000)])
            protocol = pixels.with_features(features, CONV_FEATURES)
    return Setup(c, protocol, pixels, trunk)
