"""The ``tf.distribute`` strategy a run trains under: the default (one device), mirrored
over this machine's devices (GPUs, or ``num_logical_cpus`` logical CPUs), or multi-worker
over the processes that ``TF_CONFIG`` names (every process trains; only the chief
writes)."""

from __future__ import annotations

import json
import os

from bir_keras.config import ConfigError


def make_strategy(name: str, num_logical_cpus: int = 0):
    """(strategy or None for the default one, whether this process is the chief).
    ``ConfigError`` for a ``TF_CONFIG`` that is missing, not JSON or names no chief or
    worker of its cluster. Logical CPUs must be set before TensorFlow initialises."""
    import tensorflow as tf

    if num_logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus)
    if name == "default":
        return None, True
    if name == "mirrored":
        # the logical CPUs when asked for (--num_logical_cpus), else the GPUs, else the CPU
        gpus = [] if num_logical_cpus else tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices), True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not tf_config:
        raise ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable")
    cluster = tf_config.get("cluster") or {}
    task = tf_config.get("task") or {}
    kind, index = task.get("type"), task.get("index", 0)
    # every process trains (the collectives need all of them); only the chief writes
    if kind not in ("chief", "worker") or kind not in cluster \
            or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG: task {task} is not a chief or worker of the cluster "
                          f"{cluster}")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return strategy, is_chief
