"""What the trainers do as the authors' code does (fidelity.md items 11-17 and the
settings of the paper's variants): replay labels, mixture weights and gates, Domain-IL's
prior, Task-IL's per-task replay, epoch batches, the gate proportions, the Fisher cache.

The step runs without XLA here (``jit_compile=False``): none of these is about XLA,
compiling it takes most of these short runs' time, and test_methods checks that XLA trains
like the plain step."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bir_keras.config import Config, method_settings, resolve
from bir_keras.data.protocols import make_protocol
from bir_keras.data.sources import Dataset
from bir_keras.models.classifier import Classifier
from bir_keras.strategies.ewc.regularizer import dense_fisher
from bir_keras.strategies.execution import pad_samples
from bir_keras.strategies.records import Batch
from bir_keras.strategies.trainers import make_trainer
from tests.conftest import make_blobs


def _replay(tr, t):
    """One iteration's task run, draws, batch and replay at task ``t`` (eagerly)."""
    run = tr.start_task(t)
    data = pad_samples(run.data)
    idx = tr.draw_batch(data, run.ctx, run.plan)
    draws = tr.draw(run.ctx, run.plan)   # the method's own draws
    batch = Batch(x=tr.preprocess(tf.gather(data.x, idx)), y=tf.gather(data.y, idx),
                  tid=tf.gather(data.tid, idx))
    return run, draws, batch, tr.replay_batch(batch, draws, run.ctx, run.plan)


@pytest.mark.parametrize("distill", [True, False])
def test_replay_prior_and_gate_follow_the_previous_model(tiny_setup, distill):
    cfg, proto = tiny_setup("class", tasks=3, iters=20, replay="generative",
                            brain_inspired=True, distill=distill, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit(until=2)
    _, draws, _, rep = _replay(tr, 2)
    scores = tr.prev_model.classify(rep.x).numpy()[:, :4]   # the 4 classes it knew
    if distill:
        # item 11: mixture weights softmax(old scores / T) with T = 2; item 13: the same
        # weights make the soft gate
        w = np.exp(scores / 2.0 - (scores / 2.0).max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        expected = np.concatenate([w, np.zeros((len(w), proto.num_modes - 4))], 1)
        np.testing.assert_allclose(rep.mode_probs.numpy(), expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rep.gate.numpy(), expected, rtol=1e-4, atol=1e-6)
        assert not np.allclose(expected.max(1), 1.0)  # soft, not one-hot
    else:
        # hard targets: the predicted class's mode and its gate
        np.testing.assert_array_equal(rep.prior_modes.numpy(), scores.argmax(1))
        np.testing.assert_array_equal(rep.gate.numpy(), np.eye(proto.num_modes)[scores.argmax(1)])
    # generation itself used the drawn class's gate: the gate of the predicted class can differ
    assert set(draws.modes.numpy()) <= set(range(4))


def _mnist_like(n_train=200, n_test=100):
    ds = make_blobs(10, n_train, n_test, shape=(28, 28, 1))
    return Dataset("mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)


def _permuted(scenario, tasks, **kw):
    base = dict(experiment="permuted_mnist", scenario=scenario, tasks=tasks, iters=20, batch=32,
                fc_units=40, z_dim=8, seed=12, jit_compile=False)
    base.update(kw)
    proto = make_protocol("permuted_mnist", scenario, tasks=tasks, dataset=_mnist_like(), seed=12)
    return resolve(Config(**base), False), proto


def test_permuted_mnist_prior_has_ten_modes_and_gates_draw_previous_tasks():
    cfg, proto = _permuted("domain", 4, replay="generative", brain_inspired=True)
    assert cfg.dg_type == "task" and cfg.dg_prop == 0.8 and cfg.dg_gates
    tr = make_trainer(cfg, proto, verbose=False)
    # item 12: one mode per digit, shared by every permutation; one gate per task
    assert tr.model.prior_means.shape == (10, 8)
    assert tr.model.gate_masks[0].shape[0] == proto.capacity
    tr.fit(until=3)
    _, draws, _, rep = _replay(tr, 3)
    modes, tasks = draws.modes.numpy(), draws.tasks.numpy()
    assert set(modes) <= set(range(10)) and len(set(modes)) > 5
    assert set(tasks) == {0, 1, 2}   # the gate's task: previous tasks only, each of them
    # training on replay keeps the task gate it was generated with (task gates, item 13)
    np.testing.assert_array_equal(rep.gate.numpy(), np.eye(proto.capacity)[tasks])


def test_task_il_conditional_replay_is_drawn_per_previous_task(tiny_setup):
    cfg, proto = tiny_setup("task", tasks=4, iters=10, batch_replay=10, replay="generative",
                            brain_inspired=True, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert tr.per_task_replay() and not tr.replay_all_previous_tasks()
    tr.fit(until=3)
    run, draws, batch, rep = _replay(tr, 3)
    m = math.ceil(10 / 3)   # item 14: ceil(batch_replay / (t - 1)) per previous task
    assert run.plan.n_replay == 3 * m == 12
    tasks = draws.tasks.numpy()
    np.testing.assert_array_equal(tasks, np.repeat([0, 1, 2], m))
    np.testing.assert_array_equal(draws.modes.numpy() // 2, tasks)  # classes of that task
    assert rep.x.shape[0] == 12 and rep.mode_ids.shape == (12, 2)
    # the losses are averaged over all 12 (= over tasks of the per-task means)
    losses = tr.losses(batch, rep, draws, run.ctx, run.plan)
    assert np.isfinite(float(losses["total"]))
    # unconditional GR in Task-IL replays batch_replay samples labelled by every head
    gr_cfg, _ = tiny_setup("task", tasks=4, iters=10, batch_replay=10, replay="generative")
    gr = make_trainer(gr_cfg, proto, verbose=False)
    assert not gr.per_task_replay() and gr.plan(3).n_replay == 10


def test_mixture_prior_takes_adam_steps_of_its_summed_gradient(tiny_setup):
    """The prior's means are gathered per sample's mode; the authors' ``nn.Parameter``
    gets the summed (dense) gradient, so Adam's first step moves every element with a
    gradient by lr (|g| / (|g| + eps)). Adam on ``IndexedSlices`` squared each sample's
    slice before summing: a mode drawn n times moved up to sqrt(n) lr."""
    cfg, proto = tiny_setup("class", tasks=2, batch=32, jit_compile=False,
                            **method_settings("bir", "split_digits", "class"))
    tr = make_trainer(cfg, proto, verbose=False)
    before = tr.model.prior_means.numpy().copy()
    run = tr.start_task(0)
    run = run._replace(data=pad_samples(run.data))
    tr.run_steps(run, 1, run.plan)
    step = np.abs(tr.model.prior_means.numpy() - before)
    moved = step[step > 0]
    assert moved.size >= 2 * cfg.z_dim   # the batch's two classes (task 1) have gradients
    np.testing.assert_allclose(moved, cfg.lr, rtol=1e-3)


def test_batches_are_shuffled_epochs_without_replacement(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, batch=32)
    tr = make_trainer(cfg, proto, verbose=False)
    data = pad_samples(tr.task_data(0))
    n = int(data.sizes[0])
    per_epoch = n // 32
    ctx, plan = tr.step_context(0), tr.plan(0)
    tr.batch_counter.assign(0)
    epochs = [np.concatenate([tr.draw_batch(data, ctx, plan).numpy() for _ in range(per_epoch)])
              for _ in range(2)]
    for e in epochs:   # no sample twice in an epoch; the last incomplete batch is dropped
        assert len(e) == per_epoch * 32 == len(set(e)) and e.max() < n
    assert not np.array_equal(epochs[0], epochs[1])
    # a task's batches start afresh: the same first batch whatever ran before
    tr.batch_counter.assign(0)
    np.testing.assert_array_equal(tr.draw_batch(data, ctx, plan).numpy(), epochs[0][:32])


@pytest.mark.parametrize("method", [{}, {"replay": "offline"}])
def test_epoch_order_sorted_once_gives_the_indices_of_sorting_every_batch(tiny_setup, method):
    # draw_batch keeps each part's epoch order in a cache; compiled (XLA, as the step) over
    # two epochs and a change of task, its indices are those drawn with the cache emptied
    # before every batch (the permutation sorted again each time)
    cfg, proto = tiny_setup("task", tasks=3, batch=32, **method)
    tr = make_trainer(cfg, proto, verbose=False)
    draw = tf.function(lambda data, ctx: tr.draw_batch(data, ctx, plan), jit_compile=True)
    for t in (1, 2):
        data, ctx, plan = pad_samples(tr.task_data(t)), tr.step_context(t), tr.plan(t)
        per_epoch = int(tf.reduce_min(data.sizes)) // (32 // plan.parts)
        tr.size_draw_cache(data, plan)
        tr.batch_counter.assign(0)
        cached = [draw(data, ctx).numpy() for _ in range(2 * per_epoch + 1)]
        tr.batch_counter.assign(0)
        fresh = []
        for _ in cached:
            tr.sampler.epoch_key.assign(tf.fill([plan.parts], tf.constant(-1, tf.int64)))
            fresh.append(draw(data, ctx).numpy())
        np.testing.assert_array_equal(np.stack(cached), np.stack(fresh))
        assert not np.array_equal(cached[0], cached[per_epoch])   # a new epoch, a new order
        # before each compiled call the cache is sized, not emptied, when its shapes fit
        kept = tr.sampler.epoch_order.numpy()
        tr.size_draw_cache(data, plan)
        np.testing.assert_array_equal(tr.sampler.epoch_order.numpy(), kept)
        assert (tr.sampler.epoch_key.numpy() >= 0).all()


def test_joint_task_il_deals_the_batch_over_the_tasks(tiny_setup):
    cfg, proto = tiny_setup("task", tasks=3, batch=32, replay="offline")
    tr = make_trainer(cfg, proto, verbose=False)
    data = pad_samples(tr.task_data(2))
    tr.batch_counter.assign(0)
    idx = tr.draw_batch(data, tr.step_context(2), tr.plan(2)).numpy()
    tid = data.tid.numpy()[idx]
    np.testing.assert_array_equal(tid, np.arange(32) % 3)
    assert len(set(idx)) == 32


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_permuted_mnist_task_and_class_il_train(scenario):
    cfg, proto = _permuted(scenario, 3, iters=60, replay="offline", lr=0.001)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit()
    final = tr.history.accuracy_matrix[-1]
    assert min(final) > 0.6, final   # chance is 0.1 in both


def test_dense_fisher_functions_live_on_their_model():
    x = tf.constant(np.random.RandomState(0).rand(20, 6).astype("float32"))
    tid = tf.zeros([20], tf.int32)
    active = tf.ones([20, 3])
    a = Classifier((6,), 3, [5], seed=0)
    fa = dense_fisher(a, a.trainable_variables, x, tid, active)
    b = Classifier((6,), 3, [5], seed=1)
    assert "_bir_fisher_fns" not in b.__dict__   # nothing handed over from another model
    fb = dense_fisher(b, b.trainable_variables, x, tid, active)
    assert not np.allclose(fa[-1].numpy(), fb[-1].numpy())


CIFAR_CLASS = dict(bir=0.7, bir_no_dis=0.8, bir_no_rtf=0.7, bir_no_con=0.6, bir_no_int=0.9,
                   gr_gat=0.7, bir_si=0.6)
CIFAR_TASK = dict(bir=0.0, bir_no_dis=0.0, bir_no_rtf=0.3, bir_no_con=0.0, bir_no_int=0.8,
                  gr_gat=0.1)
PERMUTED = dict(bir=0.8, bir_no_rtf=0.8, bir_no_con=0.0, bir_no_dis=0.6, gr_gat=0.2, bir_si=0.8)


@pytest.mark.parametrize("experiment, scenario, table", [
    ("split_cifar100", "class", CIFAR_CLASS), ("split_cifar100", "task", CIFAR_TASK),
    ("permuted_mnist", "domain", PERMUTED),
])
def test_gate_proportion_of_each_variant(experiment, scenario, table):
    conv = experiment != "permuted_mnist"
    for method, prop in table.items():
        c = resolve(Config(experiment=experiment, scenario=scenario,
                           **method_settings(method, experiment, scenario)), conv)
        if prop > 0:
            assert c.dg_gates and c.dg_prop == prop, method
            assert not c.notes
        else:   # a variant whose gates are off says so
            assert not c.dg_gates and any("gates are off" in n for n in c.notes), method


def test_split_mnist_gates_08_in_every_scenario():
    for scenario in ("task", "domain", "class"):
        c = resolve(Config(experiment="split_mnist", scenario=scenario,
                           **method_settings("bir", "split_mnist", scenario)), False)
        assert c.dg_gates and c.dg_prop == 0.8


@pytest.mark.parametrize("experiment, scenario, conv, c_si, prop", [
    ("split_cifar100", "class", True, 1e8, 0.6), ("permuted_mnist", "domain", False, 1.0, 0.8),
])
def test_brain_inspired_si_gets_bir_si_settings_as_a_whole(experiment, scenario, conv, c_si, prop):
    spelled = resolve(Config(experiment=experiment, scenario=scenario, replay="generative",
                             brain_inspired=True, si=True), conv)
    short = resolve(Config(experiment=experiment, scenario=scenario,
                           **method_settings("bir_si", experiment, scenario)), conv)
    assert spelled.si_c == short.si_c == c_si and spelled.dg_prop == short.dg_prop == prop


@pytest.mark.parametrize("experiment_name, kw", [
    ("split_digits", dict(dg_type="class")), ("permuted_mnist", dict()),
])
def test_domain_il_run_logs_and_samples_with_shared_modes(tmp_path, experiment_name, kw):
    """Domain-IL BI-R end to end: the prior has a mode per within-task class, TensorBoard's
    sample grids and the SavedModel's ``sample`` take (task, class) pairs and generate with
    the pair's class mode and, with task gates, the task's gate."""
    from bir_keras import experiment

    cfg = Config(experiment=experiment_name, scenario="domain", tasks=2, iters=10, batch=16,
                 fc_units=20, z_dim=4, replay="generative", brain_inspired=True, seed=12,
                 jit_compile=False, **kw)
    setup = None
    if experiment_name == "permuted_mnist":
        pixels = make_protocol("permuted_mnist", "domain", tasks=2, dataset=_mnist_like(60, 30),
                               seed=12)
        setup = experiment.Setup(resolve(cfg, False), pixels, pixels, None)
    exp = tmp_path / "export"
    experiment.run(cfg, str(tmp_path / "out"), export_dir=str(exp), verbose=False, setup=setup)
    m = tf.saved_model.load(str(exp / "saved_model"))
    cpt = 2 if experiment_name == "split_digits" else 10
    ids = tf.constant([0, 1, cpt, cpt + 1], tf.int32)   # class 0 and 1 of tasks 1 and 2
    out = m.signatures["sample"](class_ids=ids)
    assert out["x"].shape[0] == 4
    np.testing.assert_array_equal(out["labels"].numpy(), [0, 1, 0, 1])
