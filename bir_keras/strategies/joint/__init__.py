"""Joint training ("offline replay", method.md 3; ``--replay=offline``, ``--method=joint``): at
task t, train on all data of tasks 1..t (the upper bound). ``trainer.py``: ``Joint``.

This module is the method's declaration (``METHOD``), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import Method, Shorthand

METHOD = Method(
    name="joint training",
    replay="offline",
    replay_help="offline (Joint)",
    shorthands={"joint": Shorthand(dict(replay="offline"))},
    trainer=f"{__name__}.trainer:Joint",
)
