"""What a method declares about its settings, without TensorFlow: ``Setting`` (one field of
``bir_keras.config.Config`` and its flag) and ``Method`` (a method's settings, its
``--method`` shorthands, how it is selected, its defaults and checks, whether its seeds can
be packed, and where its Trainer or regulariser is). Each method's declaration is the
``METHOD`` of its package in ``bir_keras.strategies`` (``strategies/buffer/__init__.py``);
the registry ``bir_keras.strategies.METHOD_MODULES`` lists them, and ``Config``, the checks
(``bir_keras.config``) and the apps' flags (``apps.common``) are built from it.

``ConfigError`` lives here (re-exported by ``bir_keras.config``) so that a declaration can
refuse its settings without importing the module built from it. So do the rules that more
than one setting shares (a positive rate, a penalty strength, a proportion): each is written
once, here, and ``bir_keras.config.check`` applies it to every setting of its kind.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """Incompatible or invalid settings, detected before any training starts."""


# float32's smallest normal and largest finite numbers: a rate or strength outside them is 0
# or infinite once the networks (float32) use it
FLOAT32_TINY = 1.1754943508222875e-38
FLOAT32_MAX = 3.4028234663852886e38

# the kinds of float settings, each with its one rule (``check_float``)
POSITIVE = "positive"       # a rate or temperature: positive, finite, not 0 or inf in float32
STRENGTH = "strength"       # a penalty strength: finite, >= 0, finite in float32
PROPORTION = "proportion"   # a proportion of units: in [0, 1)


def check_float(name: str, kind: str, v: float | None) -> None:
    """Refuse (``ConfigError``) the value ``v`` of the float setting ``name`` of ``kind``
    (``POSITIVE``, ``STRENGTH`` or ``PROPORTION``); None passes (not set)."""
    if v is None:
        return
    if kind == POSITIVE:
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"--{name} must be a positive finite number, got {v}")
        if not FLOAT32_TINY <= v <= FLOAT32_MAX:
            raise ConfigError(f"--{name}={v} is {'0' if v < 1 else 'infinite'} in float32, in "
                              "which the networks compute: use a value in "
                              f"[{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}]")
    elif kind == STRENGTH:
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a finite number >= 0, got {v}")
        if v > FLOAT32_MAX:
            raise ConfigError(f"--{name}={v} is infinite in float32, in which the penalty is "
                              f"computed: use at most {FLOAT32_MAX:.3g}")
    elif kind == PROPORTION:
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"--{name} must be in [0, 1), got {v}")
    else:
        raise ValueError(f"unknown kind of setting {kind!r}")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting a method adds: a field of ``Config`` and a flag of apps.train.

    ``type``: bool, int, float or str (the field is ``type | None``, the flag's type);
    ``default``: ``Config``'s default (None: "the method's or the paper's value", filled by
    the method's ``fill``); ``off``: the value ``resolve`` gives a switch that neither the
    setting nor a ``--method`` sets (``False``: its ``Config`` default stays None so that a
    value given is told from one not); ``help``: the flag's help; ``range``: an integer's
    (lowest, highest), ``kind``: a float's rule (``check_float``), both checked by
    ``bir_keras.config.check`` whenever the value is set."""

    name: str
    type: type
    help: str
    default: Any = None
    off: Any = None
    range: tuple[int, int] | None = None
    kind: str | None = None


@dataclasses.dataclass(frozen=True)
class Shorthand:
    """A ``--method`` name: the settings it ``sets`` (a flag given otherwise is refused)
    and ``paper``, the paper's grid-searched values for a setting (from
    ``bir_keras.config.paper_hparams``' row), which explicit flags override."""

    sets: Mapping[str, Any]
    paper: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's declaration: everything the settings know of it.

    A method is selected by ``replay`` (the ``--replay`` value its Trainer answers;
    ``replay_help`` is its entry in that flag's help) or, if it composes with any replay, by
    its ``switch`` (a bool setting: ``--ewc``). ``settings``: the ``Config`` fields and flags
    it adds. ``shorthands``: its ``--method`` names. ``distill``: its replay can be labelled
    by the previous model (``--distill``). ``fill(c, paper, conv_protocol)``: fills its
    settings left None in the config ``c`` being resolved (``paper``: the setting's row of
    the paper's grid search, ``bir_keras.config.paper_row``), and the defaults of every
    run's settings that follow from its own (BI-R's ``distill``, ``hidden``,
    ``freeze_convE``); every method's runs, in the registry's order.
    ``check(c, conv_protocol)``: refuses what its settings cannot be (``ConfigError``), each
    rule that is its own; called for every config, selected or not. ``unpackable``: why the
    seeds of a run with it cannot share one step (``--seeds_at_once``), or None.
    ``trainer``: ``"module:Class"`` of its Trainer (or a function of the resolved config
    that names it); ``regularizer``: ``"module:function"`` that builds its regulariser from
    a resolved config. Neither module is imported until a run builds it (they import
    TensorFlow)."""

    name: str
    replay: str | None = None
    replay_help: str = ""
    switch: str | None = None
    settings: tuple[Setting, ...] = ()
    shorthands: Mapping[str, Shorthand] = dataclasses.field(default_factory=dict)
    distill: bool = False
    fill: Callable[[Any, dict[str, Any], bool], None] | None = None
    check: Callable[[Any, bool], None] | None = None
    unpackable: str | None = None
    trainer: str | Callable[[Any], str] | None = None
    regularizer: str | None = None

    def selected(self, c: Any) -> bool:
        """Whether the config ``c`` runs this method."""
        if self.replay is not None:
            return c.replay == self.replay
        return bool(getattr(c, self.switch))

    def trainer_class(self, c: Any) -> type:
        """The Trainer class that runs the resolved config ``c`` (its module imported now)."""
        return _load(self.trainer if isinstance(self.trainer, str) else self.trainer(c))

    def make_regularizer(self, c: Any) -> Any:
        """This method's regulariser for the resolved config ``c`` (its module imported
        now)."""
        return _load(self.regularizer)(c)


def _load(path: str) -> Any:
    """The object ``"module:name"`` names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_registry(methods: tuple[Method, ...]) -> None:
    """Refuse (``ValueError``: a mistake in the code, not in a user's settings) declarations
    that cannot make one set of settings: a method selected by neither or both a
    ``--replay`` value and a switch, a switch that is not one of its own bool settings, and
    a ``--replay`` value, shorthand or setting that two declarations (or one, twice)
    claim."""
    seen: dict[str, str] = {}

    def claim(what: str, name: str) -> None:
        if what + name in seen:
            raise ValueError(f"{what} {name!r} is declared twice (by {seen[what + name]} and "
                             f"{m.name})")
        seen[what + name] = m.name

    for m in methods:
        if (m.replay is None) == (m.switch is None):
            raise ValueError(f"{m.name}: declare a --replay value or a switch, not both or "
                             "neither")
        if m.switch is not None and not any(s.name == m.switch and s.type is bool
                                            for s in m.settings):
            raise ValueError(f"{m.name}: its switch {m.switch!r} is not one of its bool "
                             "settings")
        if m.replay is not None:
            claim("--replay value", m.replay)
        for name in m.shorthands:
            claim("--method", name)
        for s in m.settings:
            claim("setting", s.name)
