"""(Online) EWC (Kirkpatrick et al.; Schwarz et al. for online; method.md 3): a regulariser
that composes with any method (``--ewc``, ``--ewc --online``; ``--method=ewc``,
``--method=online_ewc``). ``regularizer.py``: ``EWC`` and its diagonal Fisher.

This module is the method's declaration (``METHOD``: its settings, shorthands, defaults and
rules), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import STRENGTH, ConfigError, Method, Setting, Shorthand

FISHER_N = 1000
GAMMA = 1.0


def _fill(c, paper, conv_protocol: bool) -> None:
    if c.ewc_lambda is None:
        c.ewc_lambda = paper["online_lambda"] if c.online else paper["ewc_lambda"]


def _check(c, conv_protocol: bool) -> None:
    if not 0.0 < c.gamma <= 1.0:
        raise ConfigError(f"--gamma must be in (0, 1], got {c.gamma}")


METHOD = Method(
    name="EWC",
    switch="ewc",
    settings=(
        Setting("ewc", bool, "EWC penalty (default: as --method sets it, else false)",
                off=False),
        Setting("ewc_lambda", float, "EWC strength lambda (default: the paper's grid value)",
                kind=STRENGTH),
        Setting("fisher_n", int, f"samples for EWC's Fisher (default {FISHER_N})",
                default=FISHER_N, range=(1, 10_000_000)),
        Setting("online", bool, "online EWC: one running Fisher (default: as --method sets "
                "it, else false)", off=False),
        Setting("gamma", float, "online EWC decay of the running Fisher, in (0, 1] (default "
                f"{GAMMA:g})", default=GAMMA),
    ),
    shorthands={
        "ewc": Shorthand(dict(ewc=True), lambda paper: dict(ewc_lambda=paper["ewc_lambda"])),
        "online_ewc": Shorthand(dict(ewc=True, online=True),
                                lambda paper: dict(ewc_lambda=paper["online_lambda"])),
    },
    fill=_fill,
    check=_check,
    regularizer=f"{__name__}.regularizer:from_config",
)
