"""The regularisers a config asks for (``--ewc``, ``--online``, ``--si``): the one place
that maps the settings to ``ewc.EWC`` and ``si.SI``; the Trainer builds them."""

from __future__ import annotations

from bir_keras.config import Config
from bir_keras.strategies.ewc import EWC
from bir_keras.strategies.regularizers import Regularizer
from bir_keras.strategies.si import SI


def make_regularizers(config: Config) -> list[Regularizer]:
    """EWC / online EWC / SI as the config asks for."""
    regs: list[Regularizer] = []
    if config.ewc:
        regs.append(EWC(config.ewc_lambda, online=config.online, gamma=config.gamma))
    if config.si:
        regs.append(SI(config.si_c, config.epsilon))
    return regs
