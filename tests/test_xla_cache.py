"""bir_keras.xla_cache: a private folder per run, entries published whole, refusals."""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from bir_keras import xla_cache


@pytest.fixture
def no_tf(monkeypatch):
    # ``enabled`` must run before TensorFlow loads; the test process has it loaded
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _ld(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def entry(name: str, executable: bytes = b"machine code") -> bytes:
    """A well-formed binary XlaSerializedCacheEntry for the entry file ``name``
    (``xla_compile_cache__<signature>__<cluster>__<device>.pb``), as TensorFlow writes one."""
    prefix, sig, cluster, device = name[:-3].split("__")[:4]
    key = (_varint(1 << 3) + _varint(int(sig)) + _varint(2 << 3) + _varint(int(cluster))
           + _ld(3, device.encode()) + _ld(4, prefix.encode()))
    hlo = _ld(1, b"__inference_step") + _ld(2, b"entry")
    return _ld(1, key) + _ld(2, hlo) + _ld(3, executable)


def put(folder: Path, name: str, data: bytes) -> Path:
    """An entry as a run publishes it into the shared folder: its checksum beside it."""
    (folder / name).write_bytes(data)
    xla_cache.seal(folder / name, data, folder)
    return folder / name


OLD = "xla_compile_cache__1__2__XLA_CPU_JIT.pb"
NEW = "xla_compile_cache__3__4__XLA_CPU_JIT.pb"


def private_folder() -> str:
    flag = os.environ["TF_XLA_FLAGS"].split()[-1]
    assert flag.startswith(xla_cache.FLAG + "=")
    return flag.split("=", 1)[1]


def test_entries_linked_in_and_published_whole(no_tf, tmp_path):
    shared = xla_cache.cache_folder(tmp_path)
    shared.mkdir(parents=True)
    old = put(shared, OLD, entry(OLD, b"old entry"))
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
        assert open(os.path.join(private, old.name), "rb").read() == entry(OLD, b"old entry")
        with open(os.path.join(private, NEW), "wb") as f:
            f.write(entry(NEW, b"new entry"))
        assert not (shared / NEW).exists()
    assert "TF_XLA_FLAGS" not in os.environ
    assert not os.path.exists(private) and not dead.exists() and live.is_dir()
    assert foreign.is_dir()
    assert (shared / NEW).read_bytes() == entry(NEW, b"new entry")
    assert old.read_bytes() == entry(OLD, b"old entry")
    for d in (live, foreign):
        shutil.rmtree(d)
    assert sorted(p.name for p in shared.iterdir()) == [
        "xla_compile_cache__1__2__XLA_CPU_JIT.pb", "xla_compile_cache__1__2__XLA_CPU_JIT.pb.sha256",
        "xla_compile_cache__3__4__XLA_CPU_JIT.pb", "xla_compile_cache__3__4__XLA_CPU_JIT.pb.sha256"]


def test_published_when_the_run_fails(no_tf, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=4")
    with pytest.raises(RuntimeError):
        with xla_cache.enabled(tmp_path) as shared:
            assert os.environ["TF_XLA_FLAGS"].startswith("--tf_xla_min_cluster_size=4 ")
            name = "xla_compile_cache__5__6__X.pb"
            with open(os.path.join(private_folder(), name), "wb") as f:
                f.write(entry(name))
            raise RuntimeError("training failed")
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_min_cluster_size=4"
    assert sorted(p.name for p in shared.iterdir()) == ["xla_compile_cache__5__6__X.pb",
                                                        "xla_compile_cache__5__6__X.pb.sha256"]


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
    from bir_keras.strategies.trainers import make_trainer

    cfg = resolve(Config(experiment="split_digits", scenario="class", method=method, tasks=2,
                         iters=5, batch=16, fc_units=20, z_dim=4, seed=seed))
    tr = make_trainer(cfg, make_protocol("split_digits", cfg.scenario, seed=seed), verbose=False)
    run = tr.start_task(1)  # a replay task
    tr.size_draw_cache(run.data, run.plan)
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


# -- damaged entries (issue 46): removed before TensorFlow reads them, with one warning


def test_damaged_entries_are_removed_with_one_warning(no_tf, tmp_path, capsys):
    shared = xla_cache.cache_folder(tmp_path)
    shared.mkdir(parents=True)
    names = {k: f"xla_compile_cache__{i}__{i + 1}__XLA_CPU_JIT.pb" for i, k in enumerate(
        ["good", "truncated", "garbage", "empty", "renamed", "no_executable", "overwritten",
         "unsealed"], start=10)}
    good = entry(names["good"])
    put(shared, names["good"], good)
    # parses whole, but its executable's bytes were overwritten after it was published
    whole = entry(names["overwritten"], b"machine code")
    put(shared, names["overwritten"], whole)
    (shared / names["overwritten"]).write_bytes(whole.replace(b"machine code", b"mAchine code"))
    xla_cache.check_entry(shared / names["overwritten"])
    (shared / names["unsealed"]).write_bytes(entry(names["unsealed"]))  # no checksum
    (shared / names["truncated"]).write_bytes(entry(names["truncated"])[:-5])
    (shared / names["garbage"]).write_bytes(bytes(range(7, 250)) * 4)
    (shared / names["empty"]).write_bytes(b"")
    (shared / names["renamed"]).write_bytes(good)  # another entry's key
    (shared / names["no_executable"]).write_bytes(entry(names["no_executable"])[:-len(
        b"machine code") - 2])
    # files that are not TensorFlow's finished entries are never touched
    others = {"notes.txt": b"mine", "xla_compile_cache__1__2__X.pb_123_456.tmp": b"partial",
              "xla_compile_cache__junk": b"junk"}
    for name, data in others.items():
        (shared / name).write_bytes(data)
    with xla_cache.enabled(tmp_path):
        linked = sorted(p.name for p in Path(private_folder()).iterdir())
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    assert line.startswith("warning: --xla_cache_dir") and "removed 7 damaged" in line
    assert "do not match their checksum" in line and "no checksum beside it" in line
    for k in ("truncated", "garbage", "empty", "renamed", "no_executable", "overwritten",
              "unsealed"):
        assert names[k] in line
        assert not (shared / names[k]).exists()
    assert "truncated" in line and "not the one its file name spells" in line
    assert names["good"] in linked and names["truncated"] not in linked
    assert (shared / names["good"]).read_bytes() == good
    for name, data in others.items():
        assert (shared / name).read_bytes() == data
    # nothing damaged: no warning
    with xla_cache.enabled(tmp_path):
        pass
    assert capsys.readouterr().err == ""


def test_a_damaged_new_entry_is_not_published(no_tf, tmp_path):
    name = "xla_compile_cache__7__8__XLA_CPU_JIT.pb"
    with xla_cache.enabled(tmp_path) as shared:
        with open(os.path.join(private_folder(), name), "wb") as f:
            f.write(entry(name)[:20])
    assert not (shared / name).exists()


CHILD = """
import sys
from bir_keras import xla_cache
with xla_cache.enabled(sys.argv[1]):
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def f(x):
        return tf.reduce_sum(x * x + 1.0)

    print(float(f(tf.ones([3]))))
"""


# real TensorFlow runs (about 5 s each); every kind of damage is found without TensorFlow in
# test_damaged_entries_are_removed_with_one_warning
@pytest.mark.parametrize("kinds", [("overwritten inside",), pytest.param(
    ("truncated", "garbage", "overwritten inside"), marks=pytest.mark.slow)])
def test_a_run_survives_a_damaged_entry_tensorflow_wrote(tmp_path, kinds):
    """A real entry, truncated and then overwritten with garbage: each later run warns, gets
    the numbers of a run without the entry, and stores it whole again (TensorFlow itself
    stops with OutOfRangeError / DataLossError on such a file)."""
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_XLA_FLAGS", None)

    def run():
        return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    [path] = xla_cache.cache_folder(tmp_path).glob("xla_compile_cache__*.pb")
    xla_cache.check_entry(path)
    whole = path.read_bytes()
    middle = bytearray(whole)  # overwritten inside, its size kept: it may still parse
    middle[len(whole) // 2:len(whole) // 2 + 4096] = os.urandom(
        len(middle[len(whole) // 2:len(whole) // 2 + 4096]))
    damages = {"truncated": whole[:len(whole) // 2], "garbage": os.urandom(len(whole)),
               "overwritten inside": bytes(middle)}
    for damage in (damages[k] for k in kinds):
        path.write_bytes(damage)
        r = run()
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
        warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and path.name in warnings[0]
        xla_cache.check_entry(path)  # compiled and stored again
