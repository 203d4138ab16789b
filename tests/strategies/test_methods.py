"""Methods on a tiny two-task Class-IL problem: forgetting without replay, less with it.

The step runs without XLA here (``jit_compile=False``) unless a test is about XLA: compiling
it takes most of these short runs' time, and test_xla_step_trains_like_the_plain_step checks
that XLA trains like the plain step."""

import numpy as np
import pytest
import tensorflow as tf

from bir_keras.config import ConfigError
from bir_keras.strategies.finetune.trainer import FineTuning
from bir_keras.strategies.generative.trainer import GenerativeReplay
from bir_keras.strategies.generative.vae_replay import VAEDraws
from bir_keras.strategies.joint.trainer import Joint
from bir_keras.strategies.lwf.trainer import LwF
from bir_keras.strategies.trainers import make_trainer


def _fit(tiny_setup, scenario="class", tasks=2, **kw):
    kw.setdefault("jit_compile", False)
    cfg, proto = tiny_setup(scenario, tasks=tasks, **kw)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit()
    return tr


@pytest.fixture(scope="module")
def _fitted_runs():
    return {}


@pytest.fixture
def fitted(tiny_setup, _fitted_runs):
    """``fitted(**kw)``: ``_fit(tiny_setup, **kw)``, once per module for the same settings
    (the same data and seed give the same run); tests only read these trainers."""
    def get(**kw):
        key = tuple(sorted(kw.items()))
        if key not in _fitted_runs:
            _fitted_runs[key] = _fit(tiny_setup, **kw)
        return _fitted_runs[key]

    return get


# fine-tuning, the baseline every replay method is compared with
NONE = dict(iters=150)


def test_none_forgets_and_joint_does_not(fitted):
    none = fitted(**NONE)
    joint = fitted(iters=80, replay="offline")
    assert type(none) is FineTuning and isinstance(joint, Joint)
    m_none, m_joint = none.history.accuracy_matrix, joint.history.accuracy_matrix
    assert m_none[0][0] > 0.95 and m_none[1][1] > 0.95
    assert m_none[1][0] < 0.2          # task 1 forgotten in Class-IL
    assert m_joint[1][0] > 0.9 and m_joint[1][1] > 0.9
    assert m_none[0][1] is None


def test_generative_replay_reduces_forgetting(fitted):
    none = fitted(**NONE)
    gr = fitted(iters=150, replay="generative", lr=0.003)
    assert isinstance(gr, GenerativeReplay)
    assert gr.history.accuracy_matrix[1][0] > none.history.accuracy_matrix[1][0] + 0.3


def test_bir_reduces_forgetting(fitted):
    none = fitted(**NONE)
    bir = fitted(iters=150, replay="generative", brain_inspired=True, lr=0.003)
    assert bir.config.feedback and bir.config.prior == "gmm" and bir.config.distill
    assert bir.history.accuracy_matrix[1][0] > none.history.accuracy_matrix[1][0] + 0.3


def test_task_il_none_keeps_more_than_class_il(tiny_setup):
    task = _fit(tiny_setup, scenario="task", iters=60)
    assert task.history.accuracy_matrix[1][0] > 0.6


def test_lwf_targets_come_from_frozen_previous_model(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, iters=30, replay="current", distill=True,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert isinstance(tr, LwF)
    tr.fit(until=1)
    tr.before_task(1)
    ctx = tr.step_context(1)
    x = tf.constant(proto.preprocess_np(proto.task(1).x_train[:16]))
    tid = tf.zeros([16], tf.int32)
    before = tr.label_replay(x, tid, ctx).soft.numpy()
    for v in tr.model.trainable_variables:   # change the live model
        v.assign(v + 1.0)
    after = tr.label_replay(x, tid, ctx).soft.numpy()
    np.testing.assert_allclose(before, after)
    # soft targets only on the previously active units (task 1's two classes)
    assert np.all(after[:, 2:] == 0) and np.allclose(after.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("distill", [False, True])
def test_task_il_replay_is_labelled_by_every_previous_task(tiny_setup, distill):
    """Task-IL LwF: each replayed input is labelled by each previous task's head and the
    loss is the mean over those tasks of the per-task loss (method.md 4.1)."""
    cfg, proto = tiny_setup("task", tasks=3, iters=20, replay="current", distill=distill,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert tr.replay_all_previous_tasks()
    tr.fit(until=2)
    tr.before_task(2)
    ctx = tr.step_context(2)
    x = tf.constant(proto.preprocess_np(proto.task(2).x_train[:8]))
    tid = tf.zeros([8], tf.int32)
    rep = tr.label_replay(x, tid, ctx)
    np.testing.assert_allclose(rep.targets.task_weights.numpy()[:3], [0.5, 0.5, 0.0])
    old = tr.prev_model(x, tid).numpy()
    new = tr.model(x, tid).numpy() + np.random.RandomState(0).randn(8, old.shape[1])
    per = rep.targets.loss(tf.constant(new, tf.float32))
    loss = float(tf.nn.compute_average_loss(per, global_batch_size=cfg.batch_replay))
    T, hand = cfg.temp, []
    for k in range(2):   # tasks 1 and 2 are the previous ones
        zo, zn = old[:, 2 * k:2 * k + 2], new[:, 2 * k:2 * k + 2]
        if distill:
            p_old = np.exp(zo / T) / np.exp(zo / T).sum(1, keepdims=True)
            log_new = zn / T - np.log(np.exp(zn / T).sum(1, keepdims=True))
            hand.append(-(T ** 2) * (p_old * log_new).sum(1))
        else:
            y = zo.argmax(1)
            log_new = zn - np.log(np.exp(zn).sum(1, keepdims=True))
            hand.append(-log_new[np.arange(8), y])
    np.testing.assert_allclose(loss, np.mean(hand) * 8 / cfg.batch_replay, rtol=1e-4)


def test_conditional_task_il_replay_keeps_its_task(tiny_setup):
    cfg, proto = tiny_setup("task", tasks=2, replay="generative", brain_inspired=True)
    assert not make_trainer(cfg, proto, verbose=False).replay_all_previous_tasks()


def test_generative_replay_targets_come_from_frozen_copy(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, iters=30, replay="generative", jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit(until=1)
    tr.before_task(1)
    ctx, plan = tr.step_context(1), tr.plan(1)
    draws = VAEDraws(modes=tf.constant([0, 1, 0, 1]), tasks=tf.constant([0, 0, 0, 0]),
                     eps=None, r_eps=tf.random.normal((4, cfg.z_dim)), r_eps_enc=None)
    first = tr.replay_batch(None, draws, ctx, plan)
    for m in (tr.model, tr.generator):
        for v in m.trainable_variables:
            v.assign(v * 0.5 - 0.3)
    second = tr.replay_batch(None, draws, ctx, plan)
    np.testing.assert_allclose(first.x.numpy(), second.x.numpy(), atol=1e-6)
    np.testing.assert_array_equal(first.hard.numpy(), second.hard.numpy())
    assert set(first.hard.numpy()) <= {0, 1}


def test_reinit_reinitialises_after_freezing(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, iters=20, replay="generative", reinit=True,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit(until=1)
    trained = [v.numpy().copy() for v in tr.model.trainable_variables]
    adam = [v.numpy().copy() for v in tr.optimizer.variables]
    tr.before_task(1)
    prev = tr.prev_model.get_weights()
    np.testing.assert_allclose(prev[0], trained[0])
    assert not np.allclose(tr.model.trainable_variables[0].numpy(), trained[0])
    # the authors' code keeps the optimiser's state (fidelity.md item 7)
    assert any(np.abs(a).max() > 0 for a in adam)
    for a, v in zip(adam, tr.optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())


@pytest.mark.parametrize("kw, msg", [
    (dict(scenario="class", xdg=True), "XdG needs task identity"),
    (dict(scenario="task", hidden=True), "needs conv layers"),
    (dict(scenario="class", feedback=True), "needs --replay=generative"),
    (dict(scenario="class", gamma=2.0), "gamma must be in"),
    (dict(scenario="class", lr=float("nan")), "lr must be a positive finite"),
    (dict(scenario="class", seed=-1), "seed must be in"),
])
def test_incompatible_flags_refused(tiny_setup, kw, msg):
    scenario = kw.pop("scenario")
    with pytest.raises(ConfigError, match=msg):
        tiny_setup(scenario, tasks=2, **kw)


# BI-R + SI with --run-slow (40 s in the suite): its XLA step is also checked against a
# record by test_equivalence.py (class_bir_si) and through apps.train by test_train_app.py
@pytest.mark.parametrize("kw", [dict(), pytest.param(
    dict(replay="generative", brain_inspired=True, si=True), marks=pytest.mark.slow)])
def test_xla_step_trains_like_the_plain_step(tiny_setup, kw):
    """--jit_compile runs the same step. On a CPU, TensorFlow 2.21's stateless random ops
    draw other numbers under XLA than without it (README, "Running an experiment"), so the
    batches differ and the two accuracy matrices agree as two seeds of one setting do:
    within a tenth of the tiny test set (40 samples per task)."""
    plain_tr = _fit(tiny_setup, iters=60, jit_compile=False, **kw)
    xla_tr = _fit(tiny_setup, iters=60, jit_compile=None, **kw)   # auto: XLA on one device
    assert xla_tr.jit_compile and not plain_tr.jit_compile
    plain, xla = plain_tr.history.accuracy_matrix, xla_tr.history.accuracy_matrix
    for row_p, row_x in zip(plain, xla):
        for a, b in zip(row_p, row_x):
            assert (a is None and b is None) or abs(a - b) <= 0.1


def test_xdg_with_replay_keeps_each_samples_drawn_task(tiny_setup):
    """XdG + LwF in Task-IL: the logits depend on the task's mask, so replay is labelled
    per sample with its drawn previous task (not by every head); it trains end to end."""
    tr = _fit(tiny_setup, scenario="task", tasks=3, iters=60, xdg=True, xdg_prop=0.5, replay="current",
              distill=True)
    assert isinstance(tr, LwF) and not tr.replay_all_previous_tasks()
    m = tr.history.accuracy_matrix
    assert len(m) == 3 and all(0.0 <= a <= 1.0 for a in m[2])
    assert m[0][0] > 0.9 and m[2][0] > 0.6    # task 1 learned, and kept with its mask


def test_every_declared_trainer_and_regularizer_is_found():
    # the registry names classes by path (imported only when a run builds them)
    from bir_keras.config import Config, replay_method, resolve
    from bir_keras.strategies import DECLARATIONS
    from bir_keras.strategies.base import Trainer

    for m in DECLARATIONS:
        if m.replay is not None:
            c = resolve(Config(replay=m.replay))
            assert issubclass(m.trainer_class(c), Trainer), m.name
        if m.regularizer is not None:
            c = resolve(Config(**{m.switch: True}))
            assert m.make_regularizer(c).name == m.switch
    bir = resolve(Config(method="bir"))
    assert replay_method("generative").trainer_class(bir).__name__ == "BrainInspiredReplay"
