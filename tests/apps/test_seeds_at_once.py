"""apps.train --seeds_at_once: K seeds in one process and one step, each writing what a
separate run writes (results, TensorBoard, an export that resumes on its own)."""

import json

import numpy as np
import pytest

from tests.apps.test_train_app import train

TINY = ["--experiment=split_digits", "--scenario=class", "--iters=25", "--batch=32",
        "--fc_units=40", "--z_dim=8", "--method=bir", "--seed=12"]


@pytest.mark.slow   # covered more cheaply by test_midtask_resume's pack tests
def test_packed_seeds_write_separate_runs_that_resume_alone(tmp_path):
    from bir_keras import experiment
    from bir_keras.config import Config, method_settings

    out, exp = tmp_path / "out", tmp_path / "exp"
    r = train(*TINY, "--tasks=2", "--seeds_at_once=2", f"--output_dir={out}",
              f"--export_dir={exp}")
    assert r.returncode == 0, r.stderr[-3000:]
    printed = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert [p["flags"]["seed"] for p in printed] == [12, 13]
    recs = {}
    for seed in (12, 13):
        rec = json.loads((out / f"seed{seed}" / "results.json").read_text())
        assert rec["flags"]["seed"] == seed and rec["seeds_at_once"] == 2
        assert rec["tasks_learned"] == 2
        assert (out / f"seed{seed}" / "tensorboard").is_dir()
        assert json.loads((exp / f"seed{seed}" / "run.json").read_text())["flags"]["seed"] == seed
        recs[seed] = rec
    # each seed has its own class order, as its separate run
    assert recs[12]["protocol"]["class_order"] != recs[13]["protocol"]["class_order"]
    # seed 13 alone without XLA (the packed step's draws are those of its --nojit_compile
    # run): the same accuracies up to the packed step's float rounding (one or two of a
    # task's ~70 test images)
    cfg = {**method_settings("bir", "split_digits", "class"),
           **dict(experiment="split_digits", scenario="class", iters=25, batch=32,
                  fc_units=40, z_dim=8, method="bir", seed=13, tasks=2, jit_compile=False)}
    alone = experiment.run(Config(**cfg), str(tmp_path / "alone"),
                           export_dir=str(tmp_path / "alone_exp"), verbose=False)
    np.testing.assert_allclose(
        np.array(recs[13]["accuracy_matrix"], dtype=float),
        np.array(alone["accuracy_matrix"], dtype=float), atol=0.03)
    # a packed seed's export resumes on its own (in this process: apps.train's --resume_from
    # is experiment.run's, tested through the command line in test_train_app.py)
    more = experiment.run(Config(**{**cfg, "tasks": 3}), str(tmp_path / "more"),
                          export_dir=str(tmp_path / "more_exp"),
                          resume_from=str(exp / "seed13"), verbose=False)
    assert more["tasks_learned"] == 3
    # the packed run's rows are kept (a 3-task run's rows have a column per task)
    assert [row[:2] for row in more["accuracy_matrix"][:2]] == recs[13]["accuracy_matrix"]


@pytest.mark.parametrize("bad, says", [
    (["--seeds_at_once=0"], "--seeds_at_once must be in [1, 64], got 0"),
    (["--seeds_at_once=2", "--resume_from=SOMEWHERE"], "resume each seed's export"),
    (["--seeds_at_once=2", "--method=none", "--replay=buffer"], "--replay=buffer"),
    (["--seeds_at_once=2", "--strategy=mirrored"], "one device"),
    (["--seeds_at_once=2", "--jit_compile"], "drop --jit_compile"),
])
def test_what_cannot_be_packed_is_refused_in_one_line(tmp_path, bad, says):
    args = [a for a in TINY if not (a.startswith("--method") and any(
        b.startswith("--method") for b in bad))]
    r = train(*args, *bad, f"--output_dir={tmp_path / 'o'}", f"--export_dir={tmp_path / 'e'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert not (tmp_path / "o").exists()
