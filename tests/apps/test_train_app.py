"""apps.train end to end: outputs, SavedModel in a fresh process, resume, refused input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.once import made_once

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["--experiment=split_digits", "--scenario=class", "--iters=25", "--batch=32",
        "--fc_units=40", "--z_dim=8", "--keep_label_order"]
# Tiny runs step without XLA: in a 25-iteration task XLA's compilation is most of the time
# (6-10 s of the task, against 1-2 s without), and the suite must stay within 10 minutes.
# The default step (XLA on a CPU for these networks, with its cache) is bir_run's.
FAST = [*TINY, "--nojit_compile"]


def train(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "apps.train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _bir_run(root: Path) -> None:
    r = train(*TINY, "--method=bir", "--tasks=3", f"--output_dir={root / 'out'}",
              f"--export_dir={root / 'export'}", "--progress_every=1",
              f"--xla_cache_dir={root / 'xla'}")
    assert r.returncode == 0, r.stderr[-3000:]
    (root / "stdout.txt").write_text(r.stdout)


@pytest.fixture(scope="module")
def bir_run(tmp_path_factory):
    """(output_dir, export_dir) of a 3-task BI-R run on the default step (read-only)."""
    root = made_once(tmp_path_factory, "bir_run", _bir_run)
    return root / "out", root / "export"


def test_outputs_written(bir_run):
    out, exp = bir_run
    res = json.loads((out / "results.json").read_text())
    # --method=bir is recorded as such (GR shares its --replay=generative)
    run = json.loads((exp / "run.json").read_text())
    assert res["method"] == run["method"] == "bir"
    assert res["flags"]["method"] == run["flags"]["method"] == "bir"
    assert res["resume_from"] is None
    stdout = (out.parent / "stdout.txt").read_text().splitlines()
    printed = json.loads(stdout[-1])
    assert printed["method"] == printed["flags"]["method"] == "bir"
    # both directories carry the marker that lets a later --overwrite replace them
    assert json.loads((out / ".bir_keras").read_text())["kind"] == "output"
    assert json.loads((exp / ".bir_keras").read_text())["kind"] == "export"
    # stdout is not a terminal here: progress lines inside each task (every second)
    first_result = next(i for i, ln in enumerate(stdout) if "average accuracy" in ln)
    assert any(ln.startswith("task 1/3: ") for ln in stdout[:first_result]), stdout
    m = res["accuracy_matrix"]
    assert len(m) == 3 and m[0][1] is None and m[2][2] is not None
    assert 0 <= res["final_average_accuracy"] <= 1
    assert res["final_average_accuracy"] == pytest.approx(np.mean(m[2][:3]))
    assert res["flags"]["brain_inspired"] and res["wall_time_s"] > 0
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (exp / "saved_model" / "saved_model.pb").exists() and (exp / "run.json").exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_xla_cache_written(bir_run):
    # the run compiled its steps (with and without replay) into the cache, each entry moved
    # there whole, and removed its private folder
    (shared,) = (bir_run[0].parent / "xla").iterdir()
    assert shared.name.startswith("tf")
    names = [p.name for p in shared.iterdir()]
    assert len(names) >= 2 and all(n.startswith("xla_compile_cache__") for n in names), names


LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
assert "bir_keras" not in sys.modules
m = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
logits = m.signatures["classify"](x=tf.constant(x))["logits"].numpy()
s = m.signatures["sample"](class_ids=tf.constant([0, 3, 5, 5], tf.int32))
np.save(sys.argv[3], logits)
bad = np.full((3, x.shape[1]), 0.5, np.float32)
bad[1, 7] = np.nan
bad[2, 0] = np.inf
nan = m.signatures["classify"](x=tf.constant(bad))
print(json.dumps({"shape": list(s["x"].shape), "labels": s["labels"].numpy().tolist(),
                  "min": float(tf.reduce_min(s["x"])), "max": float(tf.reduce_max(s["x"])),
                  "bir_keras_loaded": "bir_keras" in sys.modules,
                  "nan": {"label": nan["label"].numpy().tolist(),
                          "unit": nan["unit"].numpy().tolist(),
                          "nan_rows": np.isnan(nan["logits"].numpy()).all(1).tolist(),
                          "names": [n.decode() for n in nan["class_name"].numpy()]}}))
"""


def test_saved_model_loads_without_package(bir_run, tmp_path):
    out, exp = bir_run
    from bir_keras import experiment, export
    from bir_keras.config import Config

    run = json.loads((exp / "run.json").read_text())
    cfg = Config(**run["flags"])
    setup = experiment.prepare(cfg)
    trainer = experiment.build(setup, verbose=False)
    export.restore_checkpoint(trainer, exp)
    x = setup.protocol.task(0).x_test[:20]
    np.save(tmp_path / "x.npy", (x / 255.0).astype("float32"))
    live = trainer.logits(trainer.model, trainer.preprocess(x), None).numpy()
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    r = subprocess.run([sys.executable, str(script), str(exp / "saved_model"),
                        str(tmp_path / "x.npy"), str(tmp_path / "logits.npy")],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert not info["bir_keras_loaded"]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), live, rtol=1e-4, atol=1e-4)
    assert info["shape"] == [4, 64] and info["labels"] == [0, 3, 5, 5]
    assert 0.0 <= info["min"] and info["max"] <= 1.0
    # an input with NaN or inf pixels gets no label (NaN logits, -1, ""), not a confident one
    got = info["nan"]
    assert got["label"][1:] == [-1, -1] and got["unit"][1:] == [-1, -1]
    assert got["nan_rows"] == [False, True, True] and got["names"][1:] == ["", ""]
    assert got["label"][0] >= 0 and got["names"][0]


def test_resume_gives_same_matrix_as_straight_run(tmp_path):
    # the straight run and the first two tasks in this process (experiment.run, what
    # apps.train calls), the continuation through apps.train itself
    from bir_keras import experiment
    from bir_keras.config import Config, method_settings

    args = [*FAST, "--method=si", "--replay=generative", "--iters=20"]
    cfg = {**method_settings("si", "split_digits", "class"),
           **dict(experiment="split_digits", scenario="class", iters=20, batch=32, fc_units=40,
                  z_dim=8, keep_label_order=True, method="si", replay="generative",
                  jit_compile=False)}
    straight = experiment.run(Config(**cfg, tasks=3), str(tmp_path / "a"),
                              export_dir=str(tmp_path / "ea"), verbose=False)
    experiment.run(Config(**cfg, tasks=2), str(tmp_path / "b"),
                   export_dir=str(tmp_path / "eb"), verbose=False)
    resumed = train(*args, "--tasks=3", f"--resume_from={tmp_path / 'eb'}",
                    f"--output_dir={tmp_path / 'c'}", f"--export_dir={tmp_path / 'ec'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = straight["accuracy_matrix"]
    resumed_rec = json.loads((tmp_path / "c" / "results.json").read_text())
    c = resumed_rec["accuracy_matrix"]
    # the same settings as the flags give (compared as JSON holds them)
    assert resumed_rec["flags"] == json.loads(json.dumps(straight["flags"]))
    assert resumed_rec["resume_from"] == str(tmp_path / "eb")
    assert json.loads((tmp_path / "ec" / "run.json").read_text())["resume_from"] == \
        str(tmp_path / "eb")
    assert len(c) == 3
    # in-process and in a fresh process the same seed gives the same numbers; allow float
    # rounding of the JSON round trip only
    np.testing.assert_allclose(np.array(a, dtype=float), np.array(c, dtype=float), atol=1e-6)


@pytest.mark.parametrize("bad", [
    ["--experiment=split_imagenet"],
    ["--xdg", "--scenario=class"],
    ["--experiment=split_mnist", "--data_dir=MISSING"],
    ["--experiment=split_digits", "--hidden"],
    ["--resume_from=RESUME"],
])
def test_refused_input_exits_2_and_keeps_previous_run(bir_run, tmp_path, bad):
    out, exp = bir_run
    before = tree_digest(out), tree_digest(exp)
    bad = [b.replace("MISSING", str(tmp_path / "nothing")) for b in bad]
    if bad == ["--resume_from=RESUME"]:  # a run of another protocol cannot be continued
        bad = ["--experiment=split_digits", "--scenario=task", f"--resume_from={exp}"]
    args = [*FAST, *bad, f"--output_dir={out}", f"--export_dir={exp}", "--overwrite"]
    r = train(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert (tree_digest(out), tree_digest(exp)) == before


XDG_LOADER = """
import sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
x = tf.constant(np.full((3, 64), 0.5, np.float32))
a = m.signatures["classify_task"](x=x, task_ids=tf.constant([0, 0, 0]))["logits"].numpy()
b = m.signatures["classify_task"](x=x, task_ids=tf.constant([1, 1, 1]))["logits"].numpy()
assert a.shape == (3, 10) and not np.allclose(a, b), "XdG masks must depend on the task"
print("ok")
"""


def run_here(tmp_path, method: str, **over) -> Path:
    """A run of ``FAST``'s settings in this process (what apps.train runs, without a second
    TensorFlow start-up); returns its export directory."""
    from bir_keras import experiment
    from bir_keras.config import Config, method_settings

    base = {**dict(experiment="split_digits", scenario="class", iters=25, batch=32,
                   fc_units=40, z_dim=8, keep_label_order=True, jit_compile=False), **over}
    cfg = Config(**{**method_settings(method, "split_digits", base["scenario"]), **base,
                    "method": method})
    experiment.run(cfg, str(tmp_path / "o"), export_dir=str(tmp_path / "export"),
                   verbose=False)
    return tmp_path / "export"


def test_xdg_run_exports_task_signature(tmp_path):
    exp = run_here(tmp_path, "xdg", scenario="task", tasks=2, iters=10)
    script = tmp_path / "load.py"
    script.write_text(XDG_LOADER)
    r = subprocess.run([sys.executable, str(script), str(exp / "saved_model")], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


def test_existing_output_dir_needs_overwrite(bir_run):
    out, exp = bir_run
    before = tree_digest(out)
    r = train(*FAST, f"--output_dir={out}", f"--export_dir={exp}")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert tree_digest(out) == before


# the whole program (about 8 s, TensorFlow loads before the data): under --run-slow. Its
# two halves run by default: tests/data/test_sources.py::test_truncated_gz_names_the_file
# (the loader's DataError names the file) and tests/apps/test_refusals.py::
# test_no_tensorflow_log_lines_by_default (a DataError after TensorFlow loads is exit 2,
# one error line, nothing written)
@pytest.mark.slow
def test_truncated_data_file_refused(tmp_path, mnist_idx_dir):
    f = mnist_idx_dir / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-40])
    r = train("--experiment=split_mnist", f"--data_dir={mnist_idx_dir}", "--iters=5",
              f"--output_dir={tmp_path / 'o'}", f"--export_dir={tmp_path / 'e'}")
    assert r.returncode == 2 and "train-images-idx3-ubyte.gz" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow   # rundirs.default_export_dir's rule; the whole-program form of it
def test_same_output_basename_keeps_separate_exports(tmp_path):
    # runs/s0/bir and runs/s1/bir: the default export is saved_models/runs/s0/bir and
    # saved_models/runs/s1/bir, not one saved_models/bir replaced by the second run
    args = [*FAST, "--method=none", "--tasks=1", "--iters=5"]
    for seed in (0, 1):
        r = train(*args, f"--seed={seed}", f"--output_dir=runs/s{seed}/bir", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    for seed in (0, 1):
        res = json.loads((tmp_path / f"runs/s{seed}/bir/results.json").read_text())
        assert res["export_dir"] == f"saved_models/runs/s{seed}/bir"
        run = json.loads((tmp_path / res["export_dir"] / "run.json").read_text())
        assert run["flags"]["seed"] == seed


def test_resume_with_other_settings_refused_in_one_line(bir_run, tmp_path):
    out, exp = bir_run
    for bad in (["--method=generative"], ["--method=bir", "--fc_units=64"]):
        args = [*[a for a in FAST if not a.startswith("--fc_units") or "--fc_units=64" not in bad],
                *bad, "--tasks=4", f"--resume_from={exp}", f"--output_dir={tmp_path / 'o'}",
                f"--export_dir={tmp_path / 'e'}"]
        r = train(*args)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --resume_from="), r.stderr[-3000:]
        assert "was trained with" in lines[0]


LABEL_LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
out = m.signatures["classify"](x=tf.constant(x))
task = m.signatures["classify_task"](x=tf.constant(x), task_ids=tf.zeros([len(x)], tf.int32))
lab = m.signatures["labels"]()
print(json.dumps({"label": out["label"].numpy().tolist(),
                  "class_name": [s.decode() for s in out["class_name"].numpy()],
                  "argmax": out["logits"].numpy().argmax(-1).tolist(),
                  "task_label": task["label"].numpy().tolist(),
                  "modes": lab["mode_dataset_labels"].numpy().tolist(),
                  "names": [s.decode() for s in lab["mode_class_names"].numpy()],
                  "learned": int(lab["tasks_learned"]), "scenario": lab["scenario"].numpy().decode(),
                  "bir_keras_loaded": "bir_keras" in sys.modules}))
"""


def test_saved_model_maps_outputs_to_dataset_labels(tmp_path):
    # a seed-drawn class order (seed 12: permuted in every version of the protocol): unit k is the dataset's class class_order[k]
    exp = run_here(tmp_path, "joint", tasks=2, iters=60, seed=12, keep_label_order=False)
    run = json.loads((exp / "run.json").read_text())
    order = run["protocol"]["class_order"]
    seen = run["classes_seen"]
    assert seen == order[:4] and seen != [0, 1, 2, 3]

    from bir_keras.data.sources import load_dataset

    ds = load_dataset("digits")
    keep = np.isin(ds.y_test, seen)
    x = ds.x_test[keep].reshape(int(keep.sum()), -1).astype("float32") / 255.0
    y = ds.y_test[keep]
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "load.py"
    script.write_text(LABEL_LOADER)
    r = subprocess.run([sys.executable, str(script), str(exp / "saved_model"),
                        str(tmp_path / "x.npy")], cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert not info["bir_keras_loaded"]
    assert info["modes"][:len(order)] == order and info["learned"] == 2
    assert info["scenario"] == "class"
    names = [str(c) for c in range(10)]  # the digits' class names
    assert info["names"][:4] == [names[c] for c in seen]
    label = np.array(info["label"])
    assert set(label) <= set(seen)
    assert info["class_name"] == [names[c] for c in label]
    # the labelled prediction scores what the run's evaluation scored (Class-IL: every
    # learned class active), weighted by each task's test size
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    sizes = [int(np.isin(ds.y_test, seen[2 * t:2 * t + 2]).sum()) for t in range(2)]
    expected = np.dot(res["accuracy_matrix"][-1][:2], sizes) / sum(sizes)
    assert np.mean(label == y) == pytest.approx(expected, abs=1e-6)
    assert np.mean(label == y) > 0.6
    # the raw argmax is in learned order, not dataset labels
    assert np.mean(np.array(info["argmax"]) == y) < 0.5



def _copy_export(exp: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(exp, dest)
    return dest


def test_resume_from_a_broken_checkpoint_says_which(bir_run, tmp_path):
    from bir_keras import experiment
    from bir_keras.config import Config, ConfigError

    _, exp = bir_run
    run = json.loads((exp / "run.json").read_text())
    setup = experiment.prepare(Config(**{**run["flags"], "tasks": 4}))
    trainer = experiment.build(setup, verbose=False)
    cut = _copy_export(exp, tmp_path / "cut")
    data = next((cut / "checkpoint").glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ConfigError, match="checkpoint in .* is truncated or corrupt"):
        experiment.resume(trainer, setup, str(cut))
    gone = _copy_export(exp, tmp_path / "gone")
    for f in (gone / "checkpoint").iterdir():
        f.unlink()
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        experiment.resume(trainer, setup, str(gone))
    # a run.json whose tasks learned do not match its accuracy matrix (edited, mixed up)
    mixed = _copy_export(exp, tmp_path / "mixed")
    rec = json.loads((mixed / "run.json").read_text())
    (mixed / "run.json").write_text(json.dumps({**rec, "tasks_learned": 5}))
    setup5 = experiment.prepare(Config(**{**run["flags"], "tasks": 5}))
    with pytest.raises(ConfigError, match="says 5 tasks were learned, but its accuracy matrix "
                                          "does not have one filled row per task"):
        experiment.resume(trainer, setup5, str(mixed))
    with pytest.raises(ConfigError, match="already learned 3 tasks and this run asks for "
                                          "--tasks=2; ask for more with --tasks=4"):
        experiment.resume(trainer, experiment.prepare(Config(**{**run["flags"], "tasks": 2})),
                          str(exp))
