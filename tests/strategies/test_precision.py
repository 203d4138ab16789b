"""--precision=mixed_bfloat16: the networks compute in bfloat16 while variables, logits,
the VAE's mean and log-variance, generated samples, losses and regulariser state stay in
float32; on a CPU the step runs without XLA (its bfloat16 dots are slow there); the
SavedModel serves float32, and the update alone is compiled by XLA; float32 is the default
and unchanged."""

import numpy as np
import pytest
import tensorflow as tf

from bir_keras import export
from bir_keras.config import ConfigError
from bir_keras.strategies.execution import step_xla, xla_update
from bir_keras.strategies.trainers import make_trainer


# BI-R + SI in the suite; GR + EWC (a separate generator, EWC's Fisher) with --run-slow
@pytest.mark.parametrize("method", [
    dict(replay="generative", brain_inspired=True, si=True),
    pytest.param(dict(replay="generative", ewc=True), marks=pytest.mark.slow)],
    ids=["bir_si", "gr_ewc"])
def test_mixed_bfloat16_computes_in_bfloat16_and_keeps_float32_state(tiny_setup, tmp_path,
                                                                     method):
    cfg, proto = tiny_setup("class", tasks=2, iters=15, precision="mixed_bfloat16", **method)
    tr = make_trainer(cfg, proto, verbose=False)
    assert not tr.jit_compile or tf.config.list_logical_devices("GPU")
    nets = tr.networks()
    for net in nets.values():
        assert all(v.dtype == tf.float32 for v in net.weights)
        dense = [layer for layer in net._flatten_layers() if hasattr(layer, "kernel")]
        assert dense and all(layer.compute_dtype == "bfloat16" for layer in dense)
    x = tf.constant(proto.preprocess_np(proto.task(0).x_test[:4]))
    h, mu, logvar = nets["model"].encode(x) if "generator" not in nets else nets["generator"].encode(x)
    assert h.dtype == tf.bfloat16 and mu.dtype == logvar.dtype == tf.float32
    assert tr.logits(tr.model, x, None).dtype == tf.float32
    tr.fit()
    assert all(np.isfinite(v) for v in tr.history.losses[1].values())
    assert tr.history.average_accuracy[-1] > 0.3   # learns (chance: 0.25)
    for reg in tr.regularizers:
        assert all(v.dtype in (tf.float32, tf.int32) for vs in reg.state().values()
                   for v in (vs if isinstance(vs, list) else [vs]))   # int32: a task count
    sample = tr.sample(tf.constant([0, 3]), tf.constant([0, 1]), tf.zeros([2, cfg.z_dim]))
    assert sample.dtype == tf.float32 and np.all(np.isfinite(sample.numpy()))
    # the SavedModel serves float32, as in float32 runs
    export.export_run(tr, tmp_path / "export", {"flags": cfg.to_dict(), "tasks_learned": 2})
    loaded = tf.saved_model.load(str(tmp_path / "export" / export.SAVED_MODEL))
    out = loaded.classify(tf.constant(proto.task(1).x_test[:3], tf.float32) / 255.0)
    assert out["logits"].dtype == tf.float32 and out["unit"].numpy().min() >= 0


def test_float32_is_the_default_and_other_precisions_are_refused(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2)
    assert cfg.precision == "float32"
    tr = make_trainer(cfg, proto, verbose=False)
    assert tr.model.fc.layers_[0].compute_dtype == "float32"
    with pytest.raises(ConfigError, match="--precision must be"):
        tiny_setup("class", tasks=2, precision="float16")


@pytest.mark.parametrize("asked, whole_step, distributed, expected", [
    (None, False, False, True),     # auto, a step without XLA (bfloat16 on a CPU, a pack)
    (False, False, False, False),   # --nojit_compile: no XLA at all
    (None, True, False, False),     # the whole step is compiled already
    (True, True, False, False),
    (None, False, True, False),     # a tf.distribute strategy, even over one device
    (True, False, True, False)])
def test_when_the_update_alone_is_compiled(asked, whole_step, distributed, expected):
    assert xla_update(asked, whole_step, distributed) is expected


@pytest.mark.parametrize("asked, replicas, conv_step, precision, expected", [
    (None, 1, False, "float32", True),          # auto: float32 dense step on one CPU
    (None, 1, True, "float32", False),          # convolutions on a CPU
    (None, 1, False, "mixed_bfloat16", False),  # bfloat16 on a CPU
    (True, 1, True, "mixed_bfloat16", True),    # --jit_compile asks for it
    (False, 1, False, "float32", False),        # --nojit_compile
    (True, 2, False, "float32", False)])        # several replicas: never
def test_when_the_step_is_compiled_on_a_cpu(asked, replicas, conv_step, precision, expected):
    assert step_xla(asked, replicas, conv_step, precision) is expected


def test_a_one_device_mirrored_strategy_updates_without_xla(tiny_setup):
    """MirroredStrategy applies the update through merge_call, which a nested XLA function
    cannot hold (a RuntimeError at tracing): under any strategy the update runs op by op,
    even over one device, and the step trains."""
    cfg, proto = tiny_setup("class", tasks=1, iters=3, precision="mixed_bfloat16",
                            jit_compile=None, replay="generative", brain_inspired=True)
    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0"])
    tr = make_trainer(cfg, proto, strategy=strategy, verbose=False)
    assert tr.distributed and tr.replicas == 1 and not tr.xla_update
    tr.fit()
    assert all(np.isfinite(v) for v in tr.history.losses[0].values())
    plain = make_trainer(cfg, proto, verbose=False)
    assert not plain.distributed and plain.xla_update != bool(plain.jit_compile)


def test_xla_update_trains_like_the_plain_update(tiny_setup):
    """Under bfloat16 on a CPU the step runs without XLA and, by default, its update (Adam,
    SI's path integral) as one XLA cluster; --nojit_compile runs it op by op. The batches
    and draws are the same (no XLA random ops), so the runs differ only in the float32
    rounding of the update (~1e-7 relative per step), which the forward pass's bfloat16
    rounding amplifies where a value crosses a rounding boundary: measured 6e-5 of each
    weight tensor's largest value after 2 x 20 iterations on a Xeon. The bound, 1% of it, is
    far above that and below what a wrong update gives (Adam's or SI's step missed or
    applied twice changes the weights, SI's sums and the losses by far more)."""
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("on a GPU the whole bfloat16 step is compiled")
    runs = []
    for jit in (None, False):
        cfg, proto = tiny_setup("class", tasks=2, iters=20, precision="mixed_bfloat16",
                                jit_compile=jit, replay="generative", brain_inspired=True,
                                si=True)
        tr = make_trainer(cfg, proto, verbose=False)
        tr.fit()
        runs.append(tr)
    xla, plain = runs
    assert xla.xla_update and not xla.jit_compile and not plain.xla_update
    for lx, lp in zip(xla.history.losses, plain.history.losses):
        assert lx.keys() == lp.keys()
        for k in lx:
            assert lx[k] == pytest.approx(lp[k], rel=1e-3, abs=1e-6), k
    states = [[v.numpy() for net in tr.networks().values() for v in net.weights]
              + [v.numpy() for reg in tr.regularizers for vs in reg.state().values()
                 for v in (vs if isinstance(vs, list) else [vs])] for tr in runs]
    assert len(states[0]) == len(states[1]) > 0
    for a, b in zip(*states):
        assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max() + 1e-9
