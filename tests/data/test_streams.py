"""Your own data as a task stream: what a TaskStream accepts and refuses, how it is cut into
tasks, and the protocol it gives (labels, capacity, statistics, continuation refusals)."""

import numpy as np
import pytest

from bir_keras.config import Config, ConfigError, resolve
from bir_keras.data.protocols import class_order, make_protocol
from bir_keras.data.sources import DataError, load_dataset
from bir_keras.data.streams import Learned, TaskStream, stream_protocol


def images(classes, n=4, shape=(5, 4)):
    x = np.arange(len(classes) * n * np.prod(shape)).reshape(len(classes) * n, *shape) % 256
    return x.astype(np.uint8), np.repeat(np.asarray(classes), n)


def stream(classes=range(6), **kw):
    x, y = images(list(classes))
    return TaskStream(x, y, x, y, **kw)


@pytest.mark.parametrize("change, message", [
    (dict(y_train=np.full(24, 9)), "labels outside 0..5"),
    (dict(x_test=np.zeros((24, 5, 5), np.uint8)), "one shape per sample"),
    (dict(x_test=np.zeros((24, 20), np.float32)), "one kind"),
    (dict(x_train=np.zeros((24, 5, 4), np.float32)), "float images"),
    (dict(x_train=np.zeros((24, 5, 4), np.int16)), "give uint8 images"),
    (dict(y_test=np.zeros(3, int)), "one label per sample"),
    (dict(x_train=np.zeros((0, 5, 4), np.uint8), y_train=np.zeros(0, int)), "no samples"),
])
def test_bad_arrays_are_refused_with_the_fact(change, message):
    x, y = images(range(6))
    arrays = {**dict(x_train=x, y_train=y, x_test=x, y_test=y), **change}
    with pytest.raises(DataError, match=message):
        TaskStream(**arrays, class_names=[str(c) for c in range(6)])


def test_non_finite_features_are_refused():
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(DataError, match="1 samples with NaN or infinite"):
        TaskStream(x, np.arange(4), np.zeros((4, 3), np.float32), np.arange(4))


def test_test_classes_without_training_samples_are_refused():
    x, y = images(range(4))
    with pytest.raises(DataError, match="no training samples: 7"):
        TaskStream(x, y, x[:4], np.array([0, 1, 7, 2]))


def test_string_labels_name_the_classes():
    x, y = images(["cat", "dog", "ant", "bee"])
    s = TaskStream(x, y, x, y)
    assert s.class_names == ["ant", "bee", "cat", "dog"]
    p = stream_protocol(s, "class", classes_per_task=2)
    t = p.task(1)
    assert [p.class_names[c] for c in t.classes] == ["cat", "dog"]
    assert sorted(set(t.y_train)) == [2, 3]


@pytest.mark.parametrize("kw, message", [
    (dict(), "say how its classes form tasks"),
    (dict(classes_per_task=4), "do not split into tasks of 4"),
    (dict(task_classes=[[0, 1], [2]]), "same number of classes"),
    (dict(task_classes=[[0, 0]]), "names a class twice"),
    (dict(task_classes=[[0, 9]]), "class 9 is not in the data"),
    (dict(task_classes=[[0, 1], [1, 2]]), "in tasks 1 and 2"),
    (dict(classes_per_task=2, capacity=2), "exceed the capacity of 2 tasks"),
])
def test_task_splits_that_cannot_be_are_refused(kw, message):
    with pytest.raises(DataError, match=message):
        stream_protocol(stream(), "class", **kw)


def test_a_class_may_repeat_in_domain_il_and_labels_are_within_task():
    p = stream_protocol(stream(), "domain", task_classes=[[0, 1], [1, 2]])
    assert p.num_outputs == 2 and set(p.task(1).y_train) == {0, 1}


def test_labels_follow_the_paper_convention_and_capacity_sizes_outputs():
    p = stream_protocol(stream(), "class", task_classes=[[5, 3], [0, 1]], capacity=4)
    assert p.num_tasks == 2 and p.capacity == 4 and p.num_outputs == 8
    assert p.class_order == [5, 3, 0, 1]
    t = p.task(0)
    # class 5 is the task's first unit, class 3 its second; pixels flattened
    assert t.x_train.shape[1:] == (20,) and t.x_train.dtype == np.uint8
    assert set(t.y_train) == {0, 1}
    assert np.all(t.y_train[t.x_train[:, 0] == images([5])[0][0, 0, 0]] == 0)
    assert p.task(1).y_train.min() == 2


def test_features_are_standardised_with_the_training_statistics():
    rng = np.random.RandomState(0)
    x = (rng.randn(40, 3) * [1, 10, 100] + [5, -5, 50]).astype(np.float64)
    x[:, 2] = 7.0   # a constant feature standardises to 0
    y = np.repeat(np.arange(4), 10)
    p = stream_protocol(TaskStream(x, y, x, y), "class", classes_per_task=2)
    both = np.concatenate([p.task(0).x_train, p.task(1).x_train])
    assert both.dtype == np.float32 and p.recon_loss == "mse" and p.input_pixels == 3
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(both[:, :2].std(0), 1, rtol=1e-4)
    assert np.all(both[:, 2] == 0)
    # the numpy twin of the in-graph preprocessing leaves features as they are
    np.testing.assert_array_equal(p.preprocess_np(both), both)


def test_digits_as_arrays_give_split_digits_tasks_for_seed_12():
    ds = load_dataset("digits")
    order = class_order("split_digits", 10, 12)
    split = make_protocol("split_digits", "class", seed=12, dataset=ds)
    mine = stream_protocol(TaskStream(ds.x_train, ds.y_train, ds.x_test, ds.y_test),
                           "class", task_classes=[order[i:i + 2] for i in range(0, 10, 2)])
    assert mine.num_outputs == split.num_outputs and mine.input_shape == split.input_shape
    assert mine.class_order == split.class_order
    for i in range(5):
        a, b = mine.task(i), split.task(i)
        for k in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def learned(**kw):
    base = dict(class_names=["0", "1", "2", "3"], tasks=[["0", "1"], ["2", "3"]],
                test_sets=[], kind="pixels", sample_shape=(5, 4), feature_mean=None,
                feature_std=None, capacity=3)
    return Learned(**{**base, **kw})


@pytest.mark.parametrize("classes, kw, message", [
    ([4, 5, 2], dict(classes_per_task=3), "tasks have 3 classes"),
    ([4, 1], dict(classes_per_task=2), "class '1' was learned already"),
    ([4, 5], dict(classes_per_task=2, learned=dict(sample_shape=(4, 5))), "shape \\[5, 4\\]"),
    ([4, 5], dict(classes_per_task=2, learned=dict(kind="features")), "learned features"),
    ([4, 5, 6, 7], dict(classes_per_task=2), "exceed the saved run's capacity of 3"),
])
def test_a_continuation_refuses_data_that_does_not_continue(classes, kw, message):
    old = learned(**kw.pop("learned", {}))
    with pytest.raises(DataError, match=message):
        stream_protocol(stream(classes), "class", learned=old, **kw)


def test_a_continuation_puts_new_classes_after_the_learned_ones():
    sets = [(np.zeros((2, 20), np.uint8), np.array([0, 1], np.int32))] * 2
    p = stream_protocol(stream([7, 4]), "class", classes_per_task=2, learned=learned(
        test_sets=sets))
    assert p.num_tasks == 3 and p.class_names == ["0", "1", "2", "3", "4", "7"]
    assert p.class_order == [0, 1, 2, 3, 4, 5] and p.stream.learned_before == 2
    assert p.task(0).x_train.shape == (0, 20)          # no old training data
    assert p.test_set(1) is sets[1]
    assert set(p.task(2).y_train) == {4, 5}


def test_stream_settings_belong_to_custom_runs():
    with pytest.raises(ConfigError, match="--classes_per_task is for your own data"):
        resolve(Config(experiment="split_digits", classes_per_task=2))
    with pytest.raises(ConfigError, match="--capacity must be at least 1"):
        resolve(Config(experiment="custom", capacity=0))
    with pytest.raises(ConfigError, match="task_classes must be a list of tasks"):
        resolve(Config(experiment="custom", task_classes="0,1/2,3"))
    assert resolve(Config(experiment="custom")).iters == 2000   # split MNIST's settings


def test_task_classes_flag_parses():
    from apps.common import parse_task_classes

    assert parse_task_classes("3,5/0, 1") == (("3", "5"), ("0", "1"))
    with pytest.raises(ConfigError, match="no empty names"):
        parse_task_classes("3,/0")


def test_a_task_without_samples_is_refused_and_sizes_are_known_before_building():
    x, y = images(range(3))
    s = TaskStream(x, y, x, y, class_names=["a", "b", "c", "d"])   # "d" has no images
    with pytest.raises(DataError, match="class 'd' of task 2 has no training samples"):
        stream_protocol(s, "class", classes_per_task=2)
    with pytest.raises(DataError, match="task 2 \\(classes d\\) has no training samples"):
        stream_protocol(s, "class", classes_per_task=1, tasks=2, task_classes=[["a"], ["d"]])
    p = stream_protocol(s, "domain", task_classes=[["a", "b"], ["c", "a"]])
    assert p.stream.train_sizes == [8, 8] and p.keep_tasks == 1


def test_task_folders_keep_each_tasks_samples_apart_when_class_names_repeat():
    # Domain-IL as folders: task1/{even,odd}, task2/{even,odd}; the images of task 2's
    # "even" are not task 1's
    x, y = images(range(4))                       # 4 groups of 4 images
    names = np.array([0, 1, 0, 1]).repeat(4)      # even, odd, even, odd
    which = np.array([0, 0, 1, 1]).repeat(4)
    s = TaskStream(x, names, x, names, class_names=["even", "odd"],
                   tasks=[["even", "odd"], ["even", "odd"]], task_ids=(which, which))
    p = stream_protocol(s, "domain")
    np.testing.assert_array_equal(p.task(0).x_train, x[:8].reshape(8, -1))
    np.testing.assert_array_equal(p.task(1).x_train, x[8:].reshape(8, -1))
    assert list(p.task(1).y_train) == [0] * 4 + [1] * 4
    with pytest.raises(DataError, match="task folders fix its tasks"):
        stream_protocol(s, "domain", task_classes=[["even", "odd"]])


def test_a_saved_run_knows_its_own_data_from_new_data():
    s = stream(range(6))
    first = stream_protocol(s, "class", classes_per_task=2, tasks=2, capacity=3)
    sets = [first.test_set(t) for t in range(2)]
    own = learned(class_names=first.class_names, tasks=first.stream.tasks, test_sets=sets,
                  fingerprint=s.fingerprint())
    again = stream_protocol(s, "class", classes_per_task=2, learned=own)   # more tasks
    assert again.stream.learned_before == 0 and again.num_tasks == 3
    assert len(again.task(0).x_train) > 0                                  # its own data
    with pytest.raises(DataError, match="cut this data into other tasks"):
        stream_protocol(s, "class", task_classes=[[1, 0], [2, 3]], learned=own)
    assert stream(range(6)).fingerprint() == s.fingerprint() != stream(range(5)).fingerprint()
