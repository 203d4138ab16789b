"""Continual-learning protocols: how a dataset is cut into tasks, and the scenarios.

Follows ``method.md`` section 1 and, where that was silent, the authors' code
(``data/load.py`` of GMvandeVen/brain-inspired-replay; ``fidelity.md`` items 1-3). Every
protocol exposes the same label convention so that models and methods never special-case a
scenario:

* ``capacity``: the most tasks the protocol can hold (split protocols: the dataset's
  classes / classes per task; permuted MNIST: 100, the paper's longest run). Output
  units, modes, masks and gates are sized by it, so that a run can be continued with more
  tasks (``--resume_from``) without changing any weight's shape.
* ``num_outputs``: output units of the classifier (``capacity * classes_per_task``
  in Task-IL and Class-IL, ``classes_per_task`` in Domain-IL).
* A sample of task ``t`` with within-task class ``k`` has label ``t * cpt + k``
  (Task-IL, Class-IL) or ``k`` (Domain-IL). The label is also the sample's *mode*: BI-R's
  mixture components and class gates are per output unit (``num_modes == num_outputs``),
  so in Domain-IL the prior has one mode per within-task class shared by all tasks (the
  authors' ``config['classes']``; 10 modes on permuted MNIST, fidelity.md item 12).
* ``active_table(current)`` is a ``[num_tasks, num_outputs]`` 0/1 matrix: row ``j``
  says which units take part in the softmax for a sample of task ``j`` once the
  network has been trained up to (0-based) task ``current``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# the table of experiments and its checks are settings (``bir_keras.config``), named here too
from bir_keras.config import EXPERIMENTS, SCENARIOS, check_setting, max_tasks
from bir_keras.data.sources import DataError, Dataset, load_dataset

__all__ = ["EXPERIMENTS", "SCENARIOS", "Protocol", "Task", "check_setting", "class_order",
           "make_protocol", "max_tasks", "normalise_pixels", "permutations"]


def normalise_pixels(x, mean: tuple[float, ...] | None, std: tuple[float, ...] | None):
    """The one input normalisation: float32 pixel values 0..255 (a numpy array or a
    TensorFlow tensor) divided by 255, then per channel ``(x - mean) / std`` when ``mean``
    is given (CIFAR). The constants are float32 numpy arrays, which TensorFlow takes as
    float32 constants, so both give the same float32 operations in the same order."""
    x = x / 255.0
    if mean is not None:
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x



# Per-channel statistics used to normalise CIFAR inputs (method.md 1: "per-channel normalised").
CIFAR_MEAN = {
    "cifar10": (0.4914, 0.4822, 0.4465),
    "cifar100": (0.5071, 0.4865, 0.4409),
}
CIFAR_STD = {
    "cifar10": (0.2470, 0.2435, 0.2616),
    "cifar100": (0.2673, 0.2564, 0.2762),
}


@dataclasses.dataclass
class Task:
    """One task: its raw classes and its scenario-mapped training and test data."""

    index: int
    classes: list[int]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass
class Protocol:
    """A sequence of tasks plus everything needed to map labels and active units."""

    experiment: str
    scenario: str
    num_tasks: int
    classes_per_task: int
    input_shape: tuple[int, ...]
    class_order: list[int]
    class_names: list[str]
    dataset_name: str
    # Inputs are stored compactly (uint8 pixels) and turned into model inputs in-graph:
    # x / 255 then (x - mean) / std (normalise_pixels). Cached conv features are float32
    # and pass unchanged.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    recon_loss: str = "bce"
    # input elements of the protocol's images (3072 on CIFAR), also when the inputs are
    # conv features: the VAE's latent term is divided by it (fidelity.md item 10)
    input_pixels: int = 0
    capacity: int = 0
    conv: bool = False
    features: bool = False
    # how many built tasks ``task`` keeps (None: all). Permuted MNIST builds a task from the
    # shared images in a fraction of a second, and keeping each would grow a 100-task run by
    # ~71 MB per task (60000 x 1024 training pixels and the test set): it keeps the task
    # being learned, and ``test_set`` builds the others' test sets when they are evaluated
    keep_tasks: int | None = None
    # a protocol of your own data (``bir_keras.data.streams.StreamInfo``): the input's kind
    # and shape, feature statistics, each task's class names; None for the paper's protocols
    stream: object | None = None
    _task_fn: Callable[[int], Task] | None = dataclasses.field(default=None, repr=False)
    _test_fn: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = dataclasses.field(
        default=None, repr=False)
    _tasks: dict[int, Task] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_outputs(self) -> int:
        """Number of output units of the classifier in this scenario."""
        if self.scenario == "domain":
            return self.classes_per_task
        return self.capacity * self.classes_per_task

    @property
    def num_modes(self) -> int:
        """BI-R's mixture modes and class gates: one per output unit (see the module doc)."""
        return self.num_outputs

    def task(self, index: int) -> Task:
        """Return task ``index`` (0-based), building it on first use and keeping the
        ``keep_tasks`` most recently used (all by default)."""
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task {index} out of range 0..{self.num_tasks - 1}")
        task = self._tasks.pop(index, None)
        if task is None:
            assert self._task_fn is not None
            task = self._task_fn(index)
        self._tasks[index] = task  # the most recently used last
        while self.keep_tasks is not None and len(self._tasks) > self.keep_tasks:
            del self._tasks[next(iter(self._tasks))]
        return task

    def test_set(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Task ``index``'s test inputs and labels (without building or keeping its training
        data where the protocol can make them alone: ``keep_tasks``)."""
        if index in self._tasks or self._test_fn is None:
            task = self.task(index)
            return task.x_test, task.y_test
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task {index} out of range 0..{self.num_tasks - 1}")
        return self._test_fn(index)

    def active_table(self, current: int) -> np.ndarray:
        """Active output units per task row once trained up to task ``current`` (0-based)."""
        table = np.zeros((self.capacity, self.num_outputs), np.float32)
        cpt = self.classes_per_task
        for j in range(self.capacity):
            if self.scenario == "task":
                table[j, j * cpt:(j + 1) * cpt] = 1.0
            elif self.scenario == "domain":
                table[j, :] = 1.0
            else:
                table[j, :(current + 1) * cpt] = 1.0
        return table

    @property
    def num_pairs(self) -> int:
        """Number of (task, within-task class) pairs ``task * cpt + k`` the protocol can hold."""
        return self.capacity * self.classes_per_task

    def mode_to_label(self, pairs: np.ndarray) -> np.ndarray:
        """Output label of each (task, class) pair ``task * cpt + k``: ``k`` in Domain-IL,
        the pair itself otherwise (where pairs, labels and modes coincide)."""
        pairs = np.asarray(pairs)
        return pairs % self.classes_per_task if self.scenario == "domain" else pairs

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        """Stored inputs to model inputs, in-graph: uint8 pixels / 255, then per channel
        (x - mean) / std when the protocol has them; features (float) pass unchanged."""
        import tensorflow as tf  # here: the apps check flags before TensorFlow loads

        if x.dtype != tf.uint8:
            return tf.cast(x, tf.float32)
        return normalise_pixels(tf.cast(x, tf.float32), self.mean, self.std)

    def preprocess_np(self, x: np.ndarray) -> np.ndarray:
        """Turn stored inputs into model inputs (the numpy twin of the in-graph version)."""
        if x.dtype != np.uint8:
            return x.astype(np.float32)
        return normalise_pixels(x.astype(np.float32), self.mean, self.std)

    def describe(self) -> dict:
        """A JSON-able summary used in run records and to check resumed runs."""
        return {
            "experiment": self.experiment,
            "scenario": self.scenario,
            "num_tasks": self.num_tasks,
            "classes_per_task": self.classes_per_task,
            "input_shape": list(self.input_shape),
            "class_order": [int(c) for c in self.class_order],
            "dataset": self.dataset_name,
            "features": self.features,
            **({"capacity": self.capacity, "class_names": list(self.class_names),
                **self.stream.describe()} if self.stream is not None else {}),
        }

    def with_features(self, fn: Callable[[np.ndarray], np.ndarray], dim: int) -> Protocol:
        """A protocol whose inputs are ``fn(preprocessed pixels)`` (frozen conv features)."""
        parent = self

        def build(i: int) -> Task:
            task = parent.task(i)
            return Task(task.index, task.classes, fn(parent.preprocess_np(task.x_train)),
                        task.y_train, fn(parent.preprocess_np(task.x_test)), task.y_test)

        return dataclasses.replace(self, input_shape=(dim,), mean=None, std=None,
                                   recon_loss="mse", features=True, _task_fn=build, _tasks={},
                                   _test_fn=None, keep_tasks=None)


# The authors' code keeps the label order for seeds below 10 on its 10-class split
# protocols and permutes from 10 up; split CIFAR-100 is always permuted (main_cl.py:
# ``exception=args.seed < 10``; data/load.py). Split CIFAR-10, Fashion-MNIST and the digits
# demo follow split MNIST's rule.
ALWAYS_PERMUTED = ("split_cifar100",)


def class_order(experiment: str, num_classes: int, seed: int,
                keep_label_order: bool = False) -> list[int]:
    """Dataset class of each learned position: task ``i`` holds ``order[i*cpt:(i+1)*cpt]``.

    As the authors' code (data/load.py, after ``np.random.seed(seed)``): it draws
    ``p = permutation(num_classes)`` and relabels every image ``y -> p[y]``; task ``i``
    then holds new labels ``i*cpt .. i*cpt+cpt-1``, i.e. the dataset classes
    ``argsort(p)[i*cpt:(i+1)*cpt]`` in that within-task order (fidelity.md item 1)."""
    if keep_label_order or (seed < 10 and experiment not in ALWAYS_PERMUTED):
        return list(range(num_classes))
    p = np.random.RandomState(seed).permutation(num_classes)
    return [int(c) for c in np.argsort(p)]


def permutations(seed: int, num_tasks: int, size: int = 1024) -> list[np.ndarray]:
    """Permuted MNIST's pixel permutation per task: below seed 10 task 1 keeps the identity
    and tasks 2.. draw ``permutation(size)``; from 10 up every task does (the authors'
    data/load.py with ``np.random.seed(seed)``; fidelity.md item 2). The first tasks are the
    same whatever ``num_tasks`` is, so a run can be continued with more tasks."""
    rng = np.random.RandomState(seed)
    if seed < 10:
        return [np.arange(size)] + [rng.permutation(size) for _ in range(num_tasks - 1)]
    return [rng.permutation(size) for _ in range(num_tasks)]


def _flatten(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def make_protocol(experiment: str, scenario: str, *, tasks: int | None = None,
                  data_dir: str | None = None, seed: int = 0,
                  keep_label_order: bool = False, dataset: Dataset | None = None) -> Protocol:
    """Build a protocol; ``dataset`` overrides loading (used by tests with generated data).
    The settings are checked by ``check_setting`` (``ConfigError``) before any data loads; a
    ``dataset`` with too few classes for the tasks is a ``DataError``."""
    check_setting(experiment, scenario, tasks)
    ds_name, default_tasks, cpt, flat = EXPERIMENTS[experiment]
    num_tasks = default_tasks if tasks is None else int(tasks)
    if dataset is None:
        dataset = load_dataset(ds_name, data_dir)
    permuted = experiment == "permuted_mnist"
    if not permuted and num_tasks * cpt > dataset.num_classes:
        raise DataError(f"{experiment} with {num_tasks} tasks needs {num_tasks * cpt} classes, "
                        f"the data has {dataset.num_classes}")

    common = dict(experiment=experiment, scenario=scenario, num_tasks=num_tasks,
                  classes_per_task=cpt, class_names=list(dataset.class_names),
                  dataset_name=dataset.name)

    if permuted:
        # method.md 1: zero-padded to 32x32, one fixed pixel permutation per task drawn
        # from the seed (``permutations``); labels shifted by task x 10 in Task-IL and
        # Class-IL (the authors' data/load.py: ``y + task_id * classes_per_task``).
        def pad(x: np.ndarray) -> np.ndarray:
            h, w = x.shape[1:3]
            ph, pw = (32 - h) // 2, (32 - w) // 2
            out = np.zeros((len(x), 32, 32), np.uint8)
            out[:, ph:ph + h, pw:pw + w] = x[..., 0]
            return out.reshape(len(x), -1)

        x_tr, x_te = pad(dataset.x_train), pad(dataset.x_test)
        perms = permutations(seed, num_tasks)
        shift = 0 if scenario == "domain" else cpt

        def test_set(i: int) -> tuple[np.ndarray, np.ndarray]:
            # np.take along the pixel axis: the same array as x[:, p], 11x faster (0.05
            # against 0.52 s for the 60000 training images; numpy's fancy index on axis 1
            # gathers element by element)
            return np.take(x_te, perms[i], axis=1), (dataset.y_test + i * shift).astype(np.int32)

        def build(i: int) -> Task:
            return Task(i, list(range(cpt)), np.take(x_tr, perms[i], axis=1),
                        (dataset.y_train + i * shift).astype(np.int32), *test_set(i))

        # the authors' code permutes each image as it is read (data/load.py: one transform
        # per task over the one MNIST dataset), so its memory stays flat in the number of
        # tasks; here a task's permuted arrays exist while it is learned (``keep_tasks``)
        proto = Protocol(input_shape=(1024,), class_order=list(range(cpt)), _task_fn=build,
                         _test_fn=test_set, keep_tasks=1, capacity=max(num_tasks, 100),
                         input_pixels=1024, **common)
        proto.permutations = perms  # type: ignore[attr-defined]
        return proto

    order = class_order(experiment, dataset.num_classes, seed, keep_label_order)
    conv = not flat
    shape = (int(np.prod(dataset.x_train.shape[1:])),) if flat else tuple(dataset.x_train.shape[1:])

    def build(i: int) -> Task:
        classes = order[i * cpt:(i + 1) * cpt]
        parts = []
        for x, y in ((dataset.x_train, dataset.y_train), (dataset.x_test, dataset.y_test)):
            keep = np.isin(y, classes)
            xs, ys = x[keep], y[keep]
            # within-task index follows the order the classes take in `order`
            rank = np.zeros(dataset.num_classes, np.int32)
            rank[classes] = np.arange(cpt)
            within = rank[ys]
            label = within if scenario == "domain" else i * cpt + within
            parts.append((_flatten(xs) if flat else xs, label.astype(np.int32)))
        (xtr, ytr), (xte, yte) = parts
        if len(xtr) == 0 or len(xte) == 0:
            raise DataError(f"task {i + 1} (classes {classes}) has no training or test data")
        return Task(i, [int(c) for c in classes], xtr, ytr, xte, yte)

    mean = std = None
    recon = "bce"
    if ds_name in CIFAR_MEAN:
        mean, std, recon = CIFAR_MEAN[ds_name], CIFAR_STD[ds_name], "mse"
    return Protocol(input_shape=shape, class_order=order, _task_fn=build, mean=mean, std=std,
                    recon_loss=recon, conv=conv, capacity=dataset.num_classes // cpt,
                    input_pixels=int(np.prod(dataset.x_train.shape[1:])), **common)
