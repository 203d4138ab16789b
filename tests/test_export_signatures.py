"""The SavedModel's signatures refuse what they cannot answer: class ids not learned
(``sample``), task ids not learned (``classify_task``) and pixels outside [0, 1] (``classify``, ``classify_task``)."""

import numpy as np
import pytest

from tests.apps.test_sample import tiny_bir_run


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import tensorflow as tf

    # a 2-task BI-R run on split digits (Class-IL, 2 classes per task): ids 0..3 learned
    return tf.saved_model.load(str(tiny_bir_run(tmp_path_factory)[1] / "saved_model"))


def _error(fn, **kwargs) -> str:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        fn(**kwargs)
    return e.value.message


@pytest.mark.parametrize("ids, bad", [([4, 5, 9], "[4 5 9]"), ([0, -1, 3], "[-1]"),
                                      ([2, 10, 10, 4, 10], "[10 4]")])
def test_sample_refuses_class_ids_not_learned(loaded, ids, bad):
    import tensorflow as tf

    msg = _error(loaded.signatures["sample"], class_ids=tf.constant(ids, tf.int32))
    assert f"class_ids {bad} not learned" in msg
    assert "learned 2 task(s), class ids 0 to 3" in msg
    assert "mode_dataset_labels[m], for ids 0 to 3: [0 1 2 3]" in msg


def test_sample_draws_the_ids_learned(loaded):
    import tensorflow as tf

    out = loaded.signatures["sample"](class_ids=tf.constant([0, 3, 1], tf.int32))
    assert out["x"].shape == (3, 64)
    assert out["labels"].numpy().tolist() == [0, 3, 1]
    assert out["dataset_labels"].numpy().tolist() == [0, 3, 1]   # --keep_label_order
    assert loaded.signatures["sample"](class_ids=tf.zeros([0], tf.int32))["x"].shape == (0, 64)


@pytest.mark.parametrize("value, shown", [(255.0, "from 0 to 255"), (-0.5, "from -0.5 to 1"),
                                          (1.001, "from 0 to 1.001")])
@pytest.mark.parametrize("signature", ["classify", "classify_task"])
def test_classify_refuses_pixels_outside_0_1(loaded, signature, value, shown):
    import tensorflow as tf

    x = np.zeros((3, 64), np.float32)
    x[0, 0] = 1.0
    x[2, 5] = value
    kwargs = {"x": tf.constant(x)}
    if signature == "classify_task":
        kwargs["task_ids"] = tf.constant([0, 1, 1], tf.int32)
    msg = _error(loaded.signatures[signature], **kwargs)
    assert "x must be pixels in [0, 1]" in msg and f"this batch holds values {shown}" in msg


def test_classify_takes_the_ends_of_the_range_and_marks_non_finite_rows(loaded):
    import tensorflow as tf

    x = np.zeros((4, 64), np.float32)
    x[1] = 1.0
    x[2, 3] = np.nan
    x[3, 0] = -np.inf
    for out in (loaded.signatures["classify"](x=tf.constant(x)),
                loaded.signatures["classify_task"](x=tf.constant(x),
                                                   task_ids=tf.constant([0, 1, 0, 1]))):
        labels = out["label"].numpy().tolist()
        assert labels[0] >= 0 and labels[1] >= 0 and labels[2:] == [-1, -1]
    assert loaded.signatures["classify"](x=tf.zeros([0, 64]))["label"].shape == (0,)


@pytest.mark.parametrize("ids, bad", [([0, 2, 1], "[2]"), ([-1, 0, 5], "[-1 5]")])
def test_classify_task_refuses_task_ids_not_learned(loaded, ids, bad):
    # 2 tasks learned of the protocol's capacity: task 2's units exist, untrained
    import tensorflow as tf

    msg = _error(loaded.signatures["classify_task"], x=tf.zeros([3, 64]),
                 task_ids=tf.constant(ids, tf.int32))
    assert f"task_ids {bad} not learned" in msg and "learned 2 task(s)" in msg
