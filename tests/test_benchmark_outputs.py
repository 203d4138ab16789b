"""The benchmarks' one rule for the files they write (issue 47): a user's file is never
replaced, not even with --overwrite; a benchmark's own earlier output only with
--overwrite; a --quick speed run never replaces a measurement (its default output is under
runs/); all of it refused before any work starts (exit 2, one ``error:`` line). Nothing
slow runs: each case is refused (or checked) before a benchmark would start."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": str(ROOT)}


def run(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=120)


def one_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


# -- benchmarks.speed -----------------------------------------------------------------
def test_speed_quick_refuses_a_users_file_before_any_work(tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    for extra in ([], ["--overwrite"]):
        r = run("benchmarks.speed", "--quick", f"--out={mine}", *extra, cwd=tmp_path)
        assert r.returncode == 2
        assert "not written by benchmarks.speed" in one_error(r)
        assert mine.read_text() == '{"my": "notes"}'


def test_speed_quick_never_replaces_a_shipped_record(tmp_path):
    shipped = ROOT / "benchmarks" / "results" / "speed.json"
    before = shipped.read_bytes()
    r = run("benchmarks.speed", "--quick", f"--out={shipped}", "--overwrite", cwd=tmp_path)
    assert r.returncode == 2 and "not a --quick run" in one_error(r)
    assert shipped.read_bytes() == before


# benchmarks.speed defines absl flags that apps.compare defines as well: its functions are
# checked in a child process
SPEED_RULE = """
import os, sys
from pathlib import Path
import pytest
from benchmarks import PathRefused, write_out
from benchmarks.speed import DEFAULT_OUT_QUICK, PROGRAM, out_path, speed_record

root, tmp = Path(sys.argv[1]), Path(sys.argv[2])
assert DEFAULT_OUT_QUICK.startswith("runs")
for rec in (root / "benchmarks" / "results").glob("speed*.json"):
    # written before written_by: still recognised, but as measurements, not --quick runs
    assert speed_record(rec, quick=False) and not speed_record(rec, quick=True), rec
out = tmp / "quick.json"
write_out(out, {"quick": True, "methods": []}, PROGRAM)
with pytest.raises(PathRefused, match="pass --overwrite"):
    out_path(str(out), True, False)
assert out_path(str(out), True, True) == out
assert out_path(str(out), False, True) == out  # a quick output is no measurement
full = tmp / "full.json"
write_out(full, {"quick": False, "methods": []}, PROGRAM)
with pytest.raises(PathRefused, match="not a --quick run"):
    out_path(str(full), True, True)
assert out_path(str(full), False, True) == full
other = tmp / "other.json"
write_out(other, {"quick": True}, "benchmarks.precision")
with pytest.raises(PathRefused, match="not written by"):
    out_path(str(other), True, True)
for bad in (tmp, out / "x.json"):
    with pytest.raises(PathRefused):
        out_path(str(bad), True, True)
print("ok")
"""


def test_speed_out_rule(tmp_path):
    r = subprocess.run([sys.executable, "-c", SPEED_RULE, str(ROOT), str(tmp_path)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_speed_default_quick_out_is_not_a_shipped_record(tmp_path):
    """--quick without --out: the default lies under runs/ of the working directory."""
    ours = tmp_path / "runs" / "benchmarks" / "speed_quick.json"
    ours.parent.mkdir(parents=True)
    ours.write_text("not the benchmark's")
    r = run("benchmarks.speed", "--quick", cwd=tmp_path)
    assert r.returncode == 2 and "speed_quick.json" in one_error(r)
    assert ours.read_text() == "not the benchmark's"


def test_speed_bad_flags_are_one_line(tmp_path):
    for bad in (["--steps=0"], ["--methods=nope"], ["--seeds_at_once=0"],
                [f"--data_dir={tmp_path / 'missing'}"]):
        r = run("benchmarks.speed", "--quick", f"--out={tmp_path / 'o.json'}", *bad,
                cwd=tmp_path)
        assert r.returncode == 2, (bad, r.stderr)
        one_error(r)
    assert not (tmp_path / "o.json").exists()


# -- benchmarks.precision ---------------------------------------------------------------
def test_precision_refuses_a_users_file(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("[1, 2]")
    r = run("benchmarks.precision", f"--data_dir={tmp_path}", f"--out={mine}", "--overwrite",
            cwd=tmp_path)
    assert r.returncode == 2 and "not written by" in one_error(r)
    assert mine.read_text() == "[1, 2]"


# -- benchmarks.equivalence -------------------------------------------------------------
def test_equivalence_record_refuses_a_users_file_and_asks_for_overwrite(tmp_path):
    from benchmarks import equivalence

    mine = tmp_path / "digits.json"
    mine.write_text('{"my": 1}')
    r = run("benchmarks.equivalence", "--record", f"--record_dir={tmp_path}", "--overwrite",
            cwd=tmp_path)
    assert r.returncode == 2 and "not written by benchmarks.equivalence" in one_error(r)
    assert mine.read_text() == '{"my": 1}'
    # the shipped record is recognised as the benchmark's own: replaced only with --overwrite
    shipped = ROOT / "tests" / "data" / "equivalence"
    for name, ours in equivalence.RECORDS.items():
        assert ours(shipped / name), name
    assert not equivalence.mnist_json_ours(shipped / "digits.json")
    assert not equivalence.digits_npz_ours(shipped / "digits.json")
    before = (shipped / "digits.json").read_bytes()
    r = run("benchmarks.equivalence", "--record", f"--record_dir={shipped}", cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in one_error(r)
    assert (shipped / "digits.json").read_bytes() == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = run("benchmarks.equivalence", "--record", f"--record_dir={afile}", cwd=tmp_path)
    assert r.returncode == 2 and "not a directory" in one_error(r)


def test_equivalence_writes_its_records_atomically(tmp_path, monkeypatch):
    import numpy as np

    from benchmarks import equivalence

    monkeypatch.setattr(equivalence, "RECORD_DIR", tmp_path)
    equivalence._write("digits.npz", lambda t: equivalence._savez(
        t, {"class_none/0": np.zeros(2)}))
    equivalence._write("digits.json", lambda t: Path(t).write_text(
        json.dumps({"class_none": [[1.0]]})))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json", "digits.npz"]
    assert equivalence.digits_npz_ours(tmp_path / "digits.npz")
    equivalence.check_record_dir(tmp_path, ["digits.npz", "digits.json"], overwrite=True)


# -- benchmarks.flagfiles ---------------------------------------------------------------
def test_flagfiles_never_replace_a_users_file(tmp_path, monkeypatch):
    from benchmarks import flagfiles

    files = dict(list(flagfiles.expected().items())[:2])
    moved = {tmp_path / p.name: t for p, t in files.items()}
    monkeypatch.setattr(flagfiles, "expected", lambda: moved)
    (mine, _), (stale, text) = list(moved.items())
    mine.write_text("--my_own_flags\n")
    stale.write_text(text.replace("--iters=", "--iters=1"))
    assert flagfiles.main(["--check"]) == 1
    assert flagfiles.main(["--overwrite"]) == 2
    assert mine.read_text() == "--my_own_flags\n"
    mine.unlink()
    assert flagfiles.main([]) == 2  # its own out-of-date file: only with --overwrite
    assert flagfiles.main(["--overwrite"]) == 0
    assert {p: p.read_text() for p in moved} == moved
    assert flagfiles.main(["--check"]) == 0
