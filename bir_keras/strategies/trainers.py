"""The method's Trainer of a resolved config (``make_trainer``), found through its
``--replay`` method's declaration (``Method.trainer``), so that no list of methods is kept
here."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.config import Config, replay_method
from bir_keras.data.protocols import Protocol
from bir_keras.strategies.base import Trainer


def trainer_class(config: Config) -> type[Trainer]:
    """The Trainer subclass of a resolved config: its ``--replay`` method's ``trainer``."""
    return replay_method(config.replay).trainer_class(config)


def make_trainer(config: Config, protocol: Protocol,
                 strategy: tf.distribute.Strategy | None = None, verbose: bool = True,
                 trunk_weights: list | None = None) -> Trainer:
    """Build the method's trainer for a resolved config and a protocol; every network with
    a conv trunk starts from ``trunk_weights`` (the pre-trained conv layers), frozen with
    ``--freeze_convE``."""
    return trainer_class(config)(protocol, config, strategy=strategy, verbose=verbose,
                                 trunk_weights=trunk_weights)
