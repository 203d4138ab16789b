"""apps.sample: a PNG grid of a saved run's samples, one row per class; refused requests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bir_keras import rundirs
from tests import processes
from tests.apps.test_train_app import FAST
from tests.once import made_once

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
PNG = b"\x89PNG\r\n\x1a\n"


def python_m(module: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def tiny_bir_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(output_dir, export_dir) of a 2-task BI-R run on split digits, trained once per
    pytest session and shared with test_tensorboard.py (which logs every 10 steps)."""
    def make(root: Path) -> None:
        r = python_m("apps.train", *FAST, "--method=bir", "--tasks=2", "--log_every=10",
                     f"--output_dir={root / 'out'}", f"--export_dir={root / 'export'}")
        assert r.returncode == 0, r.stderr[-3000:]

    root = made_once(tmp_path_factory, "tiny_bir_run", make)
    return root / "out", root / "export"


def diverging_ewc_run(tmp_path_factory: pytest.TempPathFactory):
    """(completed process, output_dir, export_dir) of an EWC run whose loss becomes
    non-finite in task 2 (EWC's penalty is zero in task 1; lambda = 1e38 overflows float32
    once the parameters move), started over an earlier ``output_dir`` with --overwrite.
    Run once per session; shared with test_failures.py."""
    def make(root: Path) -> None:
        out = root / "out"
        out.mkdir()  # an earlier run's output (marked: --overwrite may replace it)
        (out / "results.json").write_text("an earlier run")
        rundirs.write_marker(out, rundirs.OUTPUT)
        r = python_m("apps.train", *FAST, "--method=ewc", "--ewc_lambda=1e38", "--fisher_n=50",
                     "--tasks=3", f"--output_dir={out}", f"--export_dir={root / 'export'}",
                     "--overwrite")
        (root / "result.json").write_text(json.dumps([r.returncode, r.stdout, r.stderr]))

    root = made_once(tmp_path_factory, "diverging_ewc_run", make)
    out, exp = root / "out", root / "export"
    rc, stdout, stderr = json.loads((root / "result.json").read_text())
    return subprocess.CompletedProcess([], rc, stdout, stderr), out, exp


def interrupt_at_tensorflow_env(tmp_path: Path) -> dict:
    """An environment in which importing TensorFlow is a Ctrl-C: the process sends itself
    SIGINT there (as a user pressing Ctrl-C while it loads)."""
    fake = tmp_path / "ctrl_c_site"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(5)\n"
        "raise RuntimeError('no Ctrl-C arrived')\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}


def run_with_ctrl_c(tmp_path: Path, module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=interrupt_at_tensorflow_env(tmp_path), capture_output=True,
                          text=True, timeout=120,
                          preexec_fn=processes.sigint_as_a_terminal_sends_it)


@pytest.fixture(scope="module")
def bir_export(tmp_path_factory):
    return tiny_bir_run(tmp_path_factory)[1]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def test_writes_png_grid_one_row_per_class(bir_export, tmp_path):
    from PIL import Image

    out = tmp_path / "grids" / "grid.png"
    # the export dir's saved_model/ subfolder works as well as the export dir
    r = python_m("apps.sample", f"--saved_model={bir_export / 'saved_model'}",
                 "--classes=0,1,3", "--n=4", "--scale=2", f"--out={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes()[:8] == PNG
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["classes"] == [0, 1, 3] and info["labels"] == [0, 1, 3]
    assert info["image_shape"] == [8, 8, 1]  # split digits: 64 inputs -> 8x8
    assert info["dataset_classes"] == [0, 1, 3]  # --keep_label_order
    assert info["class_names"] == ["0", "1", "3"]  # read from the SavedModel
    cell, pad = 8 * 2, 2
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "L"
        # 3 rows (classes) of 4 samples, each 16x16, with 2-pixel padding
        assert im.size == (4 * (cell + pad) + pad, 3 * (cell + pad) + pad)
        assert im.info["Software"] == "bir_keras apps.sample"  # marked as ours
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temp file left


def test_default_classes_are_those_learned(bir_export, tmp_path):
    from PIL import Image

    from apps.sample import SampleError, sample
    from bir_keras.rundirs import PathRefused

    info = sample(str(bir_export), None, 2, str(tmp_path / "all.png"))
    assert info["classes"] == [0, 1, 2, 3]  # 2 tasks of 2 classes learned
    side = 8 * info["scale"]
    with Image.open(tmp_path / "all.png") as im:
        assert im.size == (2 * (side + 2) + 2, 4 * (side + 2) + 2)
    # a grid apps.sample wrote is replaced with --overwrite only
    with pytest.raises(PathRefused, match="pass --overwrite"):
        sample(str(bir_export), None, 3, str(tmp_path / "all.png"))
    info = sample(str(bir_export), [0], 3, str(tmp_path / "all.png"), overwrite=True)
    with Image.open(tmp_path / "all.png") as im:
        assert im.size == (3 * (side + 2) + 2, side + 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.png"]
    with pytest.raises(SampleError):
        sample(str(bir_export), [9], 1, str(tmp_path / "x.png"))


@pytest.mark.parametrize("case", ["text_file", "foreign_png", "ours_without_overwrite"])
def test_existing_out_not_ours_is_never_replaced(bir_export, tmp_path, case):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from tests.apps.test_refusals import no_tensorflow_env

    out = tmp_path / "grid.png"
    if case == "text_file":
        out.write_text("my notes")
    else:
        info = PngInfo()
        if case == "ours_without_overwrite":
            info.add_text("Software", "bir_keras apps.sample")
        Image.new("L", (4, 4)).save(out, pnginfo=info)
    before = out.read_bytes()
    extra = [] if case == "ours_without_overwrite" else ["--overwrite"]
    # refused before TensorFlow loads
    r = subprocess.run([sys.executable, "-m", "apps.sample", f"--saved_model={bir_export}",
                        f"--out={out}", *extra], cwd=ROOT, env=no_tensorflow_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: --out={out} exists")
    assert ("pass --overwrite" if extra == [] else "was not written by apps.sample") in line
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_site", "grid.png"]


def test_n_too_large_for_memory_exit_2_before_loading(bir_export, tmp_path):
    from tests.apps.test_refusals import no_tensorflow_env

    out = tmp_path / "g.png"
    r = subprocess.run([sys.executable, "-m", "apps.sample", f"--saved_model={bir_export}",
                        "--n=100000000", f"--out={out}"], cwd=ROOT,
                       env=no_tensorflow_env(tmp_path), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: --n=100000000: ") and "lower --n" in line
    assert not out.exists()


def test_ctrl_c_exits_130_with_one_line(bir_export, tmp_path):
    # Ctrl-C while TensorFlow loads
    out = tmp_path / "g.png"
    r = run_with_ctrl_c(tmp_path, "apps.sample", f"--saved_model={bir_export}", f"--out={out}")
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [f"interrupted; nothing written ({out} left as it "
                                             "was)"]
    assert not out.exists()


def test_ctrl_c_inside_a_c_callback_exits_130(bir_export, tmp_path, monkeypatch, capsys):
    # the interrupt surfaces where TensorFlow calls back into Python: a SystemError whose
    # context is the KeyboardInterrupt; main turns it into exit 130 and one line
    from absl import flags

    import apps.sample as app

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("returned a result with an exception set") from None

    monkeypatch.setattr(app, "sample", interrupted)
    out = tmp_path / "g.png"
    flags.FLAGS(["apps.sample", f"--saved_model={bir_export}", f"--out={out}"])
    try:
        assert app.main([]) == 130
    finally:
        flags.FLAGS["saved_model"].unparse()
        flags.FLAGS["out"].unparse()
    err = capsys.readouterr().err
    assert err == f"interrupted; nothing written ({out} left as it was)\n"
    assert not out.exists()


@pytest.mark.parametrize("classes", ["0,4", "-1", "x"])
def test_bad_class_ids_exit_2(bir_export, tmp_path, classes):
    out = tmp_path / "bad.png"
    r = python_m("apps.sample", f"--saved_model={bir_export}", f"--classes={classes}",
                 f"--out={out}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert len(error_lines(r.stderr)) == 1
    assert not out.exists()


def test_run_without_generator_exit_2(tmp_path_factory, tmp_path):
    # a run without generative replay (EWC here: its export after task 1) has no `sample`.
    # In this process (what main calls; the refusal comes once the SavedModel has loaded):
    # that main turns a SampleError raised after TensorFlow loads into one error line and
    # exit 2 is test_corrupt_saved_model_one_line_exit_2's (garbage_pb)
    from apps.sample import SampleError, sample

    _, _, exp = diverging_ewc_run(tmp_path_factory)
    out = tmp_path / "none.png"
    with pytest.raises(SampleError, match=r"no `sample` signature.*\(replay=none\)$"):
        sample(str(exp), [0, 1], 8, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_internal_replay_run_refused_without_loading(tmp_path):
    # a run with internal replay generates conv features: refused from run.json alone
    exp = tmp_path / "export"
    (exp / "saved_model").mkdir(parents=True)
    (exp / "saved_model" / "saved_model.pb").write_bytes(b"")
    (exp / "run.json").write_text(json.dumps({
        "tasks_learned": 1, "flags": {"replay": "generative"},
        "protocol": {"experiment": "split_cifar100", "classes_per_task": 10,
                     "input_shape": [1024], "features": True}}))
    out = tmp_path / "f.png"
    r = python_m("apps.sample", f"--saved_model={exp}", f"--out={out}")
    assert r.returncode == 2 and "hidden features" in r.stderr and not out.exists()


def test_missing_saved_model_exit_2(tmp_path):
    r = python_m("apps.sample", f"--saved_model={tmp_path / 'nothing'}")
    assert r.returncode == 2 and error_lines(r.stderr) and "Traceback" not in r.stderr


def test_image_layouts():
    from apps.sample import SampleError, image_layout

    assert image_layout([784]) == (28, 28, 1)
    assert image_layout([1024]) == (32, 32, 1)
    assert image_layout([64]) == (8, 8, 1)
    assert image_layout([32, 32, 3]) == (32, 32, 3)
    with pytest.raises(SampleError):
        image_layout([10])


@pytest.mark.parametrize("case", ["directory", "parent_is_a_file", "n0"])
def test_bad_out_or_n_exit_2_without_writing(bir_export, tmp_path, case):
    (tmp_path / "file").write_text("x")
    out = {"directory": tmp_path, "parent_is_a_file": tmp_path / "file" / "g.png",
           "n0": tmp_path / "g.png"}[case]
    extra = ["--n=0"] if case == "n0" else []
    r = python_m("apps.sample", f"--saved_model={bir_export}", f"--out={out}", *extra)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--out" in line or "--n" in line
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "g.png").exists()


def test_jpg_out_writes_a_marked_jpeg(bir_export, tmp_path):
    # in this process (what apps.sample's main calls with --out, --classes, --n and
    # --overwrite): the command line itself is test_writes_png_grid_one_row_per_class's,
    # and two more programs loading TensorFlow cost ~15 s of the suite
    from PIL import Image

    from apps.sample import sample, written_by_sample
    from bir_keras.rundirs import PathRefused

    out = tmp_path / "grid.jpg"
    sample(str(bir_export), [0, 1], 3, str(out))
    assert out.read_bytes()[:2] == b"\xff\xd8"   # JPEG, not PNG bytes under a .jpg name
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.info["comment"] == b"bir_keras apps.sample"
    assert written_by_sample(out)
    # replaced with --overwrite only (marked as ours), as a PNG is
    with pytest.raises(PathRefused, match="pass --overwrite"):
        sample(str(bir_export), [1], 2, str(out))
    sample(str(bir_export), [1], 2, str(out), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.jpg"]
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size[1] == 64 + 2 * 2


def test_written_by_sample_reads_the_mark_of_each_format(tmp_path):
    import numpy as np
    from PIL import Image

    from apps.sample import write_image, written_by_sample

    pixels = np.zeros((6, 6, 1), np.uint8)
    for name in ("a.png", "b.jpg", "c.JPEG", "d"):
        assert written_by_sample(write_image(pixels, str(tmp_path / name)))
    Image.fromarray(pixels[..., 0]).save(tmp_path / "theirs.jpg", comment=b"mine")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "theirs.png")
    (tmp_path / "short.jpg").write_bytes(b"\xff\xd8\xff\xfe\x00")
    assert not any(written_by_sample(tmp_path / n) for n in ("theirs.jpg", "theirs.png",
                                                             "short.jpg"))


def _no_tf(tmp_path, *args):
    from tests.apps.test_refusals import no_tensorflow_env

    return subprocess.run([sys.executable, "-m", "apps.sample", *args], cwd=ROOT,
                          env=no_tensorflow_env(tmp_path), capture_output=True, text=True,
                          timeout=120)


def _bare_saved_model(folder: Path) -> Path:
    """A folder with an (empty) saved_model.pb and no run.json: its layout is unknown."""
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    return folder


@pytest.mark.parametrize("args, start, words", [
    (["--out={tmp}/g.gif"], "error: --out={tmp}/g.gif: cannot write .gif images",
     ".png, .jpg or .jpeg"),
    (["--out={tmp}/g.txt"], "error: --out={tmp}/g.txt: cannot write .txt images", ".jpeg"),
    (["--n=1000000000000"], "error: --n=1000000000000: ", "lower --n"),
    (["--n=5000", "--out={tmp}/g.jpg"], "error: --n=5000: a row of 5000 samples",
     "more than a JPEG can hold (65535); lower --n (at most 992)"),
    (["--scale=1000000000"], "error: --scale=1000000000: one 8x8 sample",
     "lower --scale"),
    (["--scale=5000", "--classes=0,1,2,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3"],
     "error: --scale=5000: ", "lower --scale"),
    (["--n=-3"], "error: --n=-3: ", "at least 1"),
    (["--scale=-1"], "error: --scale=-1: ", "0 (auto) or positive"),
    (["--out={tmp}/" + "x" * 300 + ".png"], "error: --out={tmp}/xxx", "(File name too long)"),
    (["--out={tmp}/" + "x" * 300 + "/g.png"], "error: --out={tmp}/xxx", "(File name too long)"),
])
def test_absurd_values_and_bad_out_refused_fast_before_tensorflow(bir_export, tmp_path, args,
                                                                  start, words):
    import time

    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("--out=") for a in args):
        args.append(f"--out={tmp_path / 'g.png'}")
    began = time.time()
    r = _no_tf(tmp_path, f"--saved_model={bir_export}", *args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(start.format(tmp=tmp_path)) and words in line, line
    assert time.time() - began < 10   # no TensorFlow (the fake one raises), no drawing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_site"]


def test_absurd_n_refused_without_run_json_before_tensorflow(tmp_path):
    # no run.json: the layout is unknown, but no sample is smaller than one pixel
    model = _bare_saved_model(tmp_path / "model")
    r = _no_tf(tmp_path, f"--saved_model={model}", "--classes=0", "--n=100000000000",
               f"--out={tmp_path / 'g.png'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: --n=100000000000: a row of") and "lower --n" in line


@pytest.mark.parametrize("run_json, words", [
    ("{not json", "not JSON"), ("[1, 2]", "not a JSON object"),
    ('{"tasks_learned": 0, "protocol": {"classes_per_task": 2}}',
     "this run has not completed a task yet"),
    ('{"tasks_learned": "abc", "protocol": {"classes_per_task": 2}}',
     "tasks_learned is 'abc', not a count"),
    ('{"tasks_learned": 2, "protocol": null}', "its protocol is not a JSON object"),
    ('{"tasks_learned": 2, "protocol": {"classes_per_task": 2, "input_shape": "64"}}',
     "protocol.input_shape is '64', not a shape"),
    ("\udcff", "not JSON")])
def test_bad_run_json_exit_2_before_tensorflow(tmp_path, run_json, words):
    exp = tmp_path / "export"
    exp.mkdir()
    _bare_saved_model(exp / "saved_model")
    (exp / "run.json").write_bytes(run_json.encode("utf-8", "surrogateescape"))
    r = _no_tf(tmp_path, f"--saved_model={exp}", f"--out={tmp_path / 'g.png'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {exp / 'run.json'}: ")
    assert words in line


def test_huge_class_id_without_run_json_exit_2_before_tensorflow(tmp_path):
    model = _bare_saved_model(tmp_path / "model")
    r = _no_tf(tmp_path, f"--saved_model={model}", "--classes=0,4294967296",
               f"--out={tmp_path / 'g.png'}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [
        "error: class ids must be >= 0 and below 2^31, got [0, 4294967296]"]


# no_variables (another way a SavedModel fails to load) with --run-slow
@pytest.mark.parametrize("case", ["garbage_pb", pytest.param("no_variables", marks=pytest.mark.slow),
                                  "export_dir_is_a_file"])
def test_corrupt_saved_model_one_line_exit_2(bir_export, tmp_path, case):
    import shutil

    exp = tmp_path / "export"
    if case == "export_dir_is_a_file":
        exp.write_text("not a folder")
    else:
        shutil.copytree(bir_export, exp)
        if case == "garbage_pb":
            (exp / "saved_model" / "saved_model.pb").write_bytes(b"garbage")
        else:
            shutil.rmtree(exp / "saved_model" / "variables")
    out = tmp_path / "g.png"
    r = python_m("apps.sample", f"--saved_model={exp}", "--classes=0", f"--out={out}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    start = f"error: --saved_model={exp}: no SavedModel" if case == "export_dir_is_a_file" \
        else f"error: cannot load the SavedModel in {exp / 'saved_model'}: "
    assert line.startswith(start), line
    assert not out.exists()


# the program around the signature's refusal (about 9 s); the signature itself is tested in
# tests/test_export_signatures.py
@pytest.mark.slow
def test_class_ids_refused_by_the_signature_without_run_json(bir_export, tmp_path):
    # no run.json to check the ids against: the SavedModel's sample signature refuses them
    model = tmp_path / "model"
    import shutil

    shutil.copytree(bir_export / "saved_model", model)
    out = tmp_path / "g.png"
    r = python_m("apps.sample", f"--saved_model={model}", "--classes=1,7", f"--out={out}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: class ids [1, 7] refused by the SavedModel: class_ids [7] "
                           "not learned: this model has learned 2 task(s), class ids 0 to 3")
    assert not out.exists()


@pytest.mark.parametrize("err", ["ENOSPC", "EROFS", "EACCES", "ENAMETOOLONG"])
def test_write_failure_exit_1_names_path_and_problem(bir_export, tmp_path, monkeypatch,
                                                     capsys, err):
    import errno

    from absl import flags

    import apps.sample as app
    from bir_keras import appfiles

    code = getattr(errno, err)

    def full(path, write, check=None):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(appfiles, "write_file", full)
    out = tmp_path / "g.png"
    flags.FLAGS(["apps.sample", f"--saved_model={bir_export}", f"--out={out}", "--n=2"])
    try:
        assert app.main([]) == 1
    finally:
        for name in ("saved_model", "out", "n"):
            flags.FLAGS[name].unparse()
    err_text = capsys.readouterr().err
    assert err_text == (f"error: --out={out}: cannot write it ({os.strerror(code)}); nothing "
                        "was written\n")
    assert "memory" not in err_text and not out.exists()


@pytest.mark.parametrize("err", ["EROFS", "EACCES", "ENOSPC"])
def test_out_in_a_folder_that_cannot_be_written_refused(tmp_path, monkeypatch, err):
    # a read-only file system, a folder without write permission (root passes chmod, so
    # the probe's error is injected), a full disk: refused before any work, naming why
    import errno
    import tempfile

    from apps.sample import check_out

    code = getattr(errno, err)

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(rundirs.PathRefused) as e:
        check_out(str(tmp_path / "sub" / "g.jpg"), False)
    assert str(e.value) == (f"--out={tmp_path / 'sub' / 'g.jpg'}: cannot write in {tmp_path} "
                            f"({os.strerror(code)})")
