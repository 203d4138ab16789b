"""Checkpoints inside a task (``checkpoint_every``): a run stopped right after one, and
continued with ``resume_from``, gives the accuracy matrix and losses of a straight run, bit
for bit (same machine, same process kind: both runs here are in-process)."""

import json

import numpy as np
import pytest

from bir_keras import experiment, export
from bir_keras.config import Config, method_settings

# 60 iterations per task: compiled calls of 50 + 10, so the checkpoint lands at iteration 50
BASE = dict(experiment="split_digits", scenario="class", tasks=2, iters=60, batch=16,
            fc_units=20, z_dim=4, seed=12)


class Killed(Exception):
    """Stands for a kill right after a checkpoint was written."""


def config(method: str, **over) -> Config:
    return Config(**{**BASE, **method_settings(method, "split_digits", "class"),
                     "method": method, **over})


@pytest.mark.parametrize("method", ["bir_si", "generative"])
def test_resume_mid_task_gives_the_straight_run(tmp_path, monkeypatch, method):
    cfg = config(method, **({"g_iters": 80} if method == "generative" else {}))
    straight = experiment.run(cfg, str(tmp_path / "a"), export_dir=str(tmp_path / "ea"),
                              verbose=False, checkpoint_every=0)
    real = export.save_progress
    saves = []

    def save_then_die(trainer, export_dir, record):
        path = real(trainer, export_dir, record)
        saves.append(record["task_progress"])
        if record["task_progress"]["task"] == 1:
            raise Killed
        return path

    monkeypatch.setattr(export, "save_progress", save_then_die)
    with pytest.raises(Killed):
        experiment.run(cfg, str(tmp_path / "b"), export_dir=str(tmp_path / "eb"),
                       verbose=False, checkpoint_every=1e-9)
    monkeypatch.setattr(export, "save_progress", real)
    # task 1's export and task 2's progress at iteration 50
    assert saves[0]["task"] == 0 and saves[-1] == {**saves[-1], "task": 1, "iterations": 50}
    progress = json.loads((tmp_path / "eb" / "task_progress" / "progress.json").read_text())
    assert progress["tasks_learned"] == 1 and progress["task_progress"]["iterations"] == 50
    resumed = experiment.run(cfg, str(tmp_path / "c"), export_dir=str(tmp_path / "eb"),
                             resume_from=str(tmp_path / "eb"), verbose=False,
                             checkpoint_every=0)
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["losses"] == straight["losses"]
    assert resumed["global_step"] == straight["global_step"]
    # the task's export replaced the progress checkpoint
    assert not (tmp_path / "eb" / "task_progress").exists()
    np.testing.assert_array_equal(resumed["average_accuracy"], straight["average_accuracy"])
