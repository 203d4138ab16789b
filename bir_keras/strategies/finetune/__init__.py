"""Fine-tuning ("None", method.md 3): the classifier trained on each task in turn, with
nothing against forgetting (``--replay=none``, ``--method=none``). Every classifier method
builds on its network and its loss (``trainer.py``: ``FineTuning``).

This module is the method's declaration (``METHOD``), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import Method, Shorthand

METHOD = Method(
    name="fine-tuning",
    replay="none",
    replay_help="none (fine-tune)",
    shorthands={"none": Shorthand({})},
    trainer=f"{__name__}.trainer:FineTuning",
)
