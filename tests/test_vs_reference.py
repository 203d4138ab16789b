"""benchmarks/vs_reference.py without the authors' code, torch or training: the parsers, the
table, the commands and the refusal of bad input (exit 2 before anything runs)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import check_out
from benchmarks import vs_reference as vr
from bir_keras.rundirs import PathRefused

MNIST = Path("/work/shared/data/mnist")


def _fake_reference(root: Path) -> Path:
    ref = root / "ref"
    (ref / "data").mkdir(parents=True)
    for name in ("main_cl.py", "options.py", "data/load.py"):
        (ref / name).write_text("")
    return ref


def _fake_mnist(root: Path, gz: bool = True, bad: str | None = None) -> Path:
    d = root / "mnist"
    d.mkdir()
    for name, magic in vr.MNIST_FILES.items():
        head = (0 if name == bad else magic).to_bytes(4, "big") + bytes(12)
        if gz:
            with gzip.open(d / f"{name}.gz", "wb") as f:
                f.write(head)
        else:
            (d / name).write_bytes(head)
    return d


@pytest.fixture
def no_process(monkeypatch):
    """Fail the test if anything is started."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"started a process: {args}")

    monkeypatch.setattr(vr.subprocess, "Popen", refuse)
    monkeypatch.setattr(vr.subprocess, "run", refuse)


OURS_OUT = """task 4/5: average accuracy 0.8119 [0.6230 0.8283 0.8532 0.9432] (0.8s)
task 5/5: average accuracy 0.8011 [0.5393 0.8036 0.8175 0.8863 0.9586] (0.8s)
{"final_average_accuracy": 0.8010725401941692, "output_dir": "o", "method": "bir"}
"""

THEIRS_OUT = """Training...
 <VAE> | Task: 5/5 | training loss: 1.2 | training accuracy: 0.9 |: 100%|###| 40/40\r
 --> saved model mM-splitMNIST5-class--VAE=F-784x400x400 to /tmp/m


EVALUATION RESULTS:

 Accuracy of final model on test-set:
 - For classes from task 1: 0.4449
 - For classes from task 5: 0.9600
=> Average accuracy over all 10 classes: 0.7982

"""


def test_parse_ours_accuracy():
    assert vr.parse_ours_accuracy(OURS_OUT) == pytest.approx(0.8010725401941692)
    assert vr.parse_ours_accuracy("task 1/5: average accuracy 0.99\n{not json\n") is None
    assert vr.parse_ours_accuracy("") is None
    assert vr.parse_ours_accuracy('{"final_average_accuracy": null}\n') is None


def test_parse_reference_accuracy():
    assert vr.parse_reference_accuracy(THEIRS_OUT) == pytest.approx(0.7982)
    domain = "=> Average accuracy over all 2 tasks: 0.4958\n"
    assert vr.parse_reference_accuracy(domain) == pytest.approx(0.4958)
    assert vr.parse_reference_accuracy("Training...\n - Task 1: 0.9\n") is None


def _info(scale=1.0):
    return {"date": "2026-01-01T00:00:00+00:00", "iters_scale": scale,
            "machine": {"cpu": "AMD EPYC", "vector_isa": ["avx2", "fma"], "cores": 2,
                        "usable_cores": 2,
                        "load_avg_at_start": [0.1, 0.2, 0.3]},
            "ours": {"commit": "abc123", "python": "3.11", "tensorflow": "2.21", "keras": "3.15"},
            "reference": {"commit": "1a030f75666c", "python": "3.11", "torch": "2.14.1",
                          "torchvision": "0.29.1"}}


def _side(wall, user, sys_, rss, acc, rc=0):
    return vr.Side(command=["x"], returncode=rc, wall_s=wall, user_s=user, sys_s=sys_,
                   peak_rss_gib=rss, final_average_accuracy=acc)


def test_format_table():
    results = [
        {"row": vr.ROWS["split_mnist"], "iters": 2000,
         "ours": _side(199.9, 300.0, 16.0, 1.34, 0.9085),
         "reference": _side(467.1, 800.0, 31.0, 0.95, 0.9055)},
        {"row": vr.ROWS["permuted_mnist"], "iters": 200,
         "ours": _side(116.4, 150.0, 10.0, 1.9, 0.95),
         "reference": _side(175.1, 200.0, 9.0, 1.4, None, rc=1)},
    ]
    table = vr.format_table(results, _info())
    lines = table.splitlines()
    assert lines[0].startswith("CPU: AMD EPYC (avx2, fma), 2 cores")
    assert "commit abc123" in lines[1] and "TensorFlow 2.21" in lines[1]
    assert "commit 1a030f75666c" in lines[2] and "torch 2.14.1" in lines[2]
    assert lines[3] == "date: 2026-01-01T00:00:00+00:00"
    assert "not a measurement" not in table
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| run |"))
    assert "ratio (their wall / ours)" in lines[header]
    assert lines[header + 1].startswith("|---|")
    row1 = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert row1 == ["BI-R split MNIST Class-IL, 5 tasks x 2000 iters, seed 12", "199.9", "316",
                    "1.34", "90.85", "467.1", "831", "0.95", "90.55", "2.34"]
    row2 = [c.strip() for c in lines[header + 3].strip("|").split("|")]
    assert row2[0] == "BI-R permuted MNIST Domain-IL, 2 tasks x 200 iters, seed 12"
    assert row2[5] == "failed (exit 1)" and row2[-1] == "n/a"
    assert len(row1) == len(row2) == 10
    assert "not a measurement" in vr.format_table(results[:1], _info(scale=0.02))


def test_to_json_and_atomic_write(tmp_path):
    results = [{"row": vr.ROWS["split_mnist"], "iters": 40,
                "ours": _side(10.0, 9.0, 1.0, 1.0, 0.8),
                "reference": _side(20.0, 19.0, 1.0, 1.0, 0.7)}]
    out = tmp_path / "sub" / "vs.json"
    vr.write_out(out, vr.to_json(results, _info(0.02)), vr.PROGRAM)
    data = json.loads(out.read_text())
    assert [p.name for p in out.parent.iterdir()] == ["vs.json"]
    assert data["written_by"] == "benchmarks.vs_reference"
    # an earlier result of this benchmark is replaced only with --overwrite; a user's file never
    with pytest.raises(PathRefused, match="--overwrite"):
        check_out(out, False, vr.PROGRAM)
    check_out(out, True, vr.PROGRAM)
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    with pytest.raises(PathRefused, match="not written by"):
        check_out(mine, True, vr.PROGRAM)
    with pytest.raises(PathRefused):
        vr.write_out(mine, {}, vr.PROGRAM)
    assert mine.read_text() == '{"my": "notes"}'
    row = data["rows"][0]
    assert row["row"] == "split_mnist" and row["iters"] == 40 and row["seed"] == 12
    assert row["ratio_wall"] == pytest.approx(2.0)
    assert row["ours"]["cpu_s"] == pytest.approx(10.0)
    assert data["iters_scale"] == 0.02


def test_commands_same_seed_iters_and_files(tmp_path):
    row = vr.ROWS["split_mnist"]
    assert vr.scaled_iters(row, 1.0) == 2000 and vr.scaled_iters(row, 0.02) == 40
    assert vr.scaled_iters(vr.ROWS["permuted_mnist"], 1e-6) == 1
    ours = vr.ours_command(row, 40, tmp_path / "data", tmp_path / "w")
    theirs = vr.reference_command("py", tmp_path / "ref", row, 40, tmp_path / "rd", tmp_path / "w")
    assert ours[1:3] == ["-m", "apps.train"] and theirs[1].endswith("main_cl.py")
    for flag in ("--seed=12", "--iters=40", "--tasks=5", "--batch=128", "--lr=0.001"):
        assert flag in ours and flag in theirs
    assert "--method=bir" in ours and "--fc_units=400" in ours
    assert "--brain-inspired" in theirs and "--replay=generative" in theirs
    assert "--fc-units=400" in theirs and "--no-gpus" in theirs
    perm = vr.ROWS["permuted_mnist"]
    theirs = vr.reference_command("py", tmp_path, perm, 200, tmp_path, tmp_path)
    assert "--experiment=permMNIST" in theirs and "--scenario=domain" in theirs
    assert "--tasks=2" in theirs and "--lr=0.0001" in theirs
    # --precision is bir_keras' alone, and the table says which it ran
    assert "--precision=float32" in ours
    assert "--precision=mixed_bfloat16" in vr.ours_command(perm, 200, tmp_path, tmp_path,
                                                           "mixed_bfloat16")
    assert not any("precision" in c for c in theirs)
    assert vr.row_label(perm, 200, "mixed_bfloat16").endswith("bir_keras in mixed_bfloat16")
    assert vr.row_label(perm, 200) == "BI-R permuted MNIST Domain-IL, 2 tasks x 200 iters, seed 12"


def test_reference_data_layout(tmp_path):
    files = vr.mnist_files(_fake_mnist(tmp_path))
    root = vr.prepare_reference_data(files, tmp_path / "rd")
    raw = root / "mnist" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(vr.MNIST_FILES)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes()[:4] == (2049).to_bytes(4, "big")


def _main(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(vr.main(list(argv)))
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_missing_reference_refused(tmp_path, capsys, no_process):
    code, err = _main(capsys, f"--reference={tmp_path / 'nope'}",
                      f"--data_dir={_fake_mnist(tmp_path)}")
    assert code == 2 and err.startswith("error: --reference") and "\n" not in err


def test_reference_without_main_refused(tmp_path, capsys, no_process):
    code, err = _main(capsys, f"--reference={tmp_path}", f"--data_dir={_fake_mnist(tmp_path)}")
    assert code == 2 and "main_cl.py" in err and "\n" not in err


@pytest.mark.parametrize("how", ["missing", "bad_magic"])
def test_bad_data_refused(tmp_path, capsys, no_process, how):
    ref = _fake_reference(tmp_path)
    if how == "missing":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = _fake_mnist(tmp_path, gz=False, bad="train-labels-idx1-ubyte")
    code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}")
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert ("has no train-images" in err) if how == "missing" else ("not an MNIST IDX" in err)


def test_missing_reference_python_refused(tmp_path, capsys, no_process):
    code, err = _main(capsys, f"--reference={_fake_reference(tmp_path)}",
                      f"--data_dir={_fake_mnist(tmp_path)}",
                      f"--reference_python={tmp_path / 'no' / 'python'}")
    assert code == 2 and err.startswith("error: --reference_python") and "\n" not in err


def test_bad_flags_refused(tmp_path, capsys, no_process):
    ref, data = _fake_reference(tmp_path), _fake_mnist(tmp_path)
    code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}", "--rows=cifar")
    assert code == 2 and "unknown cifar" in err
    code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}", "--iters_scale=-1")
    assert code == 2 and "--iters_scale" in err
    code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}", "--precision=float16")
    assert code == 2 and "--precision" in err and "\n" not in err
    code, err = _main(capsys, f"--data_dir={data}")
    assert code == 2 and err.startswith("error:") and "--reference" in err


def test_reference_python_without_torch_refused(tmp_path, capsys):
    """This interpreter has no torch (or, if it has, the probe reads its versions)."""
    ref, data = _fake_reference(tmp_path), _fake_mnist(tmp_path)
    try:
        import torch  # noqa: F401
    except ImportError:
        code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}",
                          f"--reference_python={sys.executable}")
        assert code == 2 and "cannot import torch" in err and "\n" not in err
    else:
        pytest.skip("this Python has torch")


@pytest.mark.skipif(not MNIST.is_dir(), reason="no local MNIST files")
def test_real_mnist_files_accepted():
    assert set(vr.mnist_files(MNIST)) == set(vr.MNIST_FILES)


def test_module_runs_as_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.vs_reference",
                           f"--reference={tmp_path / 'nope'}", f"--data_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=vr.REPO_ROOT, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: --reference")
    assert done.stdout == ""


def test_reference_python_missing_a_module_of_theirs_refused(tmp_path, capsys):
    # an interpreter with torch and torchvision but no scipy (their main_cl.py imports it):
    # refused before anything runs, not after our side's minutes
    mods = tmp_path / "mods"
    mods.mkdir()
    for name in ("torch", "torchvision"):
        (mods / f"{name}.py").write_text("__version__ = '0.0'\n")
    (mods / "scipy.py").write_text("raise ImportError('no scipy here')\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={mods} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    code, err = _main(capsys, f"--reference={_fake_reference(tmp_path)}",
                      f"--data_dir={_fake_mnist(tmp_path)}", f"--reference_python={python}")
    assert code == 2 and "no module named 'scipy'" in err and "\n" not in err


def test_a_failed_side_leaves_the_earlier_record(tmp_path, capsys, monkeypatch):
    from benchmarks import write_out

    out = tmp_path / "vs.json"
    write_out(out, {"rows": ["an earlier measurement"]}, vr.PROGRAM)
    before = out.read_bytes()
    monkeypatch.setattr(vr, "check_reference_python", lambda p: (p, {"python": "3", "torch": "0", "torchvision": "0"}))
    monkeypatch.setattr(vr, "prepare_reference_data", lambda files, root: root)

    def run_timed(command, cwd, env, log):
        Path(log).write_text("")
        ours = command[0] == sys.executable
        return vr.Side(command=command, returncode=0 if ours else 1, wall_s=1.0, user_s=1.0,
                       sys_s=0.0, peak_rss_gib=0.1, log=str(log))

    monkeypatch.setattr(vr, "run_timed", run_timed)
    code, err = _main(capsys, f"--reference={_fake_reference(tmp_path)}",
                      f"--data_dir={_fake_mnist(tmp_path)}", "--rows=split_mnist",
                      f"--out={out}", "--overwrite", "--reference_python=python3")
    assert code == 1 and "not written (a side failed)" in err
    assert out.read_bytes() == before


def test_vector_isa_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n"
                    "flags\t\t: fpu sse2 fma avx2 avx512f avx512_bf16 sha_ni\n")
    assert vr.vector_isa(info) == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert vr.vector_isa(tmp_path / "absent") == []


# -- fidelity: methods x seeds ---------------------------------------------------------------
def _their_components(flags: tuple[str, ...]) -> dict:
    """What main_cl.py makes of ``flags`` (their options.py: ``--brain-inspired`` switches on
    feedback, a per-class GMM prior, decoder gates and distillation)."""
    have = set(flags)
    bi = "--brain-inspired" in have
    replay = next((f.split("=", 1)[1] for f in flags if f.startswith("--replay=")), "none")
    return {"replay": replay, "distill": bi or "--distill" in have, "ewc": "--ewc" in have,
            "online": "--online" in have, "si": "--si" in have, "xdg": "--xdg" in have,
            "feedback": bi or "--feedback" in have,
            "prior": "gmm" if bi or "--prior=GMM" in have else "standard",
            "dg_gates": bi or "--dg-gates" in have}


@pytest.mark.parametrize("scenario", vr.SCENARIOS)
def test_every_method_is_the_same_method_in_both_programs(scenario):
    """Each shorthand, resolved by bir_keras, has the components their flags switch on, and
    both programs are given the same grid-searched values (those bir_keras would use)."""
    from bir_keras.config import METHODS, Config, resolve

    for name, method in vr.METHODS.items():
        assert name in METHODS
        if scenario not in method.scenarios:
            continue
        row = vr.method_row(method, scenario)
        c = resolve(Config(experiment="split_mnist", scenario=scenario, method=name))
        ours = {k: getattr(c, k) for k in ("replay", "distill", "ewc", "online", "si", "xdg",
                                           "feedback", "prior", "dg_gates")}
        assert ours == _their_components(row.theirs), name
        assert f"--method={name}" in row.ours and f"--scenario={scenario}" in row.theirs
        assert "--experiment=split_mnist" in row.ours and "--experiment=splitMNIST" in row.theirs
        for key in method.hparams:
            ours_flag, their_flag = vr.HPARAM_FLAGS[key]
            value = vr.SPLIT_MNIST_HPARAMS[scenario][key]
            assert f"{ours_flag}={value:g}" in row.ours and f"{their_flag}={value:g}" in row.theirs
            resolved = {"ewc_lambda": c.ewc_lambda, "si_c": c.si_c, "gamma": c.gamma,
                        "xdg_prop": c.xdg_prop, "dg_prop": c.dg_prop}[key]
            assert resolved == pytest.approx(value), (name, key)
        # the settings both programs get: their set_defaults for splitMNIST
        assert (row.tasks, row.iters, row.batch, row.lr, row.fc_units) == (5, 2000, 128, 0.001,
                                                                           400)


def test_split_mnist_hparams_are_bir_keras_paper_values():
    from bir_keras.config import PAPER_HPARAMS

    for scenario, hp in vr.SPLIT_MNIST_HPARAMS.items():
        ours = PAPER_HPARAMS[("split_mnist", scenario)]
        assert hp["si_c"] == ours["si_c"] == ours["bir_si_c"]
        assert hp["ewc_lambda"] == ours["ewc_lambda"] == ours["online_lambda"]
        assert hp["dg_prop"] == ours["dg_prop"]
        assert hp.get("xdg_prop") == ours.get("xdg_prop")


def test_method_flags_readme_commands(tmp_path):
    lwf = vr.method_row(vr.METHODS["lwf"], "class")
    theirs = vr.reference_command("py", tmp_path, lwf, 2000, tmp_path, tmp_path, seed=13)
    assert theirs[2:6] == ["--experiment=splitMNIST", "--scenario=class", "--replay=current",
                           "--distill"]
    assert "--seed=13" in theirs and "--seed=13" in vr.ours_command(lwf, 2000, tmp_path,
                                                                     tmp_path, seed=13)
    assert vr.method_row(vr.METHODS["generative"], "class").theirs[2:] == (
        "--replay=generative",)
    bir_si = vr.method_row(vr.METHODS["bir_si"], "class")
    assert bir_si.theirs[2:] == ("--replay=generative", "--brain-inspired", "--si", "--c=0.1",
                                 "--dg-prop=0.8")
    assert bir_si.ours[3:] == ("--si_c=0.1", "--dg_prop=0.8")
    assert "--c=10" in vr.method_row(vr.METHODS["si"], "task").theirs
    assert "--lambda=1e+09" in vr.method_row(vr.METHODS["ewc"], "task").theirs


def test_parse_methods_and_seeds():
    assert [m.name for m in vr.parse_methods("lwf, bir,lwf", "class")] == ["lwf", "bir"]
    for text, message in (("", "empty"), ("buffer", "unknown buffer"),
                          ("bir,gr_int", "unknown gr_int")):
        with pytest.raises(vr.InputError, match=message):
            vr.parse_methods(text, "class")
    with pytest.raises(vr.InputError, match="xdg not in --scenario=class"):
        vr.parse_methods("xdg", "class")
    assert vr.parse_methods("xdg", "task")[0].name == "xdg"
    assert vr.parse_seeds("12, 13,14") == [12, 13, 14]
    for text, message in ((",", "empty"), ("12,x", "not an integer"), ("-1", "not in"),
                          ("12,12", "twice")):
        with pytest.raises(vr.InputError, match=message):
            vr.parse_seeds(text)


def test_mean_sem():
    assert vr.mean_sem([]) == (None, None)
    assert vr.mean_sem([20.0]) == (20.0, None)
    mean, sem = vr.mean_sem([20.0, 22.0, 24.0])
    assert mean == pytest.approx(22.0) and sem == pytest.approx(2.0 / 3 ** 0.5)


def _fake_runs():
    row = vr.method_row(vr.METHODS["lwf"], "class")
    gr = vr.method_row(vr.METHODS["generative"], "class")
    runs = []
    for seed, a, b in ((12, 0.20, 0.21), (13, 0.22, 0.23), (14, 0.24, 0.25)):
        runs.append({"row": row, "method": "lwf", "seed": seed, "iters": 2000,
                     "ours": _side(100.0, 90.0, 5.0, 1.0, a),
                     "reference": _side(200.0, 180.0, 5.0, 1.0, b)})
    runs.append({"row": gr, "method": "generative", "seed": 12, "iters": 2000,
                 "ours": _side(300.0, 250.0, 5.0, 1.0, 0.9),
                 "reference": _side(400.0, 350.0, 5.0, 1.0, None, rc=1)})
    runs.append({"row": gr, "method": "generative", "seed": 13, "iters": 2000,
                 "ours": _side(300.0, 250.0, 5.0, 1.0, 0.92),
                 "reference": _side(400.0, 350.0, 5.0, 1.0, 0.91)})
    return runs


def test_summarize_and_fidelity_table():
    runs = _fake_runs()
    lwf, gr = vr.summarize(runs)
    assert lwf["method"] == "lwf" and lwf["seeds"] == [12, 13, 14]
    assert lwf["ours"]["mean"] == pytest.approx(22.0) and lwf["ours"]["n"] == 3
    assert lwf["reference"]["mean"] == pytest.approx(23.0)
    assert lwf["ours"]["sem"] == pytest.approx(2 / 3 ** 0.5)
    assert lwf["difference"]["mean"] == pytest.approx(-1.0)
    assert lwf["difference"]["sem"] == pytest.approx((2 * 4 / 3) ** 0.5)
    # a failed side counts in neither mean; one finished seed has no s.e.m.
    assert gr["ours"]["n"] == 2 and gr["reference"]["n"] == 1 and gr["reference"]["sem"] is None
    assert gr["difference"]["mean"] == pytest.approx(0.0) and gr["difference"]["sem"] is None
    # paired by seed: only seeds both finished
    assert lwf["paired"]["mean"] == pytest.approx(-1.0) and lwf["paired"]["sem"] == pytest.approx(0)
    assert gr["paired"] == {"n": 1, "mean": pytest.approx(1.0), "sem": None}

    info = {**_info(), "scenario": "class", "tasks": 5, "iters": 2000}
    lines = vr.format_fidelity_table(runs, info).splitlines()
    assert lines[0].startswith("CPU: AMD EPYC")
    assert "split MNIST Class-IL, 5 tasks x 2000 iters" in lines[4]
    per_seed = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines
                if ln.startswith("| lwf |") or ln.startswith("| generative |")]
    assert per_seed[0] == ["lwf", "12", "20.00", "100.0", "21.00", "200.0", "-1.00"]
    assert per_seed[3] == ["generative", "12", "90.00", "300.0", "failed (exit 1)", "", "n/a"]
    summary = per_seed[5:]
    assert summary[0] == ["lwf", "22.00 ± 1.15 (n=3)", "23.00 ± 1.15 (n=3)", "-1.00 ± 1.63",
                          "-1.00 ± 0.00"]
    assert summary[1] == ["generative", "91.00 ± 1.00 (n=2)", "91.00 (n=1)", "+0.00", "+1.00"]


def test_fidelity_run_end_to_end_without_torch(tmp_path, capsys, monkeypatch):
    """Methods x seeds through main() with both programs faked: the commands, the order, the
    table on stdout and the JSON."""
    monkeypatch.setattr(vr, "check_reference_python",
                        lambda p: (p, {"python": "3", "torch": "0", "torchvision": "0"}))
    monkeypatch.setattr(vr, "prepare_reference_data", lambda files, root: root)
    ran = []

    def run_timed(command, cwd, env, log):
        ours = command[0] == sys.executable
        seed = int(next(c for c in command if c.startswith("--seed=")).split("=")[1])
        ran.append(("ours" if ours else "theirs", seed, command))
        acc = 0.2 + seed / 1000 + (0 if ours else 0.01)
        Path(log).write_text(f'{{"final_average_accuracy": {acc}}}\n' if ours else
                             f"=> Average accuracy over all 10 classes: {acc}\n")
        return vr.Side(command=command, returncode=0, wall_s=1.0, user_s=1.0, sys_s=0.0,
                       peak_rss_gib=0.1, log=str(log))

    monkeypatch.setattr(vr, "run_timed", run_timed)
    envs = []
    real = run_timed

    def run_timed_env(command, cwd, env, log):
        envs.append(env)
        return real(command, cwd, env, log)

    monkeypatch.setattr(vr, "run_timed", run_timed_env)
    out = tmp_path / "fid.json"
    code, err = _main(capsys, f"--reference={_fake_reference(tmp_path)}",
                      f"--data_dir={_fake_mnist(tmp_path)}", "--methods=lwf",
                      "--seeds=12,13", f"--out={out}", "--reference_python=python3",
                      "--reference_threads=1")
    assert code == 0, err
    assert envs[1]["OMP_NUM_THREADS"] == envs[1]["MKL_NUM_THREADS"] == "1"
    assert envs[0].get("OMP_NUM_THREADS") == vr.os.environ.get("OMP_NUM_THREADS")
    assert [(who, seed) for who, seed, _ in ran] == [("ours", 12), ("theirs", 12),
                                                     ("ours", 13), ("theirs", 13)]
    assert "--replay=current" in ran[1][2] and "--method=lwf" in ran[0][2]
    data = json.loads(out.read_text())
    assert data["mode"] == "fidelity" and data["scenario"] == "class"
    assert data["seeds"] == [12, 13] and data["methods"] == ["lwf"]
    assert [r["seed"] for r in data["runs"]] == [12, 13]
    assert data["summary"][0]["difference"]["mean"] == pytest.approx(-1.0)
    assert data["summary"][0]["ours"]["values"] == [21.2, 21.3]


def test_fidelity_flags_refused(tmp_path, capsys, no_process):
    ref, data = _fake_reference(tmp_path), _fake_mnist(tmp_path)
    for flags, message in ((["--methods=buffer"], "unknown buffer"),
                           (["--methods=xdg"], "not in --scenario=class"),
                           (["--methods=lwf", "--seeds=12,x"], "not an integer"),
                           (["--methods=lwf", "--rows=split_mnist"], "two modes"),
                           (["--seeds=12"], "--seeds goes with --methods"),
                           (["--scenario=task"], "--scenario goes with --methods"),
                           (["--methods=lwf", "--scenario=cls"], "--scenario"),
                           (["--reference_threads=0"], "--reference_threads")):
        code, err = _main(capsys, f"--reference={ref}", f"--data_dir={data}", *flags)
        assert code == 2 and err.startswith("error:") and message in err, (flags, err)
        assert "\n" not in err
