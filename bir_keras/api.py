"""The Python API in a few names (``import bir_keras as bk``): train a method on your data
or a paper experiment, load a saved run to classify and sample, compare methods over seeds.

    import numpy as np
    import bir_keras as bk

    stream = bk.TaskStream(x_train, y_train, x_test, y_test)     # uint8 images or float features
    config = bk.Config(experiment="custom", scenario="class", method="bir", classes_per_task=2)
    history = bk.train(config, stream, output_dir="runs/mine")
    print(history.accuracy_matrix, history.final_average_accuracy)
    run = bk.load(history.export_dir)
    run.classify(x_test[:5])["class_name"]                       # your class names
    images = run.sample(["cat", "dog"])["x"]                      # replay, as the model sees it

Everything raises a named exception for bad input (``ConfigError`` for settings,
``DataError`` for data, ``rundirs.PathRefused`` for paths a run may not write) before any
training; nothing here exits the process or prints unless ``verbose``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bir_keras.config import Config
from bir_keras.data.streams import TaskStream
from bir_keras.evaluation.metrics import average_accuracy

__all__ = ["Callback", "Comparison", "History", "SavedRun", "compare", "load", "train"]


class Callback:
    """Called as training goes (Keras' convention, with tasks where Keras has epochs):
    subclass it and override what you need.

    Example::

        class Print(bk.Callback):
            def on_task_end(self, task, logs):
                print(f"after task {task + 1}: {logs['average_accuracy']:.3f}")
    """

    def on_progress(self, task: int, logs: dict) -> None:
        """Inside task ``task``, after each compiled call (about every ``log_every``
        iterations): ``logs`` holds ``iterations`` (of the task so far), ``of`` (the task's
        iterations), ``seconds`` (in the task so far) and ``seed``. The losses are in the
        run's TensorBoard."""

    def on_task_end(self, task: int, logs: dict) -> None:
        """After task ``task`` (0-based) is learned, evaluated and exported: ``logs`` holds
        ``accuracy`` (the test accuracy on each task learned so far), ``average_accuracy``
        and ``seed``."""

    def on_train_end(self, logs: dict) -> None:
        """After the run's results are written; ``logs`` is the run's record (``History.record``)."""


@dataclasses.dataclass
class History:
    """What ``train`` returns, like Keras' ``History``: ``history`` maps ``average_accuracy``
    to its value after each task and ``accuracy`` to each row of the accuracy matrix;
    ``record`` is the run's ``results.json``."""

    record: dict
    output_dir: str
    export_dir: str

    @property
    def accuracy_matrix(self) -> list[list[float | None]]:
        """Row ``i``: the accuracy on each task after learning task ``i`` (None: not yet)."""
        return self.record["accuracy_matrix"]

    @property
    def final_average_accuracy(self) -> float:
        """The average test accuracy over all tasks at the end (the paper's measure)."""
        return self.record["final_average_accuracy"]

    @property
    def history(self) -> dict[str, list]:
        """``{"average_accuracy": [...], "accuracy": [...]}``, one entry per task learned."""
        m = self.accuracy_matrix
        return {"average_accuracy": average_accuracy(m), "accuracy": [r[:i + 1] for i, r in enumerate(m)]}


def train(config: Config, data: TaskStream | None = None, *, output_dir: str,
          export_dir: str | None = None, resume_from: str | None = None,
          overwrite: bool = False, callbacks: Sequence[Callback] = (), verbose: bool = False,
          seeds_at_once: int = 1, deterministic: bool = True) -> History | list[History]:
    """Train ``config`` (on ``data`` for ``experiment="custom"``, else the experiment's own
    data), evaluating and exporting after each task, and return its ``History`` (a list
    of them for ``seeds_at_once`` > 1, seeds ``config.seed``, ``config.seed + 1``, ...).

    ``output_dir`` gets ``results.json``, plots and TensorBoard; ``export_dir`` (default
    ``saved_models/<output_dir>``, as ``apps.train``) the SavedModel, checkpoint and
    ``run.json`` (and, for your data, ``stream.npz``). Several seeds write into
    ``<output_dir>/seed<s>`` and ``<export_dir>/seed<s>``.
    ``resume_from``: an export to continue, with more tasks of the same data or, for a
    run on your data, new classes (``data`` holding them only). ``deterministic``: switch
    on TensorFlow's deterministic ops for this process, as ``apps.train`` does by default
    (same seed, same numbers).

    Example::

        history = bk.train(bk.Config(experiment="split_digits", method="bir", iters=50),
                           output_dir="runs/digits")
    """
    import tensorflow as tf

    from bir_keras import experiment

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    recs = experiment.run(config, output_dir, export_dir, resume_from=resume_from,
                          overwrite=overwrite, verbose=verbose, seeds_at_once=seeds_at_once,
                          data=data, callbacks=tuple(_after_task(cb) for cb in callbacks),
                          chunk_callbacks=tuple(_progress(cb) for cb in callbacks),
                          progress_every=None if not verbose else 30.0)
    from bir_keras.rundirs import seed_dirs

    recs = recs if isinstance(recs, list) else [recs]
    outs = [o for o, _ in seed_dirs(output_dir, output_dir, [r["flags"]["seed"] for r in recs])]
    out = []
    for rec, o in zip(recs, outs):
        out.append(History(rec, o, rec["export_dir"]))
        for cb in callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(rec)
    return out[0] if seeds_at_once == 1 else out


def _after_task(cb: Callback):
    def after_task(trainer, t: int) -> None:
        row = trainer.history.accuracy_matrix[t][:t + 1]
        if hasattr(cb, "on_task_end"):
            cb.on_task_end(t, {"accuracy": list(row), "average_accuracy": float(np.mean(row)),
                               "seed": trainer.config.seed})
    return after_task


def _progress(cb: Callback):
    def progress(trainer, at) -> None:
        if hasattr(cb, "on_progress"):
            cb.on_progress(at.task, {"iterations": at.iterations,
                                     "of": trainer.iterations(at.task),
                                     "seconds": at.elapsed, "seed": trainer.config.seed})
    return progress


class SavedRun:
    """A run's export, loaded with TensorFlow (``bk.load(export_dir)``): classify new inputs
    and draw replay samples per class, with the class names it learned.

    Inputs are as the data came: uint8 pixels (or floats in [0, 1]) shaped as the run's
    samples, or raw features (the run standardises them with its training statistics)."""

    def __init__(self, export_dir: str):
        import json

        import tensorflow as tf

        from bir_keras import export

        path = Path(export_dir)
        try:
            self.record: dict = json.loads((path / export.RUN_JSON).read_text())
        except (OSError, ValueError) as e:
            from bir_keras.rundirs import PathRefused

            raise PathRefused(f"{export_dir}: no readable run.json ({e}): not an export of "
                              "this package") from None
        self.export_dir = str(path)
        self._model = tf.saved_model.load(str(path / export.SAVED_MODEL))
        labels = self._model.labels()
        n = int(labels["tasks_learned"]) * int(labels["classes_per_task"])
        self.class_names: list[str] = [s.decode() for s in labels["mode_class_names"].numpy()[:n]]
        self.scenario: str = self.record["protocol"]["scenario"]
        self.tasks_learned: int = int(self.record["tasks_learned"])
        self.accuracy_matrix = self.record["accuracy_matrix"]

    def classify(self, x, task_ids=None) -> dict[str, np.ndarray]:
        """Predictions for ``x``: ``class_name``, ``label`` (the run's class index),
        ``unit`` and ``logits`` (NumPy). ``task_ids`` (0-based, one per input, each a task
        learned; else ``DataError``): choose among that task's classes (Task-IL) or gate by
        task (XdG)."""
        import tensorflow as tf

        x = np.asarray(x)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        if task_ids is not None:
            task_ids = np.asarray(task_ids)
            bad = sorted({int(t) for t in task_ids.ravel()
                          if not 0 <= t < self.tasks_learned}) if task_ids.size else []
            if task_ids.shape != (len(x),) or task_ids.dtype.kind not in "iu" or bad:
                from bir_keras.data.sources import DataError

                why = (f"task ids {bad} were not learned" if bad and task_ids.dtype.kind in "iu"
                       else f"need one integer per input ({len(x)}), got shape "
                            f"{task_ids.shape} of {task_ids.dtype}")
                raise DataError(f"task_ids: {why} ({self.export_dir} learned "
                                f"{self.tasks_learned} task(s): ids 0 to "
                                f"{self.tasks_learned - 1})")
        if task_ids is None:
            out = self._model.classify(tf.constant(x))
        else:
            out = self._model.classify_task(tf.constant(x), tf.constant(task_ids, tf.int32))
        res = {k: v.numpy() for k, v in out.items()}
        res["class_name"] = np.array([s.decode() for s in res["class_name"]])
        return res

    def sample(self, classes: Sequence) -> dict[str, np.ndarray]:
        """One generated sample per entry of ``classes`` (class names, or ids 0.. in the
        order learned): ``x`` and ``class_name``. Needs a generative-replay run; a class not
        learned is a ``DataError``."""
        import tensorflow as tf

        if getattr(self._model, "sample", None) is None:
            from bir_keras.config import ConfigError

            raise ConfigError(f"{self.export_dir} has no generator (method "
                              f"{self.record.get('method')!r}): only generative replay samples")
        ids = []
        for c in classes:
            is_id = isinstance(c, (int, np.integer))
            if is_id and 0 <= c < len(self.class_names):
                ids.append(int(c))
            elif not is_id and str(c) in self.class_names:
                ids.append(self.class_names.index(str(c)))
            else:
                from bir_keras.data.sources import DataError

                what = f"class id {c}" if is_id else f"class {c!r}"
                raise DataError(f"{what} was not learned by {self.export_dir} (its classes, "
                                f"ids 0 to {len(self.class_names) - 1}: "
                                f"{', '.join(self.class_names)})")
        out = self._model.sample(tf.constant(ids, tf.int32))
        return {"x": out["x"].numpy(),
                "class_name": np.array([s.decode() for s in out["class_names"].numpy()])}


def load(export_dir: str) -> SavedRun:
    """The saved run at ``export_dir`` (see ``SavedRun``)."""
    return SavedRun(export_dir)


@dataclasses.dataclass
class Comparison:
    """What ``compare`` returns: each method's final average accuracy per seed, with its
    mean and standard error of the mean, and the runs' histories."""

    results: dict[str, list[float]]
    histories: dict[str, list[History]]

    def summary(self) -> dict[str, tuple[float, float | None]]:
        """Method -> (mean, s.e.m.; None for one seed)."""
        out = {}
        for m, accs in self.results.items():
            sem = None if len(accs) < 2 else float(np.std(accs, ddof=1) / math.sqrt(len(accs)))
            out[m] = (float(np.mean(accs)), sem)
        return out

    def table(self) -> str:
        """A Markdown table: method, mean ± s.e.m. (in %), seeds."""
        rows = ["| method | final average accuracy (%) | seeds |", "|---|---|---|"]
        for m, (mean, sem) in self.summary().items():
            spread = "" if sem is None else f" ± {100 * sem:.2f}"
            rows.append(f"| {m} | {100 * mean:.2f}{spread} | {len(self.results[m])} |")
        return "\n".join(rows)


def compare(methods: Sequence[str], seeds: Sequence[int], config: Config,
            data: TaskStream | None = None, *, output_dir: str,
            overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> Comparison:
    """Train each named method (``bk.config.METHODS``, with the paper's hyper-parameters)
    on each seed, in this process one after another, into
    ``<output_dir>/<method>-s<seed>`` (its export beside it, ``...-export``); ``config``
    gives every other setting. (The command
    line's ``apps.compare`` spreads runs over processes and caches them.)

    Example::

        c = bk.compare(["none", "bir"], [1, 2], bk.Config(experiment="split_digits",
                       iters=50), output_dir="runs/cmp")
        print(c.table())
    """
    from bir_keras.config import ConfigError, check_method, resolve

    for m in methods:
        check_method(m)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"compare needs distinct seeds, got {list(seeds)}")
    configs = {}
    for m in methods:
        for s in seeds:
            c = dataclasses.replace(config, method=m, seed=int(s))
            resolve(c)   # every setting refused before the first run trains
            configs[m, s] = c
    results: dict[str, list[float]] = {m: [] for m in methods}
    histories: dict[str, list[History]] = {m: [] for m in methods}
    for (m, s), c in configs.items():
        run = Path(output_dir) / f"{m}-s{s}"
        h = train(c, data, output_dir=str(run), export_dir=f"{run}-export",
                  overwrite=overwrite, callbacks=callbacks)
        results[m].append(h.final_average_accuracy)
        histories[m].append(h)
    return Comparison(results, histories)
