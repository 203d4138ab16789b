"""Your own data as a stream of tasks: NumPy arrays (or an ``.npz``, or a folder of task
folders, ``bir_keras.data.stream_files``) cut into tasks by classes, for any method.

A :class:`TaskStream` holds the arrays and the class names; :func:`stream_protocol` cuts it
into tasks (``classes_per_task`` in the stream's class order, or explicit ``task_classes``)
in a scenario and gives the :class:`~bir_keras.data.protocols.Protocol` every method trains
on, with the label convention of the paper's protocols (task ``t``'s ``k``-th class is
label ``t * classes_per_task + k``; ``k`` in Domain-IL).

Two kinds of input, told by their dtype:

* **pixels** (``uint8``, 0..255; images ``[N, H, W]`` or ``[N, H, W, C]``, any size, grey
  or colour): flattened into the fully connected networks, divided by 255 as the paper's
  MNIST inputs, reconstructed with binary cross-entropy (method.md 4.1);
* **features** (floating point ``[N, D]``, any ``D``: an embedding from your own
  backbone): standardised per feature with the mean and standard deviation of the
  training data of the run that starts the model (kept in its export, so that later tasks
  are scaled alike) and reconstructed with squared error, as the paper's internal replay
  reconstructs conv features (method.md 4.3.4).

A run's ``capacity`` (tasks it may ever hold; default: the tasks of the stream) sizes the
output units, modes and gates, so that a saved run can learn new classes later
(``--resume_from`` with new data, :class:`Learned`) without any weight changing shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bir_keras import rundirs
from bir_keras.config import CUSTOM, Config
from bir_keras.data.protocols import Protocol, Task
from bir_keras.data.sources import DataError

__all__ = ["CUSTOM", "Learned", "TaskStream", "check_stream_run", "protocol_for",
           "read_learned", "save_learned", "stream_protocol", "task_split"]

# CUSTOM: the experiment name of a run on a stream (``Config.experiment``, ``--experiment``)
PIXELS, FEATURES = "pixels", "features"


class TaskStream:
    """Training and test data with their class names, checked on creation (``DataError``).

    ``y_*`` hold integer labels or names (strings); a class is known by its name:
    ``class_names[label]`` when ``class_names`` is given (labels 0..C-1), else the label
    itself as a string. ``tasks``, optional, fixes the classes of each task (a folder of
    task folders does); otherwise the run says how classes form tasks. ``task_ids``, with
    ``tasks``: the task of each training and each test sample (a folder of task folders:
    its folder), so that a class name in several tasks (Domain-IL: ``even``, ``odd``) keeps
    each task's samples apart.

    Example::

        import numpy as np, bir_keras as bk
        x = np.random.randint(0, 256, (600, 8, 8), np.uint8)
        y = np.repeat(np.arange(6), 100)
        stream = bk.TaskStream(x[::2], y[::2], x[1::2], y[1::2])
    """

    def __init__(self, x_train, y_train, x_test, y_test, class_names: Sequence | None = None,
                 tasks: Sequence[Sequence] | None = None, name: str = CUSTOM,
                 task_ids: tuple | None = None):
        arrays = {}
        for key, value in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                           ("y_test", y_test)):
            try:
                arrays[key] = np.asarray(value)
            except (ValueError, TypeError) as e:
                raise DataError(f"{name}: {key} is not an array ({e})") from None
        self.name = str(name)
        self.kind = _kind(arrays["x_train"], "x_train", self.name)
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if _kind(x, f"x_{split}", self.name) != self.kind or x.shape[1:] != arrays["x_train"].shape[1:]:
                raise DataError(f"{self.name}: x_{split} is {_describe(x)} and x_train "
                                f"{_describe(arrays['x_train'])}: both need one shape per sample "
                                "and one kind (uint8 pixels or float features)")
            if y.ndim != 1 or len(y) != len(x):
                raise DataError(f"{self.name}: y_{split} must be one label per sample of x_{split} "
                                f"({len(x)}), got shape {list(y.shape)}")
            if len(x) == 0:
                raise DataError(f"{self.name}: x_{split} holds no samples")
            if self.kind == FEATURES and not np.all(np.isfinite(x)):
                bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
                raise DataError(f"{self.name}: x_{split} has {bad} samples with NaN or infinite "
                                "values: remove or impute them")
        names, labels = _class_names(arrays, class_names, self.name)
        self.class_names: list[str] = names
        self.x_train, self.x_test = arrays["x_train"], arrays["x_test"]
        self.y_train, self.y_test = labels["train"], labels["test"]   # indices into names
        self.sample_shape = tuple(int(d) for d in self.x_train.shape[1:])
        self.tasks = None if tasks is None else [[self._name(c) for c in t] for t in tasks]
        self.task_ids = None
        if task_ids is not None:
            ids = [np.asarray(t) for t in task_ids]
            if self.tasks is None or len(ids) != 2 or len(ids[0]) != len(self.y_train) \
                    or len(ids[1]) != len(self.y_test) \
                    or any(len(i) and (i.min() < 0 or i.max() >= len(self.tasks)) for i in ids):
                raise DataError(f"{self.name}: task_ids must give each training and test "
                                "sample's task, an index into tasks")
            self.task_ids = (ids[0].astype(np.int64), ids[1].astype(np.int64))
        # what reading files changed that the caller may tell the user (``stream_files``)
        self.notes: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """SHA-256 of the stream's arrays and class names: a saved run knows its own data
        from new data by it (``stream_protocol(learned=...)``). Computed once per stream
        (the apps cut the data before TensorFlow loads and again in the run; a stream is a
        value: its arrays are not to be changed in place)."""
        if getattr(self, "_fingerprint", None) is not None:
            return self._fingerprint
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
        h.update(json.dumps([self.class_names, self.tasks]).encode())
        self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _name(self, c) -> str:
        """The class name of ``c`` (a name, or a label when the stream's labels are ints)."""
        key = str(c)
        if key not in self.class_names:
            raise DataError(f"{self.name}: class {c!r} is not in the data (its classes: "
                            f"{_listed(self.class_names)})")
        return key

    def __repr__(self) -> str:
        return (f"TaskStream({self.name!r}, {self.kind} {list(self.sample_shape)}, "
                f"{len(self.x_train)} train / {len(self.x_test)} test samples, "
                f"{len(self.class_names)} classes)")


def _describe(x: np.ndarray) -> str:
    return f"{x.dtype} {list(x.shape)}"


def _listed(names: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _kind(x: np.ndarray, key: str, name: str) -> str:
    """``pixels`` (uint8 images) or ``features`` (float vectors); refused otherwise."""
    if x.dtype == np.uint8 and x.ndim in (3, 4) and (x.ndim == 3 or x.shape[-1] in (1, 3)):
        return PIXELS
    if np.issubdtype(x.dtype, np.floating) and x.ndim == 2:
        return FEATURES
    if np.issubdtype(x.dtype, np.floating) and x.ndim in (3, 4):
        raise DataError(f"{name}: {key} is float images {_describe(x)}: pass images as uint8 "
                        "pixels 0..255 (e.g. (x * 255).round().astype(np.uint8)) or features "
                        "as a float array [N, D]")
    raise DataError(f"{name}: {key} is {_describe(x)}: give uint8 images [N, H, W] or "
                    "[N, H, W, C] with 1 or 3 channels, or float features [N, D]")


def _class_names(arrays: dict, class_names: Sequence | None, name: str):
    """Each class's name and each split's labels as indices into them."""
    ys = {s: arrays[f"y_{s}"] for s in ("train", "test")}
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise DataError(f"{name}: class_names repeats a name")
        for s, y in ys.items():
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(f"{name}: with class_names, y_{s} must be integer labels "
                                f"0..{len(names) - 1}, got {y.dtype}")
            if len(y) and (y.min() < 0 or y.max() >= len(names)):
                raise DataError(f"{name}: y_{s} has labels outside 0..{len(names) - 1} "
                                f"(the {len(names)} class_names): e.g. "
                                f"{int(y[(y < 0) | (y >= len(names))][0])}")
        return names, {s: y.astype(np.int64) for s, y in ys.items()}
    for s, y in ys.items():
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind in "US"):
            raise DataError(f"{name}: y_{s} must be integer labels or class names, got {y.dtype}")
    keys = {s: y.astype(str) if y.dtype.kind in "US" else y for s, y in ys.items()}
    found = np.unique(keys["train"])
    names = [str(v) for v in found]
    test_only = sorted(set(str(v) for v in np.unique(keys["test"])) - set(names))
    if test_only:
        raise DataError(f"{name}: y_test has classes with no training samples: "
                        f"{_listed(test_only)}")
    return names, {s: np.searchsorted(found, k).astype(np.int64) for s, k in keys.items()}


def task_split(stream: TaskStream, classes_per_task: int | None = None,
               task_classes: Sequence[Sequence] | None = None) -> list[list[str]]:
    """The class names of each task: ``task_classes`` as given, the stream's own tasks (a
    folder of task folders), or the stream's classes ``classes_per_task`` at a time in their
    order. Every task has the same number of classes (its output units)."""
    if task_classes is not None and classes_per_task is not None \
            and any(len(t) != classes_per_task for t in task_classes):
        raise DataError("task_classes and classes_per_task disagree: give one of them")
    if stream.task_ids is not None and (task_classes is not None or classes_per_task not in (
            None, len(stream.tasks[0]))):
        raise DataError(f"{stream.name}: its task folders fix its tasks (of "
                        f"{len(stream.tasks[0])} classes): give no task_classes or another "
                        "classes_per_task")
    if task_classes is not None:
        tasks = [[stream._name(c) for c in t] for t in task_classes]
    elif stream.tasks is not None:
        tasks = stream.tasks
    elif classes_per_task is not None:
        order = stream.class_names
        if classes_per_task < 1 or len(order) % classes_per_task:
            raise DataError(f"{stream.name}: its {len(order)} classes do not split into tasks "
                            f"of {classes_per_task} classes: give classes_per_task dividing "
                            f"{len(order)}, or task_classes")
        tasks = [order[i:i + classes_per_task] for i in range(0, len(order), classes_per_task)]
    else:
        raise DataError(f"{stream.name}: say how its classes form tasks: classes_per_task "
                        "(--classes_per_task) or task_classes (--task_classes)")
    if not tasks or any(not t for t in tasks):
        raise DataError(f"{stream.name}: every task needs at least one class")
    sizes = sorted({len(t) for t in tasks})
    if len(sizes) > 1:
        raise DataError(f"{stream.name}: every task needs the same number of classes (the "
                        f"output units of a task), got tasks of {sizes} classes")
    for t in tasks:
        if len(set(t)) != len(t):
            raise DataError(f"{stream.name}: task {t} names a class twice")
    return tasks


@dataclasses.dataclass
class Learned:
    """What a saved run keeps of the tasks it learned, for a continuation on new data: the
    class names of each task, their test sets (as the protocol stores them, labels as the
    model's) and the input's kind, shape and feature statistics. No training data."""

    class_names: list[str]
    tasks: list[list[str]]
    test_sets: list[tuple[np.ndarray, np.ndarray]]
    kind: str
    sample_shape: tuple[int, ...]
    feature_mean: np.ndarray | None
    feature_std: np.ndarray | None
    capacity: int
    fingerprint: str = ""


def stream_protocol(stream: TaskStream, scenario: str, *, classes_per_task: int | None = None,
                    task_classes: Sequence[Sequence] | None = None, tasks: int | None = None,
                    capacity: int | None = None, learned: Learned | None = None) -> Protocol:
    """The protocol of ``stream`` in ``scenario``: its tasks (``task_split``), the first
    ``tasks`` of them (default all), after the tasks of ``learned`` when it continues a
    saved run. ``capacity``: the most tasks the run may ever hold (default: the tasks of
    this stream; a continuation keeps its run's). ``DataError`` for data that cannot
    form the tasks, with the first reason."""
    split = task_split(stream, classes_per_task, task_classes)
    fingerprint = stream.fingerprint()
    first = 0
    if learned is not None:
        _check_continues(stream, learned, len(split[0]))
        capacity = learned.capacity
        if fingerprint == learned.fingerprint:
            # the run's own data again (more tasks, or after a stop): cut as it was
            if split[:len(learned.tasks)] != learned.tasks[:len(split)]:
                raise DataError(f"{stream.name}: the saved run cut this data into other tasks "
                                f"({learned.tasks}): give the split it was trained with")
        else:
            # new data: the tasks learned come from the saved run (their test sets); in
            # Class-IL the new data brings classes the run has not seen
            old = {c for t in learned.tasks for c in t}
            again = [c for c in stream.class_names if c in old]
            if again and scenario == "class":
                raise DataError(f"{stream.name}: class {again[0]!r} was learned already by the "
                                "saved run: in Class-IL new data brings classes the model has "
                                "not seen (or give the run's own data to continue it)")
            first = len(learned.tasks)
    all_tasks = (learned.tasks if first else []) + split
    if tasks is not None:
        if tasks <= first:
            raise DataError(f"tasks={tasks}: the saved run learned {first} tasks already; "
                            "ask for more")
        all_tasks = all_tasks[:tasks]
    cpt = len(all_tasks[0])
    if capacity is None:
        capacity = len(all_tasks)
    if len(all_tasks) > capacity:
        where = "the saved run's" if learned else "the"
        raise DataError(f"{stream.name}: {len(all_tasks)} tasks exceed {where} capacity of "
                        f"{capacity} tasks ({capacity * cpt} classes): the output units are "
                        "sized at the start; start a new run with a larger capacity")
    if scenario == "class":
        seen: dict[str, int] = {}
        for i, t in enumerate(all_tasks):
            for c in t:
                if c in seen:
                    raise DataError(f"{stream.name}: class {c!r} is in tasks {seen[c] + 1} and "
                                    f"{i + 1}: in Class-IL a class belongs to one task")
                seen[c] = i
    names = list(learned.class_names) if learned else []
    names += [c for c in stream.class_names if c not in set(names)]
    index = {c: i for i, c in enumerate(names)}
    order = [index[c] for t in all_tasks for c in t]

    # the stream's labels as indices into ``names``
    remap = np.array([index[c] for c in stream.class_names], np.int64)
    y_train, y_test = remap[stream.y_train], remap[stream.y_test]
    x_train, x_test = stream.x_train, stream.x_test
    if stream.kind == PIXELS:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
        mean = std = None
    elif learned is not None:
        mean, std = learned.feature_mean, learned.feature_std
    else:
        used = np.isin(y_train, [index[c] for t in all_tasks for c in t])
        mean, std = feature_statistics(x_train[used])

    ids = stream.task_ids or (None, None)

    def mask(y, tid, t: int) -> np.ndarray:
        """Task ``t``'s samples: of its classes (and of its task folder, where the stream
        has them: ``task_ids`` of the stream's task ``t - first``)."""
        keep = np.isin(y, [index[c] for c in all_tasks[t]])
        return keep if tid is None else keep & (tid == t - first)

    def select(x, y, tid, t: int):
        classes = [index[c] for c in all_tasks[t]]
        keep = mask(y, tid, t)
        rank = np.zeros(len(names), np.int32)
        rank[classes] = np.arange(cpt)
        within = rank[y[keep]]
        label = within if scenario == "domain" else t * cpt + within
        return standardise(x[keep], mean, std), label.astype(np.int32)

    sizes = []   # training samples of each new task
    for t in range(first, len(all_tasks)):
        for split, y, tid in (("training", y_train, ids[0]), ("test", y_test, ids[1])):
            n = int(mask(y, tid, t).sum())
            if n == 0:
                raise DataError(f"{stream.name}: task {t + 1} (classes {_listed(all_tasks[t])}) "
                                f"has no {split} samples")
            if split == "training":
                sizes.append(n)
        present = set(np.unique(y_train[mask(y_train, ids[0], t)]))
        missing = [c for c in all_tasks[t] if index[c] not in present]
        if missing:
            raise DataError(f"{stream.name}: class {missing[0]!r} of task {t + 1} has no "
                            "training samples")

    def test_set(t: int):
        if t < first:
            return learned.test_sets[t]
        return select(x_test, y_test, ids[1], t)

    def build(t: int) -> Task:
        if t < first:
            # a continuation has no training data of the tasks learned before: an empty
            # array of the right shape and dtype (methods that need it are refused first)
            x, y = test_set(t)
            return Task(t, [index[c] for c in all_tasks[t]], x[:0], y[:0], x, y)
        return Task(t, [index[c] for c in all_tasks[t]], *select(x_train, y_train, ids[0], t),
                    *test_set(t))

    width = int(np.prod(stream.sample_shape))
    proto = Protocol(
        experiment=CUSTOM, scenario=scenario, num_tasks=len(all_tasks), classes_per_task=cpt,
        input_shape=(width,), class_order=order, class_names=names, dataset_name=stream.name,
        recon_loss="bce" if stream.kind == PIXELS else "mse", input_pixels=width,
        capacity=capacity, _task_fn=build, _test_fn=test_set,
        # the stream's arrays stay; a task's selection exists while it is learned
        keep_tasks=1,
        stream=StreamInfo(stream.kind, stream.sample_shape, mean, std,
                          [list(t) for t in all_tasks], first, sizes, fingerprint))
    return proto


@dataclasses.dataclass
class StreamInfo:
    """What a protocol built from a stream knows beyond the paper's protocols: the input's
    kind and per-sample shape, the feature statistics, the tasks' class names and how many
    of them a saved run had learned before (a continuation)."""

    kind: str
    sample_shape: tuple[int, ...]
    feature_mean: np.ndarray | None
    feature_std: np.ndarray | None
    tasks: list[list[str]]
    learned_before: int = 0
    # training samples of each task from ``learned_before`` on
    train_sizes: list[int] = dataclasses.field(default_factory=list)
    # the stream's ``TaskStream.fingerprint``: the run's own data, told from new data
    fingerprint: str = ""

    def describe(self) -> dict:
        """The JSON-able part of run.json's protocol (the statistics are in the export's
        ``stream.npz``)."""
        return {"kind": self.kind, "sample_shape": list(self.sample_shape),
                "tasks": self.tasks, "fingerprint": self.fingerprint}


def feature_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32; a constant feature gets 1, so it
    standardises to 0 rather than dividing by zero)."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    std = x64.std(axis=0)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardise(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """Features as the networks see them, ``(x - mean) / std`` in float32; pixels (no
    statistics) unchanged (uint8, divided by 255 in-graph: ``Protocol.preprocess``)."""
    if mean is None:
        return x
    return (x.astype(np.float32) - mean) / std


def _check_continues(stream: TaskStream, learned: Learned, cpt: int) -> None:
    """Refuse new data the saved run cannot continue with: another kind or shape of input,
    or tasks of another size."""
    if stream.kind != learned.kind or tuple(stream.sample_shape) != tuple(learned.sample_shape):
        raise DataError(f"{stream.name}: its inputs are {stream.kind} of shape "
                        f"{list(stream.sample_shape)}; the saved run learned {learned.kind} of "
                        f"shape {list(learned.sample_shape)}: new data must come as the old did")
    old = len(learned.tasks[0])
    if cpt != old:
        raise DataError(f"{stream.name}: its tasks have {cpt} classes; the saved run's have "
                        f"{old} (its output units per task)")


# what an export keeps of a stream's run (``export.export_run``): the learned tasks' test
# sets and the feature statistics, never training data
STREAM_FILE = "stream.npz"


def save_learned(protocol: Protocol, tasks_learned: int, path) -> None:
    """Write ``STREAM_FILE`` at ``path`` (a file in an export being written): the test sets
    of the ``tasks_learned`` tasks and the feature statistics, for ``read_learned``."""
    info: StreamInfo = protocol.stream  # type: ignore[assignment]
    parts = {}
    for t in range(tasks_learned):
        parts[f"x_test_{t}"], parts[f"y_test_{t}"] = protocol.test_set(t)
    if info.feature_mean is not None:
        parts["feature_mean"], parts["feature_std"] = info.feature_mean, info.feature_std
    with open(path, "wb") as f:
        np.savez(f, **parts)


def read_learned(export_dir, record: dict) -> Learned:
    """What the export at ``export_dir`` (its run.json ``record``) learned, to continue it
    on new data (``stream_protocol(learned=...)``); ``DataError`` if its files do not hold
    it (a run of one of the paper's experiments, or a damaged export)."""
    proto, n = record.get("protocol", {}), int(record.get("tasks_learned", 0))
    path = Path(export_dir) / STREAM_FILE
    if proto.get("experiment") != CUSTOM:
        raise DataError(f"{export_dir} is a run of {proto.get('experiment')!r}, not of your "
                        f"own data: continue it with --experiment={proto.get('experiment')}")
    if n == 0:
        # stopped inside its first task (a checkpoint there, no export yet): nothing learned
        return Learned(list(proto["class_names"]), [], [], proto["kind"],
                       tuple(proto["sample_shape"]), None, None, int(proto["capacity"]),
                       proto.get("fingerprint", ""))
    try:
        with np.load(path, allow_pickle=False) as z:
            sets = [(z[f"x_test_{t}"], z[f"y_test_{t}"]) for t in range(n)]
            mean = z["feature_mean"] if "feature_mean" in z else None
            std = z["feature_std"] if "feature_std" in z else None
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: the saved run's test sets and input statistics cannot be "
                        f"read ({type(e).__name__}: {e}); it cannot continue") from None
    return Learned(class_names=list(proto["class_names"]), tasks=proto["tasks"][:n],
                   test_sets=sets, kind=proto["kind"],
                   sample_shape=tuple(proto["sample_shape"]), feature_mean=mean,
                   feature_std=std, capacity=int(proto["capacity"]),
                   fingerprint=proto.get("fingerprint", ""))


def protocol_for(config: Config, data: TaskStream, resume_from: str | None = None) -> Protocol:
    """The protocol of a run on your own data ``data`` (``config.experiment == "custom"``),
    cut as ``config`` says; ``resume_from``, an export of such a run, continues it. NumPy
    only, so that the apps refuse bad data before TensorFlow loads."""
    learned = None
    if resume_from:
        learned = read_learned(resume_from, rundirs.read_resume_record(resume_from))
        if not learned.tasks:
            learned = None   # nothing learned yet: the same data starts again
    return stream_protocol(data, config.scenario, classes_per_task=config.classes_per_task,
                           task_classes=config.task_classes, tasks=config.tasks,
                           capacity=config.capacity, learned=learned)


def check_stream_run(c: Config, protocol: Protocol) -> None:
    """Refuse (``DataError``) a run, of the resolved settings ``c``, that the stream cannot
    feed: a task with fewer training samples than a batch, or a continuation (tasks
    learned before come without their training data) of Joint, which trains on them."""
    info: StreamInfo = protocol.stream  # type: ignore[assignment]
    first = info.learned_before
    if first and c.replay == "offline":
        raise DataError("Joint training learns from every task's data, which a saved run "
                        "does not keep: it cannot learn new data later (BI-R and the other "
                        "methods can)")
    for t, n in enumerate(info.train_sizes, start=first):
        if n < c.batch:
            raise DataError(f"{protocol.dataset_name}: task {t + 1} has {n} training samples, "
                            f"fewer than a batch (--batch={c.batch}): lower --batch or give "
                            "more data")
