"""What a run asks of memory, known from its settings before any data loads, and the
refusal of a run this machine cannot hold (``check_memory``: ``NotEnoughMemory``).

The estimate is rough and on the high side: the networks' weights with Adam's two slots,
the frozen copies and the generator (about 8 times the classifier's weights), or one
iteration's activations kept for the backward pass (about 16 times a batch's inputs and
hidden units), whichever is larger, all float32. The input size is the protocol's
(``INPUT_VALUES``), what ``data.protocols`` makes of each experiment's images."""

from __future__ import annotations

from bir_keras.config import CUSTOM, EXPERIMENT_DEFAULTS, Config

# values per input, as data.protocols feeds the networks: MNIST-like images flattened
# (28 x 28), permuted MNIST zero-padded to 32 x 32 before it is permuted (method.md 1),
# scikit-learn's 8 x 8 digits, CIFAR's 32 x 32 x 3 pixels (the conv trunk's input)
INPUT_VALUES = {"split_mnist": 784, "split_fashion_mnist": 784, "permuted_mnist": 1024,
                "split_digits": 64, "split_cifar10": 3072, "split_cifar100": 3072}
# your own data's size is known once it loads: taken as CIFAR's
CUSTOM_INPUT_VALUES = 3072


class NotEnoughMemory(RuntimeError):
    """A run whose estimate is more than the memory available (before any work)."""


def input_values(experiment: str) -> int:
    """Values per input that the networks take (``INPUT_VALUES``)."""
    return CUSTOM_INPUT_VALUES if experiment == CUSTOM else INPUT_VALUES[experiment]


def gib(n: float) -> str:
    """``n`` bytes as whole GiB (from 1 GiB) or MiB."""
    return f"{n / 2 ** 30:,.0f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


def memory_estimate(c: Config) -> tuple[int, str]:
    """(bytes, what to lower): a rough upper estimate of what a config asks of memory, from
    the networks' weights (``--fc_units``) or one iteration's activations (``--batch``,
    ``--batch_replay``), whichever is larger."""
    defaults = EXPERIMENT_DEFAULTS.get(c.experiment, {})
    units = c.fc_units or defaults.get("fc_units", 400)
    batch = (c.batch or defaults.get("batch", 128)) + (c.batch_replay or 0)
    inputs = input_values(c.experiment)
    layers = max(c.fc_layers, 1)
    # weights of classifier and generator, Adam's two slots, frozen copies: ~ x8, float32
    weights = 8 * 4 * (inputs * units + (layers - 1) * units * units)
    # activations kept for the backward pass of classifier and VAE: ~ x16, float32
    activations = 16 * 4 * batch * (inputs + layers * units)
    if weights >= activations:
        return weights, f"--fc_units (--fc_units={units} needs about {gib(weights)})"
    return activations, (f"--batch or --batch_replay ({batch} samples per iteration need "
                         f"about {gib(activations)})")


def check_memory(c: Config, seeds: int = 1, replicas: int = 1) -> str:
    """Raise ``NotEnoughMemory`` for a config whose estimate (times the seeds trained at
    once, and the replicas on this machine, each of which holds the networks) is more than
    the memory available; else return the hint that an out-of-memory error later names."""
    from bir_keras.appfiles import available_memory

    need, hint = memory_estimate(c)
    need *= seeds * max(replicas, 1)
    free = available_memory()
    if free is not None and need > free:
        raise NotEnoughMemory(f"out of memory: this run needs more than the {gib(free)} "
                              f"available; lower {hint}")
    return hint
