"""Experience replay with a fixed memory budget: a class-balanced memory of real training
samples, less forgetting than fine-tuning, composition with distillation and regularisers,
the memory kept in the checkpoint; and its settings, all from its declaration
(``bir_keras.strategies.buffer.METHOD``): ``--budget``, its default, rules and flag,
``--method=buffer``, its label, and why its seeds are not packed.

The step runs without XLA here (``jit_compile=False``): none of these is about XLA,
compiling it took most of the time, and test_methods checks that XLA trains like the plain
step."""

import numpy as np
import pytest

from bir_keras import export
from bir_keras.config import Config, ConfigError, method_label, method_settings, resolve, unpackable
from bir_keras.models.classifier import HardTargets, SoftTargets
from bir_keras.strategies.buffer.trainer import BufferReplay
from bir_keras.strategies.pack import SeedPack
from bir_keras.strategies.trainers import make_trainer
from tests.strategies.test_fidelity import _replay


def test_memory_holds_budget_samples_of_each_class(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=3, iters=10, replay="buffer", budget=5,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert isinstance(tr, BufferReplay) and tr.stored()["y"].shape == (0,)
    tr.fit(until=2)
    mem = tr.stored()
    assert mem["x"].dtype == np.uint8 and mem["x"].shape[1:] == proto.input_shape
    labels, counts = np.unique(mem["y"], return_counts=True)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])   # the classes of tasks 1 and 2
    np.testing.assert_array_equal(counts, [5, 5, 5, 5])
    np.testing.assert_array_equal(mem["tid"], mem["y"] // 2)
    for x, y, t in zip(mem["x"], mem["y"], mem["tid"]):   # real training samples, distinct
        task = proto.task(int(t))
        assert any(np.array_equal(x, s) for s in task.x_train[task.y_train == y])
    assert len({x.tobytes() for x in mem["x"]}) == 20


def test_buffer_replay_reduces_forgetting(tiny_setup):
    cfg, proto = tiny_setup("class", tasks=2, iters=150, jit_compile=False)
    none = make_trainer(cfg, proto, verbose=False)
    none.fit()
    cfg, proto = tiny_setup("class", tasks=2, iters=150, replay="buffer", budget=20,
                            jit_compile=False)
    buf = make_trainer(cfg, proto, verbose=False)
    buf.fit()
    assert none.history.accuracy_matrix[1][0] < 0.2
    assert buf.history.accuracy_matrix[1][0] > none.history.accuracy_matrix[1][0] + 0.5


@pytest.mark.parametrize("scenario, distill", [("class", False), ("task", True)])
def test_replay_is_drawn_from_the_memory_with_its_own_task(tiny_setup, scenario, distill):
    cfg, proto = tiny_setup(scenario, tasks=3, iters=10, replay="buffer", budget=4,
                            distill=distill, ewc=True, jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    assert [r.name for r in tr.regularizers] == ["ewc"]
    tr.fit(until=2)
    run, draws, _, rep = _replay(tr, 2)
    mem = tr.stored()
    idx = draws.idx.numpy()
    assert idx.min() >= 0 and idx.max() < 16 and len(set(idx)) > 4
    np.testing.assert_array_equal(rep.tid.numpy(), mem["tid"][idx])
    np.testing.assert_allclose(rep.x.numpy(), proto.preprocess_np(mem["x"][idx]), atol=1e-6)
    if distill:   # the previous model's soft targets over the sample's own task's units
        assert isinstance(rep.targets, SoftTargets)
        probs = rep.targets.probs.numpy()
        own = np.zeros_like(probs)
        for i, t in enumerate(mem["tid"][idx]):
            own[i, 2 * t:2 * t + 2] = 1
        assert np.all(probs[own == 0] == 0) and np.allclose(probs.sum(1), 1, atol=1e-5)
    else:         # the stored labels
        assert isinstance(rep.targets, HardTargets)
        np.testing.assert_array_equal(rep.targets.labels.numpy(), mem["y"][idx])
    assert rep.x.shape[0] == run.plan.n_replay == cfg.batch_replay


def test_memory_is_part_of_the_checkpoint(tiny_setup, tmp_path):
    cfg, proto = tiny_setup("class", tasks=3, iters=10, replay="buffer", budget=3,
                            jit_compile=False)
    tr = make_trainer(cfg, proto, verbose=False)
    tr.fit(until=2)
    export.checkpoint_for(tr).write(str(tmp_path / "ckpt"))
    fresh = make_trainer(cfg, proto, verbose=False)
    status = export.checkpoint_for(fresh).read(str(tmp_path / "ckpt"))
    status.assert_existing_objects_matched()
    for k, v in tr.stored().items():
        np.testing.assert_array_equal(fresh.stored()[k], v)
    assert fresh.tasks_learned == 2
    # the resumed trainer goes on exactly as the first one would
    tr.fit()
    fresh.fit()
    np.testing.assert_allclose(tr.history.accuracy_matrix[-1], fresh.history.accuracy_matrix[-1])
    assert len(fresh.stored()["y"]) == 18


def test_budget_settings_are_checked(tiny_setup):
    assert method_settings("buffer", "split_mnist", "class") == {"replay": "buffer"}
    cfg = resolve(Config(replay="buffer"), False)
    assert cfg.budget == 100 and not cfg.distill
    with pytest.raises(ConfigError, match="needs --replay=buffer"):
        resolve(Config(budget=10), False)
    with pytest.raises(ConfigError, match="budget must be at least 1"):
        resolve(Config(replay="buffer", budget=0), False)
    assert resolve(Config(method="buffer", budget=50), False).budget == 50
    assert method_label(Config(replay="buffer")) == "buffer"


def test_budget_is_a_flag_of_apps_train():
    from tests.apps.test_flag_defaults import _run

    out = _run("same", "--replay=buffer", "--budget=20")
    assert out["from_flags"]["replay"] == "buffer" and out["from_flags"]["budget"] == 20
    assert not out["tf"]
    budget_help = out["flags"]["budget"][1]
    assert "(default 100 with --replay=buffer)" in budget_help


def test_its_seeds_are_not_packed(tiny_setup):
    why = unpackable(resolve(Config(experiment="split_mnist", replay="buffer", budget=10)))
    assert "--replay=buffer" in why
    trainers = []
    for seed in (12, 13):
        cfg, proto = tiny_setup("class", tasks=2, seed=seed, iters=6, replay="buffer", budget=5,
                                jit_compile=False)
        trainers.append(make_trainer(cfg, proto, verbose=False))
    with pytest.raises(ConfigError, match="--replay=buffer"):
        SeedPack(trainers)
