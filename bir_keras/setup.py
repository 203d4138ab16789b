"""What a run is made of before it trains: a resolved config, its protocol (conv features
cached once where the conv layers are frozen) and the pre-trained conv trunk (``prepare``);
the run itself is ``bir_keras.experiment``, and what it saves on Ctrl-C and logs to
TensorBoard (``salvage``, ``tensorboard_log``) reads a ``Setup`` from here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bir_keras import rundirs
from bir_keras.config import CUSTOM, Config, ConfigError, resolve
from bir_keras.data.protocols import Protocol, make_protocol
from bir_keras.data.sources import DataError
from bir_keras.data.streams import TaskStream, read_learned, stream_protocol
from bir_keras.models.layers import CONV_FEATURES, conv_trunk
from bir_keras.weightsfile import check_weights_file

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONV_WEIGHTS = PACKAGE_ROOT / "saved_models" / "cifar10_conv" / "conv_trunk.weights.h5"


@dataclasses.dataclass
class Setup:
    """A resolved config, its protocol (features if conv layers are frozen and cached), the
    pixel-level protocol and the pre-trained conv trunk (CIFAR only)."""

    config: Config
    protocol: Protocol
    pixels: Protocol
    trunk: object | None


def load_trunk(path: str | None):
    """The CIFAR conv trunk with pre-trained weights (``path='random'``: untrained, for tests)."""
    trunk = conv_trunk()
    if path == "random":
        return trunk
    flag = "--conv_weights" if path else "the shipped --conv_weights default"
    path = Path(path) if path else DEFAULT_CONV_WEIGHTS
    if not path.exists():
        raise ConfigError(f"pre-trained conv weights not found at {path}; run "
                          "`python -m apps.pretrain` or pass --conv_weights=FILE")
    check_weights_file(path, flag)  # one line for a file that is not the trunk's weights
    trunk.load_weights(str(path))
    return trunk


def prepare(config: Config, data: TaskStream | None = None,
            resume_from: str | None = None) -> Setup:
    """Load the data, fill the paper's defaults, check flags, cache frozen conv features.

    ``config.experiment == "custom"``: the data is ``data`` (a ``TaskStream``) or the
    ``.npz`` or folder of task folders at ``config.data_dir``; ``resume_from``, an export of
    a run on such data, continues it (its tasks' test sets and input statistics are read
    from there: ``bir_keras.data.streams.read_learned``)."""
    if config.experiment == CUSTOM:
        pixels = stream_for(config, data, resume_from)
    else:
        if data is not None:
            raise ConfigError(f"data is read by experiment={CUSTOM!r} (your own data); "
                              f"{config.experiment} loads its own")
        pixels = make_protocol(config.experiment, config.scenario, tasks=config.tasks,
                               data_dir=config.data_dir, seed=config.seed,
                               keep_label_order=config.keep_label_order)
    c = resolve(config, pixels.conv)
    if pixels.stream is not None:
        check_stream_run(c, pixels)
    protocol, trunk = pixels, None
    if pixels.conv:
        trunk = load_trunk(c.conv_weights)
        trunk.trainable = False
        # Frozen layers give the same output for the same input: compute the features of
        # each dataset once (internal replay, method.md 4.3.4) and train the FC part on them.
        if c.hidden or (c.freeze_convE and c.replay != "generative"):
            def features(x: np.ndarray) -> np.ndarray:
                return np.concatenate([trunk(x[s:s + 1000], training=False).numpy()
                                       for s in range(0, len(x), 1000)])
            protocol = pixels.with_features(features, CONV_FEATURES)
    return Setup(c, protocol, pixels, trunk)


def stream_for(config: Config, data: TaskStream | None, resume_from: str | None) -> Protocol:
    """The protocol of a run on your own data (``prepare``)."""
    if data is None and not config.data_dir:
        raise ConfigError(f"--experiment={CUSTOM} reads your data: pass --data_dir=FILE.npz or "
                          "a folder of task folders (data= in Python)")
    if data is not None and config.data_dir:
        raise ConfigError("give the data once: data= or data_dir, not both")
    if data is None:
        from bir_keras.data.stream_files import load_stream
        data = load_stream(config.data_dir)
    learned = None
    if resume_from:
        learned = read_learned(resume_from, rundirs.read_resume_record(resume_from))
        if not learned.tasks:
            learned = None   # nothing learned yet: the same data starts again
    return stream_protocol(data, config.scenario, classes_per_task=config.classes_per_task,
                           task_classes=config.task_classes, tasks=config.tasks,
                           capacity=config.capacity, learned=learned)


def check_stream_run(c: Config, protocol: Protocol) -> None:
    """Refuse (``DataError``) a run its stream cannot feed: a task with fewer training
    samples than a batch, or a continuation (tasks learned before come without their
    training data) of a method that trains on the old tasks' data (Joint)."""
    first = protocol.stream.learned_before  # type: ignore[union-attr]
    if first and c.replay == "offline":
        raise DataError("Joint training learns from every task's data, which a saved run "
                        "does not keep: it cannot learn new data later (BI-R and the other "
                        "methods can)")
    for t in range(first, protocol.num_tasks):
        n = len(protocol.task(t).y_train)
        if n < c.batch:
            raise DataError(f"{protocol.dataset_name}: task {t + 1} has {n} training samples, "
                            f"fewer than a batch (--batch={c.batch}): lower --batch or give "
                            "more data")
