"""Protocols: task splits, class order, permutations and the three scenarios' labels."""

import numpy as np
import pytest

from bir_keras.data.protocols import make_protocol
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


def test_class_order_permuted_by_seed():
    ds = _mnist_like()
    a = make_protocol("split_mnist", "class", dataset=ds, seed=1)
    b = make_protocol("split_mnist", "class", dataset=ds, seed=1)
    c = make_protocol("split_mnist", "class", dataset=ds, seed=2)
    assert a.class_order == b.class_order and sorted(a.class_order) == list(range(10))
    assert a.class_order != c.class_order
    first = a.task(0)
    assert set(np.unique(ds.y_train[np.isin(ds.y_train, first.classes)])) == set(a.class_order[:2])
    # labels follow the permuted order: class_order[k] gets output unit k in Class-IL
    k_class = a.class_order[1]
    sel = ds.y_train[np.isin(ds.y_train, first.classes)]
    np.testing.assert_array_equal(first.y_train[sel == k_class], 1)


def test_permuted_mnist_pads_and_permutes():
    ds = _mnist_like()
    p = make_protocol("permuted_mnist", "domain", tasks=3, dataset=ds, seed=0)
    assert p.input_shape == (1024,) and p.num_outputs == 10
    t0, t1 = p.task(0), p.task(1)
    img = np.zeros((32, 32), np.uint8)
    img[2:30, 2:30] = ds.x_train[0, :, :, 0]
    np.testing.assert_array_equal(t0.x_train[0], img.reshape(-1))  # task 1: identity
    perm = p.permutations[1]
    np.testing.assert_array_equal(t1.x_train[0], img.reshape(-1)[perm])
    assert not np.array_equal(perm, np.arange(1024))
    np.testing.assert_array_equal(t1.y_train, ds.y_train)
    q = make_protocol("permuted_mnist", "domain", tasks=3, dataset=ds, seed=0)
    np.testing.assert_array_equal(q.permutations[2], p.permutations[2])


def test_cifar_protocols_keep_images_and_normalise():
    ds = make_blobs(100, 400, 200, shape=(32, 32, 3))
    ds = Dataset("cifar100", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)
    p = make_protocol("split_cifar100", "class", dataset=ds)
    assert p.num_tasks == 10 and p.num_outputs == 100 and p.conv
    assert p.task(3).x_train.shape[1:] == (32, 32, 3)
    x = p.preprocess_np(p.task(0).x_train)
    assert x.dtype == np.float32 and abs(float(x.mean())) < 1.5


def test_bad_inputs_raise_clear_errors():
    ds = _mnist_like()
    with pytest.raises(DataError, match="unknown experiment"):
        make_protocol("split_imagenet", "class", dataset=ds)
    with pytest.raises(DataError, match="unknown scenario"):
        make_protocol("split_mnist", "classes", dataset=ds)
    with pytest.raises(DataError, match="needs 12 classes"):
        make_protocol("split_mnist", "class", tasks=6, dataset=ds)
