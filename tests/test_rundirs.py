"""bir_keras.rundirs: what a run may replace, the default export path, resume checks."""

import os

import pytest

from bir_keras import rundirs
from bir_keras.rundirs import PathRefused


def test_only_marked_directories_of_the_kind_holding_only_run_files_are_replaceable(tmp_path):
    out = tmp_path / "out"
    rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=False)  # absent: fine
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(PathRefused, match="no .bir_keras marker"):
        rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=True)
    rundirs.write_marker(out, rundirs.OUTPUT)
    with pytest.raises(PathRefused, match="pass --overwrite"):
        rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=False)
    rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=True)
    with pytest.raises(PathRefused, match="marked as a bir_keras output directory"):
        rundirs.replaceable(out, rundirs.EXPORT, "--export_dir", overwrite=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PathRefused, match=r"holds files a run does not write \(notes.txt\)"):
        rundirs.replaceable(out, rundirs.OUTPUT, "--output_dir", overwrite=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PathRefused, match="not a directory"):
        rundirs.replaceable(f, rundirs.OUTPUT, "--output_dir", overwrite=True)


def test_free_sibling_skips_foreign_directories(tmp_path):
    p = tmp_path / "e-interrupted"
    assert rundirs.free_sibling(p, rundirs.EXPORT) == p
    p.mkdir()
    (p / "thesis.txt").write_text("x")
    assert rundirs.free_sibling(p, rundirs.EXPORT) == tmp_path / "e-interrupted-2"
    mine = tmp_path / "e-interrupted-2"
    mine.mkdir()
    rundirs.write_marker(mine, rundirs.EXPORT)
    assert rundirs.free_sibling(p, rundirs.EXPORT) == mine


def test_default_export_dir_keeps_the_whole_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = rundirs.default_export_dir("runs/s0/bir")
    b = rundirs.default_export_dir("runs/s1/bir")
    assert a == rundirs.Path("saved_models/runs/s0/bir") and a != b
    outside = rundirs.default_export_dir("/elsewhere/x/bir")
    assert outside == rundirs.Path("saved_models/elsewhere/x/bir")


def test_nested_paths_and_writability(tmp_path):
    assert rundirs.nested(tmp_path / "a", tmp_path / "a" / "b")
    assert not rundirs.nested(tmp_path / "a", tmp_path / "ab")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathRefused, match="cannot create"):
        rundirs.check_writable(tmp_path / "file" / "sub" / "out", "--output_dir")
    before = sorted(tmp_path.iterdir())
    rundirs.check_writable(tmp_path / "new" / "deeper" / "out", "--output_dir")
    assert sorted(tmp_path.iterdir()) == before  # nothing created, the probe is gone
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PathRefused, match="cannot write in"):
                rundirs.check_writable(ro / "out", "--output_dir")
        finally:
            ro.chmod(0o700)


def test_resume_flags_must_match_except_what_may_change():
    old = {"replay": "generative", "fc_units": 400, "tasks": 2, "lr": 0.001, "seed": 0}
    rundirs.check_resume_flags("r", old, {**old, "tasks": 5, "lr": 1e-3, "method": "bir",
                                          "new_field": 1})
    with pytest.raises(PathRefused, match="--fc_units=400, this run has --fc_units=64"):
        rundirs.check_resume_flags("r", old, {**old, "fc_units": 64})
    with pytest.raises(PathRefused, match="--replay=generative, this run has --replay=none"):
        rundirs.check_resume_flags("r", old, {**old, "replay": "none"})


@pytest.mark.parametrize("text, kwargs, why", [
    ("{x", {}, "not JSON: "),
    ("[1]", {}, "not a JSON object"),
    ('{"flags": []}', {}, "its flags are not a JSON object"),
    ("{}", {"need": ("flags",)}, "its flags are not a JSON object"),
    ('{"protocol": 3}', {}, "its protocol is not a JSON object"),
    ('{"tasks_learned": "2"}', {"counts": {"tasks_learned": 0}}, "tasks_learned is '2', not a "
     "count"),
    ('{"protocol": {}}', {"need": ("protocol.num_tasks",), "counts": {"protocol.num_tasks": 1},
                          "count_words": "a count of tasks"},
     "protocol.num_tasks is None, not a count of tasks"),
    ('{"protocol": {"input_shape": [0]}}', {}, "protocol.input_shape is [0], not a shape"),
])
def test_a_run_record_that_apps_train_did_not_write_is_named(tmp_path, text, kwargs, why):
    # the one reader of run.json: apps.sample, apps.evaluate_generator and --resume_from
    # each name its errors their own way from it
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(rundirs.RunRecordError) as e:
        rundirs.read_run_record(path, **kwargs)
    assert e.value.why.startswith(why) and not e.value.cannot_read
    assert str(e.value) == f"{path}: not a run record of apps.train ({e.value.why})"


def test_a_run_record_may_lack_what_is_not_needed(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"protocol": {}}')
    assert rundirs.read_run_record(path, counts={"tasks_learned": 0,
                                                 "protocol.classes_per_task": 0}) == {
        "protocol": {}}


def test_an_unreadable_or_malformed_resume_record_is_refused(tmp_path, monkeypatch):
    (tmp_path / "run.json").write_text('{"flags": {}}')
    with pytest.raises(PathRefused, match=r"^--resume_from=.*: unreadable run.json "
                                          r"\(tasks_learned is None, not a count\)$"):
        rundirs.read_resume_record(str(tmp_path))
    (tmp_path / "run.json").write_text('{"flags": {}, "tasks_learned": 1}')
    assert rundirs.read_resume_record(str(tmp_path))["tasks_learned"] == 1

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "read_text", denied)
    with pytest.raises(PathRefused, match=r"unreadable run.json \(Permission denied\)$"):
        rundirs.read_resume_record(str(tmp_path))
