"""apps.compare: runs methods over seeds, caches by a stamp of the settings, tabulates; its
--output_dir is its own folder (marked), refused input is refused before any run, Ctrl-C
stops the runs in progress and keeps the finished ones cached."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.compare import PROGRAM, check_run, parse_sweep
from bir_keras import rundirs
from bir_keras.config import ConfigError
from bir_keras.data.sources import DataError
from bir_keras.sweeps import (
    Folder,
    changed_settings,
    check_output_dir,
    is_cached,
    name_part,
    plan,
    refusal,
    stamp,
    unexpected_entries,
    write_tables,
)
from tests import processes
from tests.apps.test_refusals import no_tensorflow_env

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
# two tasks of split digits, a few iterations: each run takes seconds
TINY = ["--experiment=split_digits", "--scenario=class", "--methods=none", "--batch=16",
        "--fc_units=20", "--tasks=2", "--iters=8"]


def compare(*args, env=None):
    return subprocess.run([sys.executable, "-m", "apps.compare", *args], cwd=ROOT,
                          env=env or ENV, capture_output=True, text=True, timeout=600)


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A compare folder with two finished runs (seeds 0 and 1), and the first compare's
    output."""
    root = tmp_path_factory.mktemp("compare") / "cmp"
    r = compare(*TINY, "--seeds=2", "--parallel=2", f"--output_dir={root}")
    assert r.returncode == 0, r.stderr[-3000:]
    return root, r


def test_stamp_depends_on_settings_not_order():
    assert stamp(["--a=1", "--b=2"]) == stamp(["--b=2", "--a=1"])
    assert stamp(["--a=1"]) != stamp(["--a=2"])
    # flags that cannot change a run's numbers are not part of its stamp
    assert stamp(["--a=1", "--checkpoint_every=1"]) == stamp(["--a=1"])
    assert stamp(["--a=1", "--progress_every=2"]) == stamp(["--a=1"])


def test_plan_and_its_runs_check(tmp_path):
    # XdG outside Task-IL: refused by the run's check (bir_keras.config's rule, as apps.train)
    [xdg] = plan(["xdg"], [0], "split_mnist", "class", [], tmp_path)
    with pytest.raises(ConfigError, match="XdG needs task identity: --method=xdg"):
        check_run(xdg.args)
    # a sweep value of the flag's type but out of its range: refused by the run's check
    [nan] = plan(["none"], [0], "split_mnist", "class", [], tmp_path,
                 sweep=parse_sweep("lr:nan"))
    with pytest.raises(ConfigError, match="--lr must be a positive finite number, got nan"):
        check_run(nan.args)
    runs = plan(["none", "si"], [0, 1], "split_mnist", "class", ["--iters=5"], tmp_path,
                sweep=parse_sweep("batch_replay:1,4"))
    assert len(runs) == 8 and len({r.dir for r in runs}) == 8
    # sweep values as apps.train reads them
    runs = plan(["none"], [0], "split_mnist", "class", [], tmp_path,
                sweep=parse_sweep("batch_replay:04"))
    assert runs[0].args[-1] == "--batch_replay=4" and runs[0].key == "none-batch_replay4"


def test_cache_skips_finished_and_reruns_changed(finished):
    root, first = finished
    assert "0 cached, 2 to run" in first.stdout
    assert f"wrote {root / 'table.md'}, {root / 'table.csv'}, " \
           f"{root / 'accuracy.png'}" in first.stdout
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert [r["method"] for r in rows] == ["none"] and rows[0]["seeds"] == "2"
    assert 0 <= float(rows[0]["mean"]) <= 100
    assert (root / "table.md").read_text().startswith("| method")
    assert (root / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the folder is marked as apps.compare's and lists everything in it
    assert rundirs.marker_kind(root) == rundirs.COMPARE
    assert rundirs.foreign_entries(root, rundirs.COMPARE) == []
    listed = json.loads((root / ".bir_keras").read_text())["files"]
    assert {"table.md", "table.csv", "accuracy.png", "runs/"} <= set(listed)

    # --checkpoint_every passes through to apps.train but is not part of the stamp
    again = compare(*TINY, "--seeds=2", "--checkpoint_every=1", f"--output_dir={root}")
    assert again.returncode == 0 and "2 cached, 0 to run" in again.stdout, again.stderr
    # a changed setting is another run (checked here without running it)
    base = ["--batch=16", "--fc_units=20", "--iters=8", "--tasks=2"]
    for args, cached in ((base, True), (base + ["--checkpoint_every=1.0"], True),
                         ([a.replace("=8", "=9") for a in base], False)):
        runs = plan(["none"], [0, 1], "split_digits", "class", args, root)
        assert [is_cached(r) for r in runs] == [cached, cached], args
        assert all(a in r.args for r in runs for a in args)  # passed to apps.train


def test_seeds_are_packed_and_each_cached_as_its_own_run(finished):
    # the fixture's two seeds fit in memory: one apps.train trained both (the default)
    root, r = finished
    assert "2 to run (2 of them in 1 pack(s) of seeds)" in r.stdout, r.stdout
    assert not list((root / "runs").glob("*-pack-*"))   # the pack's folder is gone
    for seed in (0, 1):
        [d] = root.glob(f"runs/none-s{seed}-*")
        rec = json.loads((d / "out" / "results.json").read_text())
        assert rec["flags"]["seed"] == seed and rec["seeds_at_once"] == 2
        assert rec["export_dir"] == str(d / "export")
        assert json.loads((d / "export" / "run.json").read_text())["flags"]["seed"] == seed
        assert rundirs.foreign_entries(d / "out", rundirs.OUTPUT) == []
        assert f"seed {seed} of the pack" in (d / "log.txt").read_text()
    assert unexpected_entries(root) == []


@pytest.mark.parametrize("case", ["xla", "sweep"])
def test_what_cannot_be_packed_is_refused(tmp_path, case):
    args = {"xla": ["--seeds_at_once=2", "--jit_compile"],
            "sweep": ["--sweep=seeds_at_once:1,2"]}[case]
    line = one_error_line(compare(*TINY, "--seeds=2", *args, f"--output_dir={tmp_path / 'c'}",
                                  env=no_tensorflow_env(tmp_path)))
    assert {"xla": "drop --jit_compile", "sweep": "cannot sweep --seeds_at_once"}[case] in line
    assert not (tmp_path / "c").exists()


def test_published_number_marked_when_settings_differ(tmp_path):
    stats = {"none": {"final": [0.2, 0.21], "wall": [1.0], "value": None, "mean": 20.5,
                      "sem": 0.5}}
    changed = changed_settings(["--iters=8", "--data_dir=D", "--nojit_compile",
                                "--checkpoint_every=1"])
    assert changed == ["--iters=8"]
    md = write_tables(stats, "split_mnist", "class", tmp_path, changed)
    assert "| 19.90* |" in md and "these runs differ: --iters=8" in md
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert rows[0]["settings_differ_from_published"] == "--iters=8"
    # the paper's settings (only how the runs execute differs): no mark
    md = write_tables(stats, "split_mnist", "class", tmp_path,
                      changed_settings(["--data_dir=D", "--jit_compile"]))
    assert "| 19.90 |" in md and "differ" not in md


REFUSED = {  # case: (arguments, what the error line says)
    "seeds0": (["--seeds=0"], "--seeds"),
    "unknown_sweep_flag": (["--sweep=bogus:1,2"], "--bogus"),
    "sweep_value": (["--sweep=batch_replay:1,abc"], "'abc'"),
    "lr_nan": (["--lr=nan"], "--lr"),
    "unknown_flag": (["--no_such_flag=1"], "no_such_flag"),
    "seed_set_by_compare": (["--seed=3"], "--seed"),
    "overwrite": (["--overwrite"], "--overwrite is set by apps.compare"),
    "methods_twice": (["--methods=none,none"], "twice"),
    "methods_empty_name": (["--methods=none,,joint"], "unknown method ''"),
    "too_many_tasks": (["--tasks=9"], "--tasks=9"),
    "incompatible": (["--xdg"], "XdG"),
    "no_output_dir": ([], "--output_dir"),
    "sweep_out_of_range": (["--sweep=lr:0.001,nan"],
                           "--lr must be a positive finite number, got nan"),
    # the numeric flags of apps.compare
    "seeds_negative": (["--seeds=-1"], "--seeds must be at least 1"),
    "too_many_runs": (["--seeds=1000000000"], "would start 1,000,000,000 runs"),
    "too_many_runs_methods": (["--methods=none,joint", "--seeds=5001"], "would start 10,002 runs"),
    "parallel_negative": (["--parallel=-1"], "--parallel must be in [0, 256]"),
    "parallel_huge": (["--parallel=100000000"], "--parallel must be in [0, 256]"),
    "seeds_at_once0": (["--seeds_at_once=0"], "--seeds_at_once must be in [1, 64], got 0"),
    "first_seed": (["--first_seed=-1"], "--first_seed must be in [0, 2^32)"),
    "seed_range": (["--first_seed=4294967295", "--seeds=2"], "at most 2^32"),
    # the syntax of --sweep
    "sweep_empty": (["--sweep="], "--sweep must look like flag:v1,v2 (got '')"),
    "sweep_no_colon": (["--sweep=batch_replay"], "--sweep must look like flag:v1,v2"),
    "sweep_no_flag": (["--sweep=:1,2"], "cannot sweep --"),
    "sweep_no_values": (["--sweep=batch_replay:"], "no values to sweep over"),
    "sweep_empty_value": (["--sweep=batch_replay:1,,2"], "an empty value"),
    "sweep_trailing_comma": (["--sweep=batch_replay:1,2,"], "an empty value"),
    "sweep_value_twice": (["--sweep=batch_replay:1,01"], "--batch_replay=1 is listed twice"),
    "sweep_twice": (["--sweep=batch_replay:1,2", "--sweep=lr:0.1,0.2"],
                    "--sweep is given 2 times"),
    "swept_and_given": (["--sweep=iters:4,8"], "--iters=8 and --sweep=iters:4,8 both set"),
    "sweep_not_stamped": (["--sweep=checkpoint_every:1,2"],
                          "it does not change a run's numbers"),
    "sweep_set_by_compare": (["--sweep=seed:1,2"], "it is set by apps.compare"),
    "title_math": (["--title=cost: $$"], "--title='cost: $$' cannot be drawn by matplotlib"),
    "title_long": (["--title=" + "t" * 201], "--title is 201 characters long: at most 200"),
    # where the runs go
    "ray_address_empty": (["--ray_address="], "--ray_address is empty"),
    "cpus_per_run_alone": (["--cpus_per_run=4"], "give it with --ray_address"),
    "cpus_per_run_zero": (["--cpus_per_run=0", "--ray_address=local"],
                          "--cpus_per_run must be in (0, 1024]"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_any_run(tmp_path, case):
    # before TensorFlow loads and before any run starts: nothing is created
    out = tmp_path / "cmp"
    args, expect = REFUSED[case]
    target = [] if case == "no_output_dir" else [f"--output_dir={out}"]
    line = one_error_line(compare(*TINY, *args, *target, env=no_tensorflow_env(tmp_path)))
    assert "no run finished" not in line
    assert expect in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["name_too_long", "path_too_long", "under_a_file",
                                  "nul_in_flagfile", "huge_sweep_in_flagfile"])
def test_bad_output_dir_or_flagfile_is_refused(tmp_path, case):
    if case == "name_too_long":
        out, expect = tmp_path / ("x" * 300) / "cmp", "is 300 bytes long, the file system"
    elif case == "path_too_long":
        out = tmp_path.joinpath(*["y" * 200] * 18)
        expect = "the runs in it need paths of up to 640 bytes more"
    else:
        (tmp_path / "file").write_text("mine")
        out, expect = tmp_path / "file" / "cmp", "/file is not a directory"
    args = [f"--output_dir={out}"]
    if case == "nul_in_flagfile":
        (tmp_path / "flags").write_text(f"--output_dir={tmp_path}/a\0b\n")
        args, expect = [f"--flagfile={tmp_path / 'flags'}"], "holds a NUL character"
    elif case == "huge_sweep_in_flagfile":   # 10^6 values: refused before they are parsed
        values = ",".join(str(v) for v in range(1, 10 ** 6 + 1))
        (tmp_path / "flags").write_text(f"--sweep=batch_replay:{values}\n")
        args.append(f"--flagfile={tmp_path / 'flags'}")
        expect = "would start 3,000,000 runs (1 method(s) x 1,000,000 sweep value(s) x 3 seed(s))"
    env = no_tensorflow_env(tmp_path)
    before = sorted(tmp_path.iterdir())
    line = one_error_line(compare(*TINY, *args, env=env))
    assert expect in line
    assert sorted(tmp_path.iterdir()) == before


def test_help_lists_only_what_compare_takes():
    r = subprocess.run([sys.executable, "-m", "apps.compare", "--help"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    listed = {ln.split(":")[0].strip() for ln in r.stdout.splitlines()
              if ln.startswith("  --")}
    # apps.train's flags pass through, but not those that compare sets for each run
    assert {"--iters", "--data_dir", "--output_dir", "--seeds", "--seeds_at_once",
            "--[no]jit_compile", "--[no]tf_log"} <= listed
    assert not listed & {"--[no]overwrite", "--export_dir", "--resume_from", "--method",
                         "--seed"}, listed
    text = " ".join(r.stdout.split())
    at_once = text[text.index("--seeds_at_once:"):]
    at_once = at_once[:at_once.index("(an integer)")]
    assert "default: '1'" not in at_once and "(default: as many as fit in memory" in at_once


@pytest.mark.parametrize("case", ["foreign_folder", "foreign_file_in_ours", "a_file"])
def test_a_folder_that_is_not_compares_is_refused(tmp_path, case):
    out = tmp_path / "cmp"
    if case == "a_file":
        out.write_text("notes")
    else:
        out.mkdir()
        if case == "foreign_file_in_ours":
            rundirs.write_marker(out, rundirs.COMPARE)
            (out / "runs").mkdir()
            (out / "runs" / "notes.txt").write_text("mine")
        (out / "table.md").write_text("my table")
    env = no_tensorflow_env(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line = one_error_line(compare(*TINY, f"--output_dir={out}", "--only_cached", env=env))
    assert f"--output_dir={out}" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_empty_folder_is_taken_and_a_busy_one_refused(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    with rundirs.claim(out, "--output_dir"):  # another compare holds it
        line = one_error_line(compare(*TINY, f"--output_dir={out}", "--only_cached"))
    assert "being written by another run" in line and list(out.iterdir()) == []
    # an empty folder holds nothing to replace: it becomes a compare folder
    r = compare(*TINY, f"--output_dir={out}", "--only_cached")
    assert r.returncode == 1 and "no run finished" in r.stderr
    assert rundirs.marker_kind(out) == rundirs.COMPARE


def _running(pattern: str) -> list[str]:
    """Command lines of processes that mention ``pattern``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in text:
            found.append(text)
    return found


def test_ctrl_c_stops_runs_and_keeps_finished_ones_cached(finished, tmp_path):
    root = tmp_path / "cmp"
    shutil.copytree(finished[0], root, symlinks=True)
    with processes.running(["-m", "apps.compare", *TINY, "--seeds=3", f"--output_dir={root}"],
                           env={**ENV, "PYTHONFAULTHANDLER": "1"}) as proc:
        # until seed 2's apps.train process has its data and networks (its scratch output
        # folder exists: the Ctrl-C lands in the training loop)
        processes.wait_until(
            proc, lambda: [d for d in root.glob("runs/none-s2-*")
                           if _running(f"--output_dir={d}") and list(d.glob(".out.tmp-*"))],
            time.time() + 120, "the start of the third run")
        stdout, stderr = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "2 cached, 1 to run" in stdout
    [line] = stderr.strip().splitlines()
    assert line.startswith("interrupted: 2 of 3 run(s) finished and are cached")
    assert "not cached: none seed 2" in line
    [run2] = root.glob("runs/none-s2-*")
    assert not (run2 / "stamp.json").exists()
    assert not _running(str(run2))  # the run was stopped, not left behind
    # the folder is still apps.compare's: the finished runs are reused
    again = compare(*TINY, "--seeds=3", f"--output_dir={root}", "--only_cached")
    assert again.returncode == 0 and "wrote" in again.stdout, again.stderr
    rows = list(csv.DictReader((root / "table.csv").open()))
    assert rows[0]["seeds"] == "2"


def test_sweep_values_become_safe_names_inside_output_dir(tmp_path):
    # values that are paths (up and out of the folder, absolute), hidden, long, and values
    # that differ only in the characters a name cannot keep
    values = ["../../../../elsewhere/w1", "/abs/w1", "..", ".hidden", "a/b", "a?b", "a_b",
              "a\\b", "x" * 300, "x" * 299 + "y", "-1.5e-05", "ok"]
    root = tmp_path / "cmp"
    runs = plan(["none"], [0, 4294967295], "split_mnist", "class", [], root,
                sweep=parse_sweep("conv_weights:" + ",".join(values)))
    assert [r.value for r in runs[::2]] == values   # the runs get the values as given
    names = [r.dir.name for r in runs]
    assert len(set(names)) == len(runs)
    for r in runs:
        assert r.dir.parent == root / "runs", r.dir
        name = r.dir.name
        assert "/" not in name and "\\" not in name and "\0" not in name and ".." not in name
        assert not name.startswith(".") and len(name.encode()) <= 120, name
        assert r.args[-1] == f"--conv_weights={r.value}"
    parts = [name_part(v) for v in values]
    assert len(set(parts)) == len(values)
    assert all(len(p) <= 40 and "/" not in p and ".." not in p and not p.startswith(".")
               for p in parts)
    # a value that is a safe name stays readable as it is (earlier compares' runs keep
    # their names); one that is not keeps a readable part and a hash of the value
    assert [name_part(v) for v in ("a_b", "-1.5e-05", "ok", "0.001")] == \
        ["a_b", "-1.5e-05", "ok", "0.001"]
    assert name_part("../../../../elsewhere/w1").startswith("elsewhere_w1~")
    assert name_part("a/b") != name_part("a?b") and name_part("a/b") != "a_b"


# real runs (about 35 s); the names are checked without runs in
# test_sweep_values_become_safe_names_inside_output_dir
@pytest.mark.slow
def test_a_sweep_of_paths_writes_only_inside_output_dir(tmp_path):
    # the swept values are paths out of --output_dir: the runs stay inside it (split digits
    # has no conv layers, so --conv_weights is not read); a '$' in a value is no
    # matplotlib math in the plot's legend
    root = tmp_path / "a" / "cmp"
    far = tmp_path / "far"
    r = compare(*TINY, "--seeds=2", f"--output_dir={root}",
                f"--sweep=conv_weights:../../../../../far/w1,{far}/w$$2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not far.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["cmp"]
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert len(runs) == 4 and all("~" in n for n in runs), runs
    assert unexpected_entries(root) == []
    assert "none-conv_weights../../../../../far/w1" in (root / "table.md").read_text()


@pytest.mark.parametrize("case", ["absolute", "relative"])
def test_a_sweep_value_apps_train_refuses_is_named(tmp_path, case):
    value = {"absolute": str(tmp_path / "nonexistent"), "relative": "no/such/dir"}[case]
    [run] = plan(["none"], [0], "split_digits", "class", [], tmp_path / "cmp",
                 sweep=parse_sweep(f"data_dir:{value}"))
    with pytest.raises(DataError, match=f"--data_dir={value} does not exist") as e:
        check_run(run.args)
    line = refusal(run, e.value, PROGRAM)
    assert line.startswith(f"--sweep value --data_dir={value}: none seed 0")
    # on a protocol with conv layers, pre-trained weights that do not exist ('random': an
    # untrained trunk)
    runs = plan(["none"], [0], "split_cifar10", "class", [], tmp_path / "cmp",
                sweep=parse_sweep(f"conv_weights:random,{value}"))
    check_run(runs[0].args)
    with pytest.raises(DataError, match=f"--conv_weights={value} does not exist"):
        check_run(runs[1].args)


def test_a_run_that_does_not_fit_in_memory_is_refused(tmp_path, monkeypatch):
    # apps.train's memory check (it stops such a run before anything loads), made here
    # before any run
    from bir_keras import appfiles

    monkeypatch.setattr(appfiles, "available_memory", lambda: 2 ** 30)
    runs = plan(["none"], [0], "split_digits", "class", [], tmp_path / "cmp",
                sweep=parse_sweep("fc_units:20,100000"))
    check_run(runs[0].args)
    with pytest.raises(ConfigError, match="out of memory: this run needs more than the 1 "
                                          "GiB available; lower --fc_units") as e:
        check_run(runs[1].args)
    assert refusal(runs[1], e.value, PROGRAM).startswith("--sweep value --fc_units=100000: ")


@pytest.mark.parametrize("case", ["data_dir", "data_dir_relative", "conv_weights"])
def test_a_sweep_value_is_refused_before_any_run(tmp_path, case):
    args = {"data_dir": [f"--sweep=data_dir:{tmp_path / 'nonexistent'}"],
            "data_dir_relative": ["--sweep=data_dir:no/such/dir"],
            "conv_weights": ["--experiment=split_cifar10",
                             f"--sweep=conv_weights:random,{tmp_path / 'w.h5'}"]}[case]
    out = tmp_path / "cmp"
    line = one_error_line(compare(*TINY, *args, f"--output_dir={out}",
                                  env=no_tensorflow_env(tmp_path)))
    flag, values = args[-1][len("--sweep="):].split(":", 1)
    assert line.startswith(f"error: --sweep value --{flag}={values.split(',')[-1]}: ")
    assert "does not exist" in line
    assert not out.exists()


def _interrupted_pack(root: Path) -> Path:
    """The state a packed compare (seeds 0 and 1 in one apps.train) leaves after Ctrl-C
    stopped it in training: the pack's folder with its log, an empty out/ and each seed's
    partly trained model (``<export>/seed<s>-interrupted``, marked as an export)."""
    root.mkdir()
    pack = root / "runs" / "none-s0-s1-pack-0123456789ab"
    (pack / "out").mkdir(parents=True)
    (pack / "log.txt").write_text("apps.train's log\n")
    rundirs.write_marker(root, rundirs.COMPARE)   # as when the pack started
    for s in (0, 1):
        exp = pack / "export" / f"seed{s}-interrupted"
        exp.mkdir(parents=True)
        (exp / "run.json").write_text("{}")
        rundirs.write_marker(exp, rundirs.EXPORT)
    return pack


@pytest.mark.parametrize("foreign", [None, "out/notes.txt", "export/notes.txt",
                                     "export/seed0-interrupted/notes.txt", "export/mine/",
                                     "notes.txt", "../none-s2-0123456789ab/notes.txt",
                                     "../none-s2-0123456789ab/log.txt@", "export@"])
def test_an_interrupted_pack_is_compares_own(tmp_path, foreign):
    # (the last three: a run folder that the marker does not list yet, holding a file of
    # yours, or a link where a run writes its log; a link for a pack's export/)
    root = tmp_path / "cmp"
    pack = _interrupted_pack(root)
    (root / "runs" / "none-s2-0123456789ab").mkdir()
    if foreign and foreign.endswith("@"):
        (tmp_path / "elsewhere").mkdir()
        link = pack / foreign[:-1]
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(rundirs.PathRefused, match="holds files apps.compare did not write"):
            check_output_dir(root)
        assert not Folder(root).mark()
        return
    if foreign is None:
        check_output_dir(root)   # the rerun takes the folder
        assert unexpected_entries(root) == []
        assert Folder(root).mark()   # and lists the pack's folders in its marker
        check_output_dir(root)
        return
    if foreign.endswith("/"):
        (pack / foreign).mkdir()
    else:
        (pack / foreign).write_text("mine")
    with pytest.raises(rundirs.PathRefused, match="holds files apps.compare did not write"):
        check_output_dir(root)
    assert not Folder(root).mark()


# a real Ctrl-C of a real pack (about 40 s); the state it leaves is checked without runs
# in test_an_interrupted_pack_is_compares_own
@pytest.mark.slow
def test_a_packed_compare_stopped_by_ctrl_c_is_continued(tmp_path):
    root = tmp_path / "cmp"
    args = [*TINY[:-1], "--iters=1000", "--seeds=2", f"--output_dir={root}"]
    with processes.running(["-m", "apps.compare", *args], env=ENV) as proc:
        # until both seeds of the pack have their scratch output folders (in training)
        processes.wait_until(proc, lambda: len(list(root.glob("runs/*-pack-*/out/.seed*"))) >= 2,
                             time.time() + 120, "the start of the pack")
        time.sleep(0.2)
        stdout, stderr = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "not cached: none seed 0, none seed 1" in stderr
    [pack] = root.glob("runs/*-pack-*")
    assert (pack / "out").is_dir()
    # the same command again takes its folder and trains the seeds that did not finish
    again = compare(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 cached, 2 to run" in again.stdout and "none seed 1: ok" in again.stdout
    assert unexpected_entries(root) == []
    assert rundirs.foreign_entries(root, rundirs.COMPARE) == []


# real runs on a local Ray instance (about 70 s with the fixture's); the same sweep on Ray
# over a stand-in program in tests/test_sweeps.py, and the refusal of --ray_address where
# Ray is not installed
@pytest.mark.slow
def test_runs_on_ray_are_the_runs_on_this_machine(finished, tmp_path):
    pytest.importorskip("ray")
    local = finished[0]
    root = tmp_path / "cmp"
    r = compare(*TINY, "--seeds=2", "--ray_address=local", f"--output_dir={root}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 cached, 2 to run (2 of them in 1 pack(s) of seeds)" in r.stdout
    # the same run directories (stamps), the same numbers, the same table
    assert sorted(p.name for p in (root / "runs").iterdir()) == \
        sorted(p.name for p in (local / "runs").iterdir())
    for d in (root / "runs").iterdir():
        ours, theirs = (json.loads((x / "runs" / d.name / "out" / "results.json").read_text())
                        for x in (root, local))
        assert ours["accuracy_matrix"] == theirs["accuracy_matrix"]

    def table(folder):
        return [{k: v for k, v in row.items() if k != "wall_time_s"}
                for row in csv.DictReader((folder / "table.csv").open())]

    assert table(root) == table(local)
    # a second call runs nothing
    again = compare(*TINY, "--seeds=2", "--ray_address=local", f"--output_dir={root}")
    assert again.returncode == 0 and "2 cached, 0 to run" in again.stdout, again.stderr


# real runs stopped on a local Ray instance (about 40 s); Ctrl-C of runs on this machine in
# test_ctrl_c_stops_runs_and_keeps_finished_ones_cached
@pytest.mark.slow
def test_ctrl_c_stops_the_ray_tasks_and_their_runs(tmp_path):
    pytest.importorskip("ray")
    root = tmp_path / "cmp"
    args = [*TINY[:-1], "--iters=3000", "--seeds=3", "--seeds_at_once=1", "--cpus_per_run=1",
            "--ray_address=local", f"--output_dir={root}"]
    with processes.running(["-m", "apps.compare", *args], env=ENV) as proc:
        # two runs on the instance's 2 CPUs are training, the third is queued
        processes.wait_until(proc, lambda: len(list(root.glob("runs/*/.out.tmp-*"))) >= 2,
                             time.time() + 180, "the start of two runs")
        stdout, stderr = processes.ctrl_c(proc)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interrupted: 0 of 3 run(s) finished") and "1 not started" in line
    stopped = sorted(root.glob("runs/*/export-interrupted"))
    assert len(stopped) == 2   # each task passed the Ctrl-C on: its run saved what it could
    assert all(not _running(str(p.parent)) for p in stopped)
    assert unexpected_entries(root) == []
