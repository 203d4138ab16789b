"""Split CIFAR-100 end to end on generated data shaped like CIFAR-100 (tiny networks, few
iterations): BI-R and BI-R + SI with internal replay over 10 tasks, pixel-level GR with the
conv VAE, and a None run that starts from given conv weights."""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf

from bir_keras import experiment
from bir_keras import setup as run_setup
from bir_keras.config import Config, ConfigError, method_settings
from bir_keras.data.protocols import CIFAR_MEAN, CIFAR_STD, make_protocol
from bir_keras.data.sources import Dataset
from bir_keras.models.layers import CONV_FEATURES, conv_trunk
from bir_keras.models.vae import VAE, RtFClassifier
from tests.conftest import make_blobs

# tiny networks and few iterations: the time goes into tracing the compiled steps
TINY = dict(iters=3, fc_units=32, z_dim=8, batch=16, keep_label_order=True)


@pytest.fixture(scope="module")
def cifar100():
    """100 classes of 32x32x3 images: 5 training and 2 test images per class."""
    ds = make_blobs(100, 500, 200, shape=(32, 32, 3))
    return Dataset("cifar100", ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                   [f"c{k}" for k in range(100)])


@pytest.fixture
def with_data(monkeypatch, cifar100):
    """``experiment.prepare`` reads the generated dataset instead of loading CIFAR-100."""
    monkeypatch.setattr(run_setup, "make_protocol",
                        functools.partial(make_protocol, dataset=cifar100))


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    """A random conv trunk saved as ``.weights.h5``, with its weights (kernels from a fresh
    initialisation; biases, BN scales, offsets and statistics moved off their initial values)."""
    trunk = conv_trunk()
    rng = np.random.RandomState(3)
    weights = [w if w.ndim > 1 else (w + rng.uniform(-0.1, 0.1, w.shape)).astype(np.float32)
               for w in trunk.get_weights()]
    trunk.set_weights(weights)
    path = tmp_path_factory.mktemp("trunk") / "random.weights.h5"
    trunk.save_weights(str(path))
    return path, weights


def check_matrix(matrix, tasks):
    assert len(matrix) == tasks
    for i, row in enumerate(matrix):
        assert len(row) == tasks
        assert all(a is not None and 0.0 <= a <= 1.0 for a in row[:i + 1])
        assert all(a is None for a in row[i + 1:])


# each method once and each scenario once (all four pairs took 230 s of CI's 20 minutes)
@pytest.mark.parametrize("scenario,method", [("task", "bir"), ("class", "bir_si")])
def test_bir_internal_replay_10_tasks(with_data, cifar100, method, scenario):
    cfg = Config(experiment="split_cifar100", scenario=scenario, conv_weights="random",
                 **TINY, **method_settings(method, "split_cifar100", scenario))
    setup = experiment.prepare(cfg)
    c = setup.config
    assert c.hidden and c.freeze_convE and c.feedback and c.prior == "gmm" and c.si == (
        method == "bir_si")
    # internal replay: the protocol's inputs are the frozen trunk's 1024 features
    p = setup.protocol
    assert p.features and p.input_shape == (CONV_FEATURES,) == (1024,)
    assert setup.pixels.input_shape == (32, 32, 3) and not setup.pixels.features
    trunk_before = [w.copy() for w in setup.trunk.get_weights()]
    pixels = setup.pixels.task(0).x_train
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (32, 32, 3)
    normalised = ((pixels / 255.0 - np.array(CIFAR_MEAN["cifar100"]))
                  / np.array(CIFAR_STD["cifar100"])).astype(np.float32)
    cached = p.task(0).x_train
    assert cached.shape == (len(pixels), 1024) and cached.dtype == np.float32
    np.testing.assert_allclose(cached, setup.trunk(normalised, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)

    assert experiment.build(setup, verbose=False).jit_compile   # no convolution: XLA by default
    # trained without XLA: compiling the step for each task's plan (ten in Task-IL, where the
    # replay per previous task changes with the task) took most of the time, and
    # test_methods.test_xla_step_trains_like_the_plain_step checks that XLA trains alike
    setup.config = dataclasses.replace(c, jit_compile=False)
    trainer = experiment.build(setup, verbose=False)
    assert not trainer.jit_compile
    m = trainer.model
    assert isinstance(m, RtFClassifier) and m.trunk is None and not m.conv
    trainer.fit()
    check_matrix(trainer.history.accuracy_matrix, 10)

    # the generator replays hidden features, for classes of every learned task
    modes = np.array([0, 15, 42, 99], np.int32)
    out = m.generate(modes, np.random.RandomState(0).randn(4, cfg.z_dim).astype(np.float32))
    assert out.shape == (4, 1024) and np.all(np.isfinite(out.numpy()))
    # the conv layers were not trained: same weights, same cached features
    for a, b in zip(trunk_before, setup.trunk.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(p.task(9).x_test,
                               setup.trunk(setup.pixels.preprocess_np(
                                   setup.pixels.task(9).x_test), training=False).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_hidden_refused_without_conv_layers(monkeypatch):
    calls = []
    ds = make_blobs(10, 20, 10, shape=(28, 28, 1))
    mnist = Dataset("mnist", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.class_names)
    monkeypatch.setattr(run_setup, "make_protocol",
                        functools.partial(make_protocol, dataset=mnist))
    monkeypatch.setattr(experiment, "make_trainer", lambda *a, **k: calls.append(a))
    for kw in (dict(hidden=True), dict(brain_inspired=True, hidden=True)):
        cfg = Config(experiment="split_mnist", replay="generative", **TINY, **kw)
        with pytest.raises(ConfigError, match="--hidden .* needs conv layers"):
            experiment.prepare(cfg)
    assert not calls
    # without --hidden, BI-R on split MNIST works at pixel level (no internal replay)
    setup = experiment.prepare(Config(experiment="split_mnist", replay="generative",
                                      brain_inspired=True, **TINY))
    assert not setup.config.hidden and setup.trunk is None


def test_pixel_level_gr_with_conv_vae(with_data, trunk_file):
    path, weights = trunk_file
    cfg = Config(experiment="split_cifar100", scenario="class", tasks=2, replay="generative",
                 conv_weights=str(path), freeze_convE=True, **{**TINY, "iters": 2})
    setup = experiment.prepare(cfg)
    assert not setup.config.hidden and not setup.protocol.features
    assert setup.protocol.input_shape == (32, 32, 3)
    trainer = experiment.build(setup, verbose=False)
    # convolutions in the step: no XLA on a CPU by default (its CPU convolutions are slow)
    assert trainer.jit_compile == bool(tf.config.list_logical_devices("GPU"))
    gen = trainer.generator
    assert isinstance(gen, VAE) and gen.conv and gen.trunk is not None and gen.out_layer is None
    assert [type(layer).__name__ for layer in gen.deconv.layers].count("Conv2DTranspose") == 5
    for model in (trainer.model, gen):
        for a, b in zip(weights, model.trunk.get_weights()):
            np.testing.assert_array_equal(a, b)
    trainer.fit()
    check_matrix(trainer.history.accuracy_matrix, 2)
    x = gen.generate(np.array([0, 7, 12], np.int32), np.zeros((3, cfg.z_dim), np.float32))
    assert x.shape == (3, 32, 32, 3) and np.all(np.isfinite(x.numpy()))
    recon = gen(setup.pixels.preprocess_np(setup.pixels.task(1).x_test[:2]))
    assert recon.shape == (2, 32, 32, 3)
    # --freeze_convE: the conv layers (BN statistics included) stay as given
    for model in (trainer.model, gen):
        for a, b in zip(weights, model.trunk.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_none_starts_from_given_conv_weights(with_data, trunk_file):
    path, weights = trunk_file
    cfg = Config(experiment="split_cifar100", scenario="task", tasks=2, conv_weights=str(path),
                 **TINY)
    setup = experiment.prepare(cfg)
    assert not setup.config.freeze_convE and not setup.protocol.features
    trainer = experiment.build(setup, verbose=False)
    trunk = trainer.model.trunk
    assert trunk is not None
    for a, b in zip(weights, trunk.get_weights()):
        np.testing.assert_array_equal(a, b)
    # not frozen by default (only BI-R keeps them frozen): the optimiser updates them
    trained = {id(v) for v in trainer.model.trainable_variables}
    assert trunk.trainable and all(id(v) in trained for v in trunk.trainable_variables)
    assert len(trunk.trainable_variables) == 18   # kernel, bias; gamma, beta of BN 1-4
