"""What a run writes to TensorBoard beyond the Trainer's scalars: the hyper-parameters
(HParams), a text card on how to read the charts, the accuracy curves as an image and,
for methods with a generator, a grid of replayable samples per class after each task."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import tensorflow as tf

from bir_keras import export
from bir_keras.config import method_label
from bir_keras.evaluation.plots import accuracy_curves_png
from bir_keras.setup import Setup
from bir_keras.strategies.base import Trainer


def log_hparams(trainer: Trainer, setup: Setup) -> None:
    from tensorboard.plugins.hparams import api as hp

    c = setup.config
    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
              for k, v in c.to_dict().items()}
    # the method column: the --method shorthand (BI-R and GR share --replay=generative)
    values["method"] = method_label(c)
    # The trial id is TensorBoard's session group: runs sharing one are shown as one row, so
    # it must differ whenever any hyper-parameter does (GR and BI-R share --replay).
    digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    with trainer.summary_writer.as_default():
        hp.hparams(values, trial_id=f"{c.experiment}-{c.scenario}-{method_label(c)}-seed{c.seed}-"
                                    f"{digest}")


SAMPLES_PER_CLASS = 8
ABOUT = """\
**How to read this run** ({method}, {experiment}, {scenario}-IL, seed {seed})

* `loss/*`: every loss term, x axis = training iteration (global step over all tasks),
  each point the mean over the last `--log_every` iterations.
* `accuracy/task<k>`, `accuracy/average`: test accuracy after each task, x axis = **number
  of tasks learned** (one point per task). With few points TensorBoard's default smoothing
  (0.6) bends these lines; set *Smoothing* to 0 in the settings, or look at the image
  `accuracy_curves` (every point marked, no smoothing).
* Images `replay/<dataset class>`: one grid per class after each task (x axis = tasks
  learned): {n} samples the generator can replay for that class, one row per task in
  Domain-IL.
* HParams: every setting of the run; the `method` column is the `--method` shorthand.
"""


def log_about(trainer: Trainer, setup: Setup) -> None:
    """A text card that says what each chart's x axis is."""
    c = setup.config
    text = ABOUT.format(method=method_label(c), experiment=c.experiment, scenario=c.scenario,
                        seed=c.seed, n=SAMPLES_PER_CLASS)
    with trainer.summary_writer.as_default(step=0):
        tf.summary.text("about_this_run", text)


def log_accuracy_curves(trainer: Trainer, setup: Setup, t: int) -> None:
    """The accuracy matrix so far as a chart (per task and average against tasks learned)."""
    c = setup.config
    png = accuracy_curves_png(trainer.history.accuracy_matrix,
                              title=f"{method_label(c)}: {c.experiment} ({c.scenario}-IL)")
    image = tf.io.decode_png(png, channels=3)[None]
    with trainer.summary_writer.as_default(step=t + 1):
        tf.summary.image("accuracy_curves", image, description=(
            "test accuracy of each task and their average (bold) against the number of "
            "tasks learned, unsmoothed"))


def _sample_grid(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``rows * cols`` images ``[N, H, W, C]`` in [0, 1] as one padded grid, scaled up to
    about 28 pixels per sample (grey padding)."""
    n, h, w, ch = x.shape
    k = max(1, 28 // max(h, w))
    x = np.repeat(np.repeat(x, k, axis=1), k, axis=2)
    h, w, pad = h * k, w * k, 2
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, ch), 0.5, np.float32)
    for i in range(rows):
        for j in range(cols):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top:top + h, left:left + w] = x[i * cols + j]
    return out


def log_samples(trainer: Trainer, setup: Setup, t: int) -> None:
    """After each task: one labelled grid of replayable samples per dataset class seen so
    far (its tag and description name the class; Domain-IL: one row per task)."""
    p = setup.protocol
    stream = p.stream
    if not trainer.can_sample or p.features or (stream is not None and stream.kind != "pixels"):
        return   # features are no images
    n = SAMPLES_PER_CLASS
    cpt = p.classes_per_task
    # Modes are output units. Domain-IL (e.g. 100 permuted tasks) has one per within-task
    # class, shared by the tasks: a row per task (the last ten), generated with that task's
    # gate when the gates are per task.
    if p.scenario == "domain":
        row_tasks = np.repeat(np.arange(max(0, t + 1 - 10), t + 1), cpt)
        modes = np.tile(np.arange(cpt, dtype=np.int32), len(row_tasks) // cpt)
    else:
        modes = np.arange((t + 1) * cpt, dtype=np.int32)
        row_tasks = modes // cpt
    labels = np.asarray(export.mode_dataset_labels(p))[row_tasks * cpt + modes % cpt]
    # a generator of its own: drawing from trainer.rng would change the resumed run's numbers
    noise = tf.random.Generator.from_seed(setup.config.seed + 104729 * (t + 1))
    ids, id_tasks = np.repeat(modes, n), np.repeat(row_tasks, n)
    x = trainer.sample(tf.constant(ids), tf.constant(id_tasks),
                       noise.normal([len(ids), setup.config.z_dim])).numpy()
    x = x.reshape(len(ids), -1)
    perms = getattr(p, "permutations", None)
    if perms is not None:  # permuted MNIST: show each task's samples in pixel order
        plain = np.empty_like(x)
        for i, task in enumerate(id_tasks):
            plain[i, perms[task]] = x[i]
        x = plain
    if stream is not None:  # your images, as they are shaped
        shape = tuple(stream.sample_shape) + (() if len(stream.sample_shape) == 3 else (1,))
    else:
        side = int(round(np.sqrt(x.shape[1] / (3 if p.conv else 1))))
        shape = (side, side, -1)
    imgs = x.reshape(len(ids), *shape)
    if p.mean is not None:
        imgs = imgs * np.asarray(p.std) + np.asarray(p.mean)
    imgs = np.clip(imgs, 0, 1).reshape(len(modes), n, *imgs.shape[1:])
    with trainer.summary_writer.as_default(step=t + 1):
        for label in sorted(set(labels.tolist())):
            rows = np.flatnonzero(labels == label)
            name = str(p.class_names[label])
            where = ", ".join(f"task {task + 1}" for task in row_tasks[rows])
            grid = _sample_grid(imgs[rows].reshape(-1, *imgs.shape[2:]), len(rows), n)
            tag = f"replay/{label:03d}_{''.join(ch if ch.isalnum() else '_' for ch in name)}"
            tf.summary.image(tag, grid[None], description=(
                f"{n} replayable samples of dataset class {label} ({name}), learned in "
                f"{where}; one row per task" if len(rows) > 1 else
                f"{n} replayable samples of dataset class {label} ({name}), learned in {where}"))


def log_learned(trainer: Trainer, setup: Setup, samples: bool = False) -> None:
    """For a resumed run: the accuracy after each task learned before it (scalars as
    ``strategies.loop.report_task`` writes them, and the curves image) and, with ``samples``, the
    replay samples of the model as it is (the final model of a run with nothing left to
    learn)."""
    matrix = trainer.history.accuracy_matrix
    with trainer.summary_writer.as_default():
        for t, (row, average) in enumerate(zip(matrix, trainer.history.average_accuracy)):
            for j, a in enumerate(row):
                if a is not None:
                    tf.summary.scalar(f"accuracy/task{j + 1}", a, step=t + 1)
            tf.summary.scalar("accuracy/average", average, step=t + 1)
    if matrix:
        log_accuracy_curves(trainer, setup, len(matrix) - 1)
        if samples:
            log_samples(trainer, setup, len(matrix) - 1)
    trainer.summary_writer.flush()
