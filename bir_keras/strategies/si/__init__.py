"""Synaptic intelligence (Zenke et al.; method.md 3): a regulariser that composes with any
method (``--si``, ``--method=si``). ``regularizer.py``: ``SI``, the path integral.

This module is the method's declaration (``METHOD``), read without TensorFlow."""

from __future__ import annotations

from bir_keras.settings import POSITIVE, STRENGTH, Method, Setting, Shorthand

EPSILON = 0.1


def _fill(c, paper, conv_protocol: bool) -> None:
    if c.si_c is None:
        # BI-R + SI has its own c (spelled out or by --method=bir_si alike)
        c.si_c = paper["bir_si_c"] if c.brain_inspired else paper["si_c"]


METHOD = Method(
    name="SI",
    switch="si",
    settings=(
        Setting("si", bool, "synaptic intelligence penalty (default: as --method sets it, "
                "else false)", off=False),
        Setting("si_c", float, "SI strength c (default: the paper's grid value)",
                kind=STRENGTH),
        Setting("epsilon", float, f"SI damping xi (default {EPSILON:g})", default=EPSILON,
                kind=POSITIVE),
    ),
    shorthands={"si": Shorthand(dict(si=True), lambda paper: dict(si_c=paper["si_c"]))},
    fill=_fill,
    regularizer=f"{__name__}.regularizer:from_config",
)
