"""bir_keras.sweeps without apps.train: plans and stamps, the cache and the tables on run
records written here, and whole sweeps over a stand-in program (``tests.sweep_program``,
a run in a moment) on a pool of processes and on a local Ray instance."""

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bir_keras import appfiles, rundirs, sweeps
from bir_keras.config import Config, ConfigError, resolve
from bir_keras.sweeps import Program, is_cached, plan, stamp

ROOT = Path(__file__).resolve().parents[1]
# the stand-in for apps.train, started as apps.train would be
FAKE = Program(module="tests.sweep_program", path=(str(ROOT),))


def finished(run: sweeps.Run, final: float, curve: list[float], wall: float = 2.0,
             stamp_of: str | None = None) -> None:
    """Write what a finished run leaves in its run directory."""
    (run.dir / "out").mkdir(parents=True)
    (run.dir / "out" / "results.json").write_text(json.dumps(
        {"final_average_accuracy": final, "average_accuracy": curve, "wall_time_s": wall}))
    (run.dir / "stamp.json").write_text(json.dumps({"stamp": stamp_of or run.stamp,
                                                    "args": list(run.args)}))


def test_a_stamp_is_that_of_earlier_compares():
    # the stamp is the cache key of runs already on disk: it must never change
    args = ["--experiment=split_digits", "--scenario=class", "--method=none", "--seed=0",
            "--iters=30", "--tasks=2"]
    assert stamp(args) == "f750ec8f631b"
    assert stamp(args[::-1]) == stamp(args)
    # flags that cannot change a run's numbers are left out, however they are spelt
    for extra in ("--checkpoint_every=1", "--progress_every=2", "--notf_log", "--tf_log",
                  "--xla_cache_dir=/c"):
        assert stamp([*args, extra]) == stamp(args), extra
    assert stamp([*args, "--nojit_compile"]) != stamp(args)


def test_plan_names_each_run_and_refuses_what_it_cannot_plan(tmp_path):
    runs = plan(["none", "bir"], [3, 4], "split_digits", "class", ["--iters=30"], tmp_path,
                sweep=("reinit", [True, False]))
    assert [(r.key, r.seed) for r in runs] == [
        ("none-reinittrue", 3), ("none-reinittrue", 4), ("none-reinitfalse", 3),
        ("none-reinitfalse", 4), ("bir-reinittrue", 3), ("bir-reinittrue", 4),
        ("bir-reinitfalse", 3), ("bir-reinitfalse", 4)]
    r = runs[0]
    assert r.args == ("--experiment=split_digits", "--scenario=class", "--method=none",
                      "--seed=3", "--iters=30", "--reinit=true")
    assert r.dir == tmp_path / "runs" / f"none-reinittrue-s3-{r.stamp}" and r.name == \
        "none-reinittrue seed 3"
    for methods, sweep, why in ((["none"], ("iters", ["4", "4"]), "--iters=4 is listed twice"),
                                ([], None, "--methods is empty"),
                                (["nope"], None, "unknown method 'nope'"),
                                (["si", "si"], None, "--methods lists si twice")):
        with pytest.raises(ConfigError, match=why):
            plan(methods, [0], "split_digits", "class", [], tmp_path, sweep=sweep)
    assert not list(tmp_path.iterdir())   # planning writes nothing


def test_packs_are_consecutive_uncached_seeds_of_one_setting(tmp_path, monkeypatch):
    runs = plan(["none", "si"], [0, 1, 2, 3, 4], "split_digits", "class", [], tmp_path)
    todo = [r for r in runs if r.seed != 2]   # seed 2 is cached: it splits the packs
    groups = sweeps.groups_of(todo, {"none": 3, "si": 1})
    assert [(g[0].method, [r.seed for r in g]) for g in groups] == [
        ("none", [0, 1]), ("si", [0]), ("si", [1]), ("none", [3, 4]), ("si", [3]), ("si", [4])]
    # how many seeds one process packs: as asked, or what fits in memory
    c = resolve(Config(experiment="split_digits", method="none"))
    assert sweeps.pack_size(c, 3, 5, 1) == 3
    assert sweeps.pack_size(c, 100, 100, 1) == 64
    monkeypatch.setattr(sweeps.planning, "available_memory", lambda: 10 * 2 ** 20)
    assert sweeps.pack_size(c, None, 5, 2, seed_bytes=2 ** 20) == 5
    assert sweeps.pack_size(c, None, 5, 4, seed_bytes=2 ** 20) == 2
    assert sweeps.pack_size(c, None, 5, 1, seed_bytes=2 ** 30) == 1
    buffer = resolve(Config(experiment="split_digits", method="buffer"))
    assert sweeps.pack_size(buffer, None, 5, 1) == 1
    with pytest.raises(ConfigError, match="does not pack --replay=buffer"):
        sweeps.pack_size(buffer, 2, 5, 1)


def test_the_cache_is_the_stamp_beside_the_results(tmp_path):
    a, b, c, d = plan(["none"], [0, 1, 2, 3], "split_digits", "class", [], tmp_path)
    finished(a, 0.5, [1.0, 0.5])
    finished(b, 0.5, [1.0, 0.5], stamp_of="0123456789ab")     # another setting's
    finished(c, 0.5, [1.0, 0.5])
    (c.dir / "stamp.json").write_text("{not json")
    (d.dir / "out").mkdir(parents=True)                        # started, never finished
    (d.dir / "stamp.json").write_text(json.dumps({"stamp": d.stamp}))
    assert [is_cached(r) for r in (a, b, c, d)] == [True, False, False, False]


def test_summaries_and_tables_of_run_records(tmp_path):
    runs = plan(["none", "joint"], [0, 1], "split_mnist", "class", ["--iters=8"], tmp_path)
    for r, final in zip(runs, (0.2, 0.3, 0.9, 0.9)):
        finished(r, final, [1.0, 0.5, final], wall=4.0 + r.seed)
    stats = sweeps.summarise_runs(runs)
    assert list(stats) == ["none", "joint"]
    none = stats["none"]
    assert none["mean"] == pytest.approx(25.0) and none["sem"] == pytest.approx(5.0)
    assert stats["joint"]["sem"] == 0.0
    np.testing.assert_allclose(none["curve_mean"], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(none["curve_sem"], [0.0, 0.0, 0.05])
    changed = sweeps.changed_settings(["--iters=8", "--data_dir=D", "--nojit_compile"])
    md = sweeps.write_tables(stats, "split_mnist", "class", tmp_path, changed)
    assert md == (tmp_path / "table.md").read_text()
    assert md.splitlines()[2] == "| none | 2 | 25.00 ± 5.00 | 19.90* | 4 |"
    assert md.splitlines()[3] == "| joint | 2 | 90.00 ± 0.00 | 97.94* | 4 |"
    assert md.rstrip().endswith("these runs differ: --iters=8")
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert rows[0] == {"method": "none", "seeds": "2", "mean": "25.0000", "sem": "5.0000",
                       "published": "19.9", "wall_time_s": "4.5",
                       "settings_differ_from_published": "--iters=8"}
    # no published number for a protocol the paper did not run
    md, _ = sweeps.table_texts(stats, "split_digits", "class", [])
    assert "| none | 2 | 25.00 ± 5.00 |  | 4 |" in md and "differ" not in md


def test_a_sweep_value_with_a_bar_keeps_its_row_of_five_cells():
    stats = {"none-data_dirx|y": {"value": "x|y", "final": [0.5], "mean": 50.0, "sem": 0.0,
                                  "wall": [3.0]}}
    md, csv_text = sweeps.table_texts(stats, "split_digits", "class", [])
    row = md.splitlines()[2]
    assert row == "| none-data_dirx&#124;y | 1 | 50.00 ± 0.00 |  | 3 |"
    assert row.count("|") == 6
    assert next(csv.reader(io.StringIO(csv_text.splitlines()[1])))[0] == "none-data_dirx|y"


def test_plots_of_a_sweep(tmp_path):
    runs = plan(["generative"], [0], "split_mnist", "class", [], tmp_path,
                sweep=("batch_replay", ["1", "16"]))
    for r, final in zip(runs, (0.4, 0.8)):
        finished(r, final, [1.0, final])
    stats = sweeps.summarise_runs(runs)
    written, note = sweeps.write_plots(stats, tmp_path, "t", ["generative"],
                                       ("batch_replay", ["1", "16"]))
    assert written == [tmp_path / "accuracy.png", tmp_path / "sweep.png"] and note is None
    assert all(p.read_bytes()[:8] == appfiles.PNG_SIGNATURE for p in written)
    (tmp_path / "sweep.png").unlink()
    written, note = sweeps.write_plots(stats, tmp_path, "t", ["generative"],
                                       ("batch_replay", ["1", "x"]))
    assert written == [tmp_path / "accuracy.png"] and "not numbers" in note
    assert not (tmp_path / "sweep.png").exists()


def _fake_sweep(root: Path, lines: list[str], **kw) -> sweeps.Sweep:
    return sweeps.prepare(["none", "joint"], [0, 1, 2], "split_digits", "class", root,
                          ["--tasks=2"], program=FAKE, report=lines.append, **kw)


def test_a_sweep_runs_packs_caches_and_tabulates(tmp_path):
    root, lines = tmp_path / "cmp", []
    outcome = _fake_sweep(root, lines, seeds_at_once=2, parallel=2).run()
    assert lines[0] == "0 cached, 6 to run (4 of them in 2 pack(s) of seeds)"
    assert sorted(lines[1:7]) == sorted(f"{m} seed {s}: ok" for m in ("none", "joint")
                                        for s in range(3))
    assert outcome.failed == [] and len(outcome.done) == 6
    assert outcome.stats["none"]["mean"] == pytest.approx(20.0)
    assert outcome.written == [root / n for n in ("table.md", "table.csv", "accuracy.png")]
    for r in outcome.done:   # each seed of a pack in its own run directory
        rec = json.loads((r.dir / "out" / "results.json").read_text())
        assert rec["flags"]["seed"] == r.seed and rec["export_dir"] == str(r.dir / "export")
        assert rec["seeds_at_once"] == (2 if r.seed < 2 else 1)
    assert not list(root.glob("runs/*-pack-*"))
    assert rundirs.foreign_entries(root, rundirs.COMPARE) == []
    # again: nothing runs, the same table
    table = (root / "table.csv").read_text()
    lines.clear()
    _fake_sweep(root, lines, seeds_at_once=2).run()
    assert lines[0] == "6 cached, 0 to run" and (root / "table.csv").read_text() == table


def test_a_failed_run_is_named_and_the_rest_tabulated(tmp_path):
    root, lines = tmp_path / "cmp", []
    sweep = sweeps.prepare(["none"], [0, 1], "split_digits", "class", root, ["--fail_seed=1"],
                           program=FAKE, report=lines.append)
    outcome = sweep.run()
    assert [r.seed for r in outcome.failed] == [1] and [r.seed for r in outcome.done] == [0]
    [failed] = [ln for ln in lines if "FAILED" in ln]
    assert failed.startswith("none seed 1: FAILED (exit 1: error: seed 1 fails here; log ")
    assert outcome.stats["none"]["final"] == [0.1]
    # none finished: a named exception, no table
    root2 = tmp_path / "cmp2"
    with pytest.raises(sweeps.NoRunFinished, match="no run finished"):
        sweeps.prepare(["none"], [1], "split_digits", "class", root2, ["--fail_seed=1"],
                       program=FAKE).run()
    assert not (root2 / "table.md").exists()


def test_a_folder_not_the_sweeps_is_refused_before_anything(tmp_path):
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(rundirs.PathRefused, match="has no .bir_keras marker of apps.compare"):
        _fake_sweep(tmp_path, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_without_ray_a_ray_sweep_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray: ImportError
    with pytest.raises(ConfigError, match=r"Ray is not installed .*pip install 'bir_keras\[ray\]'"):
        _fake_sweep(tmp_path / "cmp", [], ray_address="local")
    assert not (tmp_path / "cmp").exists()


def test_ray_is_imported_only_when_asked_for(tmp_path):
    # a `ray` that cannot be imported: apps.compare works without it, and refuses
    # --ray_address with one line
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)]),
           "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [sys.executable, "-m", "apps.compare", "--experiment=split_digits", "--methods=none",
            "--seeds=1", "--only_cached"]
    r = subprocess.run([*args, f"--output_dir={tmp_path / 'a'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip() == "error: no run finished", r.stderr
    r = subprocess.run([*args, f"--output_dir={tmp_path / 'b'}", "--ray_address=auto"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: Ray is not installed") and "bir_keras[ray]" in line
    assert not (tmp_path / "b").exists()


# a local Ray instance (about 15 s to start it and its workers on 2 cores)
@pytest.mark.slow
def test_a_sweep_on_ray_caches_the_same_runs(tmp_path):
    pytest.importorskip("ray")
    local, lines = tmp_path / "local", []
    _fake_sweep(local, lines, seeds_at_once=2).run()
    on_ray, lines = tmp_path / "ray", []
    start = time.time()
    outcome = _fake_sweep(on_ray, lines, seeds_at_once=2, ray_address="local",
                          cpus_per_run=1).run()
    print(f"a sweep of 4 processes on a local Ray instance: {time.time() - start:.1f} s")
    assert lines[0] == "0 cached, 6 to run (4 of them in 2 pack(s) of seeds)"
    assert outcome.failed == [] and len(outcome.done) == 6
    assert sorted(p.name for p in (on_ray / "runs").iterdir()) == \
        sorted(p.name for p in (local / "runs").iterdir())
    assert (on_ray / "table.csv").read_text() == (local / "table.csv").read_text()
    assert rundirs.foreign_entries(on_ray, rundirs.COMPARE) == []
    # the cache is shared: nothing to run, and no cluster is started for it
    lines.clear()
    sweep = _fake_sweep(on_ray, lines, seeds_at_once=2, ray_address="local")
    assert isinstance(sweep.executor, sweeps.LocalPool)
    sweep.run()
    assert lines[0] == "6 cached, 0 to run"


def test_bk_compare_tabulates_as_apps_compare():
    import bir_keras as bk
    from bir_keras.api import Comparison, History, _paper_differences

    def history(final):
        return History({"final_average_accuracy": final, "average_accuracy": [1.0, final],
                        "wall_time_s": 3.0}, "o", "e")

    config = bk.Config(experiment="split_mnist", scenario="class", iters=50, jit_compile=False)
    changed = _paper_differences(config)
    assert changed == ["--iters=50"]   # how a run executes is not a setting of the paper's
    c = Comparison({"none": [0.2, 0.3]}, {"none": [history(0.2), history(0.3)]},
                   "split_mnist", "class", changed)
    assert c.table() == sweeps.table_texts(c.stats, "split_mnist", "class", changed)[0]
    assert "| none | 2 | 25.00 ± 5.00 | 19.90* | 3 |" in c.table()
    assert c.summary()["none"] == pytest.approx((0.25, 0.05))
    one = Comparison({"none": [0.2]}, {"none": [history(0.2)]})
    assert one.summary() == {"none": (pytest.approx(0.2), None)}
    assert _paper_differences(bk.Config(experiment="split_mnist", scenario="class")) == []


def test_the_library_imports_no_app_and_reads_no_flags():
    import ast

    for path in (ROOT / "bir_keras").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "apps" or n.startswith("apps.")], path
            if "sweeps" in path.parts:
                assert not [n for n in names if n.startswith("absl")], path
