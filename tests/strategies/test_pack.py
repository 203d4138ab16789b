"""Seeds packed into one step (``SeedPack``, ``--seeds_at_once``) against separate runs.

K = 2 on split digits for every method family: the packed step's losses match each
seed's separate run within 1e-5 (relative), in the first task and in the second (with
replay, frozen copies, the regularisers' state from the first task). The separate runs
here are compiled without XLA (as the packed step is), which keeps the test fast; XLA's
own rounding is of the same order (``Trainer._steps``' docstring: ~1e-8)."""

import numpy as np
import pytest

from bir_keras.config import ConfigError, method_settings
from bir_keras.strategies.execution import pad_samples
from bir_keras.strategies.pack import SeedPack
from bir_keras.strategies.trainers import make_trainer

SEEDS = (12, 13)  # seeds below 10 keep the label order (protocols.class_order)
# (scenario, method shorthand or flags): one per method family and path
CASES = {
    "none": ("class", dict(method="none")),
    "joint_task": ("task", dict(method="joint")),
    "ewc_online": ("class", dict(method="online_ewc")),
    "si": ("class", dict(method="si")),
    "lwf": ("class", dict(method="lwf")),
    "xdg": ("task", dict(method="xdg")),
    "generative": ("class", dict(method="generative")),
    "bir": ("class", dict(method="bir")),
    "bir_task": ("task", dict(method="bir")),
    "bir_si_domain": ("domain", dict(method="bir_si")),
}
# BI-R's other scenarios (per-task replay, shared modes) take ~40 s each: with --run-slow
# under --run-slow: each covered by a cheaper case (bir packs the generative path and more)
SLOW = {"bir_task", "bir_si_domain", "generative"}


def _trainer(tiny_setup, scenario, over, seed):
    method = over.get("method")
    flags = {**(method_settings(method, "split_digits", scenario) if method else {}),
             **{k: v for k, v in over.items() if k != "method"}}
    cfg, proto = tiny_setup(scenario, tasks=2, seed=seed, keep_label_order=False, iters=6,
                            batch=16, fc_units=20, z_dim=4, fisher_n=30, jit_compile=False,
                            **flags)
    return make_trainer(cfg, proto, verbose=False)


def _separate_rows(tr, t, k=3):
    run = tr.start_task(t)
    run = run._replace(data=pad_samples(run.data))
    return tr.run_steps(run, k, run.plan)[0], tr.loss_names(run)


def _packed_rows(pack, t, k=3):
    runs = [tr.start_task(t) for tr in pack.trainers]
    runs = [r._replace(data=pad_samples(r.data)) for r in runs]
    return pack.run_steps(runs, k, runs[0].plan), pack.loss_names(runs, runs[0].plan)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CASES])
def test_packed_seeds_match_separate_runs(name, tiny_setup):
    scenario, over = CASES[name]
    alone = [_trainer(tiny_setup, scenario, over, s) for s in SEEDS]
    packed = [_trainer(tiny_setup, scenario, over, s) for s in SEEDS]
    # the same tasks and the same initial weights, bit for bit
    for a, b in zip(alone, packed):
        assert a.protocol.describe() == b.protocol.describe()
        for va, vb in zip(a.model.weights, b.model.weights):
            np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
    assert list(alone[0].protocol.class_order) != list(alone[1].protocol.class_order)
    pack = SeedPack(packed)
    for t in (0, 1):
        got, names = _packed_rows(pack, t)
        for s, tr in enumerate(alone):
            want, want_names = _separate_rows(tr, t)
            assert names == want_names
            np.testing.assert_allclose(got[s], want, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}, task {t + 1}, seed {SEEDS[s]}: {names}")
        # finish the task: the separate runs alone, the packed ones packed (the step
        # traced above); the next task starts from the same state up to the packed step's
        # rounding over a few iterations
        for tr in alone + packed:
            tr.tasks_done.assign(t)
        for tr in alone:
            tr.fit(until=t + 1)
        pack.fit(until=t + 1)


def test_pack_refuses_what_it_cannot_pack(tiny_setup):
    # (a method's own reason: tests/strategies/test_buffer.py)
    mixed = [_trainer(tiny_setup, "class", dict(method="none"), 12),
             _trainer(tiny_setup, "class", dict(method="si"), 13)]
    with pytest.raises(ConfigError, match="one setting only"):
        SeedPack(mixed)
