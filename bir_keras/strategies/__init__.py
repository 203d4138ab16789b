"""Continual-learning methods: a common Trainer and one small subclass per method."""

from __future__ import annotations

import tensorflow as tf

from bir_keras.config import Config, ConfigError
from bir_keras.data.protocols import Protocol
from bir_keras.strategies.base import History, NonFiniteLoss, Trainer
from bir_keras.strategies.bir import BrainInspiredReplay
from bir_keras.strategies.buffer import BufferReplay
from bir_keras.strategies.finetune import FineTuning
from bir_keras.strategies.generative import GenerativeReplay
from bir_keras.strategies.joint import Joint
from bir_keras.strategies.lwf import LwF

__all__ = ["BrainInspiredReplay", "BufferReplay", "FineTuning", "GenerativeReplay", "History",
           "Joint", "LwF", "NonFiniteLoss", "Trainer", "make_trainer", "trainer_class"]


def trainer_class(config: Config) -> type[Trainer]:
    """The Trainer subclass for ``config.replay`` (regularisers compose with any of them);
    generative replay through feedback (``--feedback``, BI-R) is ``BrainInspiredReplay``."""
    if config.replay == "generative" and config.feedback:
        return BrainInspiredReplay
    return {"none": FineTuning, "offline": Joint, "current": LwF,
            "generative": GenerativeReplay, "buffer": BufferReplay}[config.replay]


def make_trainer(config: Config, protocol: Protocol,
                 strategy: tf.distribute.Strategy | None = None, verbose: bool = True) -> Trainer:
    """Build the method's trainer for a resolved config and a protocol."""
    if config.replay == "current" and config.batch_replay != config.batch:
        raise ConfigError("LwF replays the current batch: --batch_replay must equal --batch")
    return trainer_class(config)(protocol, config, strategy=strategy, verbose=verbose)
