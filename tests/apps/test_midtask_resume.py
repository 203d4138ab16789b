"""Checkpoints inside a task (``checkpoint_every``): a run stopped right after one, and
continued with ``resume_from``, gives the accuracy matrix and losses of a straight run, bit
for bit (same machine, same process kind: both runs here are in-process). The state on
disk that a kill leaves is exactly what was written (every write is atomic), so a copy of
the export directory at that moment stands for the killed run."""

import json
import shutil
from dataclasses import replace as dataclass_replace

import numpy as np
import pytest

from bir_keras import experiment, export
from bir_keras.config import Config, method_settings

# 60 iterations per task: compiled calls of 50 + 10, so the checkpoint lands at iteration 50
BASE = dict(experiment="split_digits", scenario="class", tasks=2, iters=60, batch=16,
            fc_units=20, z_dim=4, seed=12)


def config(method: str, **over) -> Config:
    return Config(**{**BASE, **method_settings(method, "split_digits", "class"),
                     "method": method, **over})


# Without XLA: its compilation is most of this test's time (50 s with it, 19 s without, on
# a 2-core EPYC); the default step with XLA, and GR with its own generator iterations
# (--g_iters), with --run-slow (the suite's time)
@pytest.mark.parametrize("method, xla", [
    ("bir_si", False), pytest.param("bir_si", True, marks=pytest.mark.slow),
    pytest.param("generative", False, marks=pytest.mark.slow)])
def test_resume_mid_task_gives_the_straight_run(tmp_path, monkeypatch, method, xla):
    # One straight run that checkpoints after every compiled call; the export directory as
    # it stands on disk right after task 2's checkpoint at iteration 50 is copied aside:
    # what a kill -9 at that moment would leave. Resuming from the copy must give the
    # straight run's numbers.
    cfg = config(method, jit_compile=xla, **({"g_iters": 80} if method == "generative" else {}))
    real = export.save_progress
    saves = []

    def save_and_copy(trainer, export_dir, record):
        path = real(trainer, export_dir, record)
        saves.append(record["task_progress"])
        if record["task_progress"]["task"] == 1 and not (tmp_path / "killed").exists():
            shutil.copytree(export_dir, tmp_path / "killed")
        return path

    monkeypatch.setattr(export, "save_progress", save_and_copy)
    straight = experiment.run(cfg, str(tmp_path / "a"), export_dir=str(tmp_path / "ea"),
                              verbose=False, checkpoint_every=1e-9)
    monkeypatch.setattr(export, "save_progress", real)
    # after every compiled call but the task's last (its export follows): GR's
    # generator-only iterations past --iters are a call of their own
    pairs = [(s["task"], s["iterations"]) for s in saves]
    assert pairs == ([(0, 50), (1, 50)] if method == "bir_si" else
                     [(0, 50), (0, 60), (1, 50), (1, 60)])
    killed = tmp_path / "killed"
    progress = json.loads((killed / "task_progress" / "progress.json").read_text())
    assert progress["tasks_learned"] == 1 and progress["task_progress"]["iterations"] == 50
    resumed = experiment.run(cfg, str(tmp_path / "c"), export_dir=str(killed),
                             resume_from=str(killed), verbose=False, checkpoint_every=0)
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["losses"] == straight["losses"]
    assert resumed["global_step"] == straight["global_step"]
    # the task's export replaced the progress checkpoint
    assert not (killed / "task_progress").exists()
    np.testing.assert_array_equal(resumed["average_accuracy"], straight["average_accuracy"])


def test_a_pack_checkpoints_inside_a_task_and_a_seed_resumes_alone(tmp_path, monkeypatch):
    # --seeds_at_once packs save each seed's progress inside a task as single runs do (they
    # saved none); a packed seed's export, resumed alone with XLA left to choose, steps
    # without XLA as the pack did, so it goes on with the batches it was trained with
    cfg = config("si", seed=12)
    real = export.save_progress
    saves = []

    def save_and_copy(trainer, export_dir, record):
        path = real(trainer, export_dir, record)
        seed, at = record["flags"]["seed"], record["task_progress"]
        saves.append((seed, at["task"], at["iterations"]))
        if seed == 13 and at["task"] == 1 and not (tmp_path / "killed").exists():
            shutil.copytree(export_dir, tmp_path / "killed")
        return path

    monkeypatch.setattr(export, "save_progress", save_and_copy)
    straight = experiment.run(cfg, str(tmp_path / "a"), export_dir=str(tmp_path / "ea"),
                              verbose=False, checkpoint_every=1e-9, seeds_at_once=2)
    monkeypatch.setattr(export, "save_progress", real)
    assert sorted(saves) == [(12, 0, 50), (12, 1, 50), (13, 0, 50), (13, 1, 50)]
    killed = tmp_path / "killed"
    assert (killed / "task_progress" / "progress.json").is_file()
    resumed = experiment.run(dataclass_replace(cfg, seed=13), str(tmp_path / "c"),
                             export_dir=str(killed), resume_from=str(killed), verbose=False,
                             checkpoint_every=0)
    assert resumed["flags"]["jit_compile"] is False
    # the same draws; the packed step's batched matmuls round otherwise than one seed's, so
    # the floats agree to rounding (first iterations within 1e-5: tests/strategies/test_pack.py)
    # and the accuracies to a test image or two
    test_images = 1 / 72
    np.testing.assert_allclose(np.array(resumed["accuracy_matrix"], dtype=float),
                               np.array(straight[1]["accuracy_matrix"], dtype=float),
                               atol=2 * test_images)
    for a, b in zip(resumed["losses"], straight[1]["losses"]):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=1e-3, atol=1e-4)


def test_ctrl_c_stops_the_seeds_of_a_pack_at_one_step(tmp_path, monkeypatch):
    # Ctrl-C lands once every seed has had its chunk: both seeds are saved at the same
    # iteration, each resumable from its own progress (seed 12 used to be a chunk ahead)
    from bir_keras import interrupts
    from bir_keras.salvage import RunInterrupted

    cfg = config("none", seed=12, iters=120)
    real = export.save_progress
    monkeypatch.setattr(export, "save_progress", real)
    calls = []

    def request_once(trainer, at):
        calls.append((trainer.config.seed, at.iterations))
        if trainer.config.seed == 12 and at.task == 1 and at.iterations == 50:
            interrupts._requested = True

    from bir_keras.strategies.base import Trainer
    real_init = Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.chunk_callbacks.append(request_once)

    monkeypatch.setattr(Trainer, "__init__", init)
    with pytest.raises(RunInterrupted):
        experiment.run(cfg, str(tmp_path / "a"), export_dir=str(tmp_path / "ea"),
                       verbose=False, checkpoint_every=0, seeds_at_once=2)
    for seed in (12, 13):
        progress = json.loads((tmp_path / "ea" / f"seed{seed}" / "task_progress" /
                               "progress.json").read_text())
        assert progress["task_progress"]["task"] == 1
        assert progress["task_progress"]["iterations"] == 50, (seed, progress["task_progress"])
