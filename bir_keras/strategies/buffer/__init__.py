"""Experience replay with a fixed memory budget (``--replay=buffer --budget=N``): the
stored-data baseline that BI-R is meant to do without (not in the paper's comparisons).

At the end of each task, ``budget`` training samples of each of its classes are kept
(class-balanced, drawn at random from the seed; all of a class when it has fewer). While
learning a later task, every iteration replays ``batch_replay`` samples drawn uniformly
from the memory, with their stored labels (or, with ``--distill``, the previous model's
soft targets), each over its own task's units, weighted 1 - 1/t against the current data
as every replay method. The memory is part of the checkpoint, so a resumed run replays
what the interrupted one stored. Regularisers compose with it as with any method.

This module is the method's declaration (``METHOD``: its setting, shorthand, rules and
whether it packs), read without TensorFlow; ``trainer.py`` is its Trainer, ``BufferReplay``.
"""

from __future__ import annotations

from bir_keras.settings import ConfigError, Method, Setting, Shorthand

# stored samples per class when --budget is not given
BUDGET = 100


def _fill(c, paper, conv_protocol: bool) -> None:
    if c.budget is None and c.replay == "buffer":
        c.budget = BUDGET


def _check(c, conv_protocol: bool) -> None:
    if c.budget is not None and c.replay != "buffer":
        raise ConfigError("--budget is the memory of buffer replay: it needs --replay=buffer")


METHOD = Method(
    name="buffer replay",
    replay="buffer",
    replay_help="buffer = experience replay of stored samples, --budget per class",
    settings=(
        Setting("budget", int, "buffer replay: stored training samples per class, "
                "class-balanced, kept from the end of each task (default "
                f"{BUDGET} with --replay=buffer)", range=(1, 1_000_000)),
    ),
    # experience replay of stored samples (not in the paper: the baseline BI-R does without)
    shorthands={"buffer": Shorthand(dict(replay="buffer"))},
    distill=True,
    fill=_fill,
    check=_check,
    unpackable=("--seeds_at_once does not pack --replay=buffer yet (its memory is written "
                "inside the step): run its seeds separately"),
    trainer=f"{__name__}.trainer:BufferReplay",
)
