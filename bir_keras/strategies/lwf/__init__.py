"""Learning without Forgetting (Li & Hoiem; method.md 3; ``--replay=current --distill``,
``--method=lwf``): replay the current batch with soft targets from the model frozen at the
end of the previous task. ``trainer.py``: ``LwF``.

This module is the method's declaration (``METHOD``), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import ConfigError, Method, Shorthand


def _check(c, conv_protocol: bool) -> None:
    if c.replay == "current" and c.batch_replay != c.batch:
        raise ConfigError("LwF replays the current batch: --batch_replay must equal --batch")


METHOD = Method(
    name="LwF",
    replay="current",
    replay_help="current (LwF)",
    shorthands={"lwf": Shorthand(dict(replay="current", distill=True))},
    distill=True,
    check=_check,
    trainer=f"{__name__}.trainer:LwF",
)
