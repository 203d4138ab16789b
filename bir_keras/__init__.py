"""bir_keras: brain-inspired replay (van de Ven, Siegelmann & Tolias, Nat. Commun. 2020) and
the continual-learning methods it is compared with, in TensorFlow/Keras.

The Python API (``import bir_keras as bk``)::

    stream = bk.TaskStream(x_train, y_train, x_test, y_test)     # your data (or bk.load_stream)
    config = bk.Config(experiment="custom", method="bir", classes_per_task=2)
    history = bk.train(config, stream, output_dir="runs/mine")
    run = bk.load(history.export_dir)                             # classify, sample

The names load on first use, so that ``import bir_keras`` (and the apps, which check their
flags before TensorFlow loads) stays light.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_NAMES = {
    "Config": "bir_keras.config", "ConfigError": "bir_keras.config",
    "METHODS": "bir_keras.config",
    "DataError": "bir_keras.data.sources",
    "TaskStream": "bir_keras.data.streams",
    "load_stream": "bir_keras.data.stream_files",
    "PathRefused": "bir_keras.rundirs",
    "Callback": "bir_keras.api", "History": "bir_keras.api", "SavedRun": "bir_keras.api",
    "Comparison": "bir_keras.api", "train": "bir_keras.api", "load": "bir_keras.api",
    "compare": "bir_keras.api",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'bir_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
