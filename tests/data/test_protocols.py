"""Protocols: task splits, class order, permutations and the three scenarios' labels."""

import numpy as np
import pytest

from bir_keras.config import ConfigError
from bir_keras.data.protocols import class_order, make_protocol
from bir_keras.data.sources import DataError, Dataset
from tests.conftest import make_blobs


def _mnist_like(n=200):
    ds = make_blobs(10, n, n // 2, shape=(28, 28, 1))
    return Dataset("mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_labels_and_active_units(scenario):
    ds = _mnist_like()
    p = make_protocol("split_mnist", scenario, dataset=ds, keep_label_order=True)
    assert p.num_tasks == 5 and p.classes_per_task == 2 and p.input_shape == (784,)
    assert p.num_outputs == (2 if scenario == "domain" else 10)
    for t in range(5):
        task = p.task(t)
        assert task.classes == [2 * t, 2 * t + 1]
        raw = ds.y_train[np.isin(ds.y_train, task.classes)]
        within = raw - 2 * t
        expected = within if scenario == "domain" else 2 * t + within
        np.testing.assert_array_equal(task.y_train, expected)
        assert task.x_train.shape[1] == 784 and task.x_train.dtype == np.uint8
    table = p.active_table(2)
    if scenario == "task":
        np.testing.assert_array_equal(table[1], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    elif scenario == "domain":
        assert table.shape == (5, 2) and table.min() == 1
    else:
        np.testing.assert_array_equal(table[0], [1] * 6 + [0] * 4)
        np.testing.assert_array_equal(table[4], table[0])


# The authors' tasks (main_cl.py + data/load.py of GMvandeVen/brain-inspired-replay: label
# order below seed 10, else relabelling y -> p[y] with p = permutation(10) after
# np.random.seed(seed)), as dataset classes in within-task order.
AUTHORS_SPLIT_MNIST = {
    0: [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
    12: [[3, 8], [7, 6], [4, 0], [9, 2], [1, 5]],
    13: [[8, 3], [9, 0], [4, 1], [2, 5], [6, 7]],
}


@pytest.mark.parametrize("seed", sorted(AUTHORS_SPLIT_MNIST))
def test_split_mnist_tasks_are_the_authors(seed):
    ds = _mnist_like()
    p = make_protocol("split_mnist", "class", dataset=ds, seed=seed)
    assert [p.task(t).classes for t in range(5)] == AUTHORS_SPLIT_MNIST[seed]
    # within-task order: the first class of a task gets the task's first output unit
    for t, (first, second) in enumerate(AUTHORS_SPLIT_MNIST[seed]):
        task = p.task(t)
        raw = ds.y_train[np.isin(ds.y_train, task.classes)]
        np.testing.assert_array_equal(task.y_train[raw == first], 2 * t)
        np.testing.assert_array_equal(task.y_train[raw == second], 2 * t + 1)


def test_class_order_rules():
    ds = _mnist_like()
    # below 10 the label order, from 10 up a permutation that differs by seed
    assert make_protocol("split_mnist", "class", dataset=ds, seed=7).class_order == list(range(10))
    a = make_protocol("split_mnist", "class", dataset=ds, seed=20).class_order
    b = make_protocol("split_mnist", "class", dataset=ds, seed=21).class_order
    assert sorted(a) == list(range(10)) and a != b
    # an explicit label order at any seed
    kept = make_protocol("split_mnist", "class", dataset=ds, seed=12, keep_label_order=True)
    assert kept.class_order == list(range(10))
    # split CIFAR-100 is always permuted, seed 0 included (as the authors' code)
    assert class_order("split_cifar100", 100, 0) == [
        int(c) for c in np.argsort(np.random.RandomState(0).permutation(100))]


def _padded(ds, i):
    img = np.zeros((32, 32), np.uint8)
    img[2:30, 2:30] = ds.x_train[i, :, :, 0]
    return img.reshape(-1)


@pytest.mark.parametrize("seed", [5, 12])
def test_permuted_mnist_first_task_as_the_authors(seed):
    ds = _mnist_like()
    p = make_protocol("permuted_mnist", "domain", tasks=3, dataset=ds, seed=seed)
    assert p.input_shape == (1024,) and p.num_outputs == 10 and p.num_modes == 10
    rng = np.random.RandomState(seed)
    if seed < 10:  # task 1 unpermuted, the others draw from the seeded generator
        expected = [np.arange(1024), rng.permutation(1024), rng.permutation(1024)]
    else:  # every task permuted, the first included
        expected = [rng.permutation(1024) for _ in range(3)]
    for t in range(3):
        np.testing.assert_array_equal(p.permutations[t], expected[t])
        np.testing.assert_array_equal(p.task(t).x_train[0], _padded(ds, 0)[expected[t]])
        np.testing.assert_array_equal(p.task(t).y_train, ds.y_train)
    assert (seed < 10) == np.array_equal(p.permutations[0], np.arange(1024))
    # more tasks, same first tasks (a run can be continued)
    q = make_protocol("permuted_mnist", "domain", tasks=5, dataset=ds, seed=seed)
    np.testing.assert_array_equal(q.permutations[2], p.permutations[2])


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_permuted_mnist_task_and_class_il_shift_labels(scenario):
    ds = _mnist_like()
    p = make_protocol("permuted_mnist", scenario, tasks=3, dataset=ds, seed=12)
    assert p.num_outputs == 100 * 10 and p.num_modes == p.num_outputs
    for t in range(3):
        np.testing.assert_array_equal(p.task(t).y_train, ds.y_train + 10 * t)
        np.testing.assert_array_equal(p.task(t).y_test, ds.y_test + 10 * t)
    table = p.active_table(2)
    if scenario == "task":
        assert table[1].sum() == 10 and table[1, 10:20].min() == 1
    else:
        assert table[0].sum() == 30 and table[0, :30].min() == 1


def test_cifar_protocols_keep_images_and_normalise():
    ds = make_blobs(100, 400, 200, shape=(32, 32, 3))
    ds = Dataset("cifar100", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)
    p = make_protocol("split_cifar100", "class", dataset=ds)
    assert p.num_tasks == 10 and p.num_outputs == 100 and p.conv
    assert p.task(3).x_train.shape[1:] == (32, 32, 3)
    x = p.preprocess_np(p.task(0).x_train)
    assert x.dtype == np.float32 and abs(float(x.mean())) < 1.5


def test_bad_inputs_raise_clear_errors():
    # the settings: bir_keras.data.protocols.check_setting, the rule config.resolve uses too
    ds = _mnist_like()
    with pytest.raises(ConfigError, match="--experiment must be one of split_mnist, "):
        make_protocol("split_imagenet", "class", dataset=ds)
    with pytest.raises(ConfigError, match="--scenario must be one of task, domain, class"):
        make_protocol("split_mnist", "classes", dataset=ds)
    with pytest.raises(ConfigError, match=r"--tasks=6: split_mnist has 5 tasks of 2 classes"):
        make_protocol("split_mnist", "class", tasks=6, dataset=ds)
    with pytest.raises(ConfigError, match="--tasks must be at least 1, got 0"):
        make_protocol("split_mnist", "class", tasks=0, dataset=ds)
    # the data: a dataset with fewer classes than the tasks need
    small = make_blobs(6, 100, 50, shape=(28, 28, 1))
    small = Dataset("mnist", small.x_train, small.y_train, small.x_test, small.y_test,
                    small.class_names)
    with pytest.raises(DataError, match="needs 8 classes, the data has 6"):
        make_protocol("split_mnist", "class", tasks=4, dataset=small)


def test_a_long_permuted_stream_keeps_only_the_task_being_learned():
    # memory flat in the number of tasks: a task's permuted training data exists while it is
    # learned; earlier tasks' test sets are made again when evaluated (the same arrays)
    ds = _mnist_like()
    p = make_protocol("permuted_mnist", "domain", tasks=30, dataset=ds, seed=12)
    first = p.task(0)
    x0, y0 = first.x_test.copy(), first.y_test.copy()
    for t in range(30):
        p.task(t)
        assert list(p._tasks) == [t]
    x, y = p.test_set(0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert list(p._tasks) == [29]  # a test set alone is not kept, nor its training data
    # protocols whose tasks are costly to make (conv features) keep every task
    split = make_protocol("split_mnist", "class", dataset=ds, seed=12)
    for t in range(3):
        split.task(t)
    assert sorted(split._tasks) == [0, 1, 2]
