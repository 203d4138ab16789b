"""The Python API (``import bir_keras as bk``) end to end on tiny data: the same numbers as
the command line's split digits, learning new classes later bit for bit as a straight run,
features standardised in the SavedModel, callbacks, compare."""

import json

import numpy as np
import pytest

import bir_keras as bk
from bir_keras.data.sources import load_dataset
from tests.apps.test_sample import tiny_bir_run

# tiny_bir_run's settings (tests/apps/test_train_app.py: FAST), as a Config
TINY = dict(scenario="class", iters=25, batch=32, fc_units=40, z_dim=8, jit_compile=False)


def test_the_top_level_names_load_lazily():
    import subprocess
    import sys

    code = ("import sys, bir_keras as bk; assert 'tensorflow' not in sys.modules; "
            "bk.Config; bk.TaskStream; assert 'tensorflow' not in sys.modules; "
            "print(sorted(bk.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "load_stream" in out.stdout
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        bk.nothing  # noqa: B018


def test_digits_as_numpy_arrays_give_the_matrix_of_split_digits(tmp_path, tmp_path_factory):
    """The command line's 2-task BI-R run on split digits (labels in order) and the same
    digits given as arrays, two classes per task, are the same run."""
    out, _ = tiny_bir_run(tmp_path_factory)
    expected = json.loads((out / "results.json").read_text())["accuracy_matrix"]
    ds = load_dataset("digits")
    stream = bk.TaskStream(ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    config = bk.Config(experiment="custom", method="bir", tasks=2, classes_per_task=2,
                       capacity=5, **TINY)
    h = bk.train(config, stream, output_dir=str(tmp_path / "o"), export_dir=str(tmp_path / "e"))
    assert h.accuracy_matrix == expected


def pixel_stream(classes, seed=0, n=40):
    """Class c: a fixed random 6x5 image plus noise; half train, half test."""
    xs = []
    for c in classes:
        base = np.random.RandomState(100 + c).randint(40, 216, (1, 6, 5))
        noise = np.random.RandomState(seed * 1000 + c).randint(-40, 40, (n, 6, 5))
        xs.append((base + noise).astype(np.uint8))
    x, y = np.concatenate(xs), np.repeat(np.asarray(classes) * 10, n)   # labels 0, 10, ...
    return bk.TaskStream(x[::2], y[::2], x[1::2], y[1::2])


def test_a_saved_run_learns_new_classes_later_as_a_straight_run(tmp_path):
    config = bk.Config(experiment="custom", method="bir", classes_per_task=2, capacity=4,
                       seed=3, **{**TINY, "iters": 6})
    straight = bk.train(config, pixel_stream(range(6)), output_dir=str(tmp_path / "o3"),
                        export_dir=str(tmp_path / "e3"))
    first = bk.train(config, pixel_stream(range(4)), output_dir=str(tmp_path / "o2"),
                     export_dir=str(tmp_path / "e2"))

    class Seen(bk.Callback):
        tasks: list = []
        steps: list = []

        def on_progress(self, task, logs):
            self.steps.append((task, logs["iterations"], logs["of"]))

        def on_task_end(self, task, logs):
            self.tasks.append((task, len(logs["accuracy"])))

    later = bk.train(config, pixel_stream([4, 5]), output_dir=str(tmp_path / "o23"),
                     export_dir=str(tmp_path / "e23"), resume_from=first.export_dir,
                     callbacks=[Seen()])
    assert later.accuracy_matrix == straight.accuracy_matrix
    assert Seen.tasks == [(2, 3)] and len(later.history["average_accuracy"]) == 3
    assert Seen.steps and Seen.steps[-1] == (2, 6, 6)
    run = bk.load(later.export_dir)
    assert run.class_names == ["0", "10", "20", "30", "40", "50"] and run.tasks_learned == 3
    test = pixel_stream([4, 5])
    names = run.classify(test.x_test)["class_name"]
    assert set(names) <= set(run.class_names)
    drawn = run.sample(["40", "50", 0])
    assert drawn["x"].shape == (3, 6, 5) and list(drawn["class_name"]) == ["40", "50", "0"]
    with pytest.raises(bk.DataError, match="class '60' was not learned"):
        run.sample(["60"])
    with pytest.raises(bk.DataError, match="class id 6 was not learned"):
        run.sample([6])
    # a task id not learned (its units exist, untrained) is refused, not answered
    with pytest.raises(bk.DataError, match=r"task ids \[3\] were not learned"):
        run.classify(test.x_test[:2], task_ids=[2, 3])
    with pytest.raises(bk.DataError, match="one integer per input"):
        run.classify(test.x_test[:2], task_ids=[2])
    assert len(run.classify(test.x_test[:2], task_ids=[2, 2])["label"]) == 2
    # the export keeps the learned tasks' test sets, no training data
    with np.load(tmp_path / "e23" / "stream.npz") as z:
        assert sorted(z.files) == sorted(f"{k}_test_{t}" for k in ("x", "y") for t in range(3))
    # capacity 4: a fourth task fits, a fifth does not
    with pytest.raises(bk.DataError, match="exceed the saved run's capacity of 4"):
        bk.train(config, pixel_stream([6, 7, 8, 9]), output_dir=str(tmp_path / "o5"),
                 export_dir=str(tmp_path / "e5"), resume_from=later.export_dir)
    assert not (tmp_path / "o5").exists() and not (tmp_path / "e5").exists()


def test_features_are_standardised_in_training_and_in_the_saved_model(tmp_path):
    rng = np.random.RandomState(0)
    centres = rng.randn(4, 7) * 3
    x = (np.concatenate([c + rng.randn(60, 7) for c in centres]) * 50 + 300).astype(np.float32)
    y = np.repeat(["a", "b", "c", "d"], 60)
    stream = bk.TaskStream(x[::2], y[::2], x[1::2], y[1::2])
    config = bk.Config(experiment="custom", classes_per_task=2, **TINY)
    result = bk.compare(["none"], [0, 1], config, stream, output_dir=str(tmp_path / "cmp"))
    assert "| none |" in result.table() and len(result.results["none"]) == 2
    h = result.histories["none"][0]
    with np.load(h.export_dir + "/stream.npz") as z:
        np.testing.assert_allclose(z["feature_mean"], x[::2].mean(0), rtol=1e-5)
    # classify takes raw features: its Class-IL accuracy on task 1 is the run's own
    run = bk.load(h.export_dir)
    first = np.isin(y[1::2], ["a", "b"])
    acc = np.mean(run.classify(x[1::2][first])["class_name"] == y[1::2][first])
    assert acc == pytest.approx(h.accuracy_matrix[-1][0], abs=1e-9)
    with pytest.raises(bk.ConfigError, match="has no generator"):
        run.sample(["a"])


def test_bad_settings_and_data_are_named_exceptions_before_anything_is_written(tmp_path):
    stream = pixel_stream(range(4))
    with pytest.raises(bk.DataError, match="say how its classes form tasks"):
        bk.train(bk.Config(experiment="custom", **TINY), stream, output_dir=str(tmp_path / "a"),
                 export_dir=str(tmp_path / "ae"))
    with pytest.raises(bk.DataError, match="fewer than a batch"):
        bk.train(bk.Config(experiment="custom", classes_per_task=2, **{**TINY, "batch": 64}),
                 stream, output_dir=str(tmp_path / "b"), export_dir=str(tmp_path / "be"))
    with pytest.raises(bk.ConfigError, match="data is read by experiment='custom'"):
        bk.train(bk.Config(experiment="split_digits", **TINY), stream,
                 output_dir=str(tmp_path / "c"), export_dir=str(tmp_path / "ce"))
    with pytest.raises(bk.ConfigError, match="--method must be one of"):
        bk.compare(["nope"], [0], bk.Config(experiment="custom"), stream,
                   output_dir=str(tmp_path / "d"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "joint", "ewc", "online_ewc", "si", "lwf", "buffer",
                                    "xdg", "generative", "generative_distill", "bir", "bir_si"])
def test_every_method_runs_on_a_feature_stream(tmp_path, method):
    rng = np.random.RandomState(0)
    x = (rng.randn(240, 9) * 3 + 1).astype(np.float32)
    stream = bk.TaskStream(x[::2], np.repeat(np.arange(6), 20), x[1::2],
                           np.repeat(np.arange(6), 20))
    scenario = "task" if method == "xdg" else "class"
    h = bk.train(bk.Config(experiment="custom", method=method, classes_per_task=2,
                           fisher_n=10, **{**TINY, "scenario": scenario, "iters": 3,
                                           "batch": 8}),
                 stream, output_dir=str(tmp_path / "o"), export_dir=str(tmp_path / "e"))
    assert len(h.accuracy_matrix) == 3 and bk.load(h.export_dir).tasks_learned == 3
