"""bir_keras.xla_cache: a private folder per run, entries published whole, refusals."""

import os
import shutil
import socket
import sys

import pytest

from bir_keras import xla_cache


@pytest.fixture
def no_tf(monkeypatch):
    # ``enabled`` must run before TensorFlow loads; the test process has it loaded
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)


def private_folder() -> str:
    flag = os.environ["TF_XLA_FLAGS"].split()[-1]
    assert flag.startswith(xla_cache.FLAG + "=")
    return flag.split("=", 1)[1]


def test_entries_linked_in_and_published_whole(no_tf, tmp_path):
    shared = xla_cache.cache_folder(tmp_path)
    shared.mkdir(parents=True)
    old = shared / "xla_compile_cache__1__2__XLA_CPU_JIT.pb"
    old.write_bytes(b"old entry")
    host = socket.gethostname().replace("-", "_") or "host"
    # a private folder left by a killed run of this host (a pid no process has) goes;
    # one of a live process stays
    dead = shared / f".run-{host}-{2 ** 22 + 12345}-deadbeef"
    live = shared / f".run-{host}-{os.getpid()}-cafecafe"
    # a folder of that name without the marker was not made by this module: it stays
    foreign = shared / f".run-{host}-{2 ** 22 + 12346}-0000"
    for d in (dead, live, foreign):
        d.mkdir()
    for d in (dead, live):
        (d / xla_cache.RUN_MARKER).write_text("1\n")
    with xla_cache.enabled(tmp_path) as folder:
        assert folder == shared
        private = private_folder()
        assert os.path.dirname(private) == str(shared)
        # the shared entries are there for TensorFlow to load; what it writes stays private
        assert open(os.path.join(private, old.name), "rb").read() == b"old entry"
        with open(os.path.join(private, "xla_compile_cache__3__4__XLA_CPU_JIT.pb"), "wb") as f:
            f.write(b"new entry")
        assert not (shared / "xla_compile_cache__3__4__XLA_CPU_JIT.pb").exists()
    assert "TF_XLA_FLAGS" not in os.environ
    assert not os.path.exists(private) and not dead.exists() and live.is_dir()
    assert foreign.is_dir()
    assert (shared / "xla_compile_cache__3__4__XLA_CPU_JIT.pb").read_bytes() == b"new entry"
    assert old.read_bytes() == b"old entry"
    for d in (live, foreign):
        shutil.rmtree(d)
    assert sorted(p.name for p in shared.iterdir()) == [
        "xla_compile_cache__1__2__XLA_CPU_JIT.pb", "xla_compile_cache__3__4__XLA_CPU_JIT.pb"]


def test_published_when_the_run_fails(no_tf, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=4")
    with pytest.raises(RuntimeError):
        with xla_cache.enabled(tmp_path) as shared:
            assert os.environ["TF_XLA_FLAGS"].startswith("--tf_xla_min_cluster_size=4 ")
            open(os.path.join(private_folder(), "xla_compile_cache__5__6__X.pb"), "wb").close()
            raise RuntimeError("training failed")
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_min_cluster_size=4"
    assert [p.name for p in shared.iterdir()] == ["xla_compile_cache__5__6__X.pb"]


def test_one_folder_per_cpu_and_tensorflow(monkeypatch):
    a = xla_cache.cache_folder("/c")
    monkeypatch.setattr(xla_cache, "cpu_tag", lambda: "othercpu")
    b = xla_cache.cache_folder("/c")
    assert a != b and a.parent == b.parent and b.name.endswith("-othercpu")


@pytest.mark.parametrize("case,match", [
    ("space", "may not contain spaces"),
    ("file", "not a directory"),
    ("env", "use one"),
    ("tf_loaded", "before TensorFlow is imported"),
])
def test_refused(no_tf, tmp_path, monkeypatch, case, match):
    root = tmp_path / "cache"
    if case == "space":
        root = tmp_path / "a b"
    elif case == "file":
        root.write_text("")
    elif case == "env":
        monkeypatch.setenv("TF_XLA_FLAGS", f"{xla_cache.FLAG}=/elsewhere")
    else:
        monkeypatch.setitem(sys.modules, "tensorflow", object())
    with pytest.raises(xla_cache.CacheError, match=match):
        with xla_cache.enabled(root):
            pass
    if case != "file":
        assert not root.exists()


def _step_constants(method: str, seed: int):
    import collections

    import tensorflow as tf

    from bir_keras.config import Config, resolve
    from bir_keras.data.protocols import make_protocol
    from bir_keras.strategies import make_trainer

    cfg = resolve(Config(experiment="split_digits", scenario="class", method=method, tasks=2,
                         iters=5, batch=16, fc_units=20, z_dim=4, seed=seed))
    tr = make_trainer(cfg, make_protocol("split_digits", cfg.scenario, seed=seed), verbose=False)
    run = tr.start_task(1)  # a replay task
    tr._size_draw_cache(run.data, run.plan)
    graph = tr._steps_fn.get_concrete_function(run.data, run.ctx, run.plan,
                                               tf.constant(1)).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return collections.Counter(n.attr["value"].tensor.SerializeToString()
                               for n in nodes if n.op == "Const")


@pytest.mark.parametrize("method", ["bir", "generative", "si"])
def test_every_seed_compiles_to_one_program(method):
    # the step's graph holds no constant that depends on the seed (its keys are inputs), so
    # the persistent cache compiles it once for every seed of a setting
    a, b = _step_constants(method, 0), _step_constants(method, 1)
    assert len(a) > 10 and a == b
