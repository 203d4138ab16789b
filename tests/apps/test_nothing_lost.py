"""Nothing a user made is lost when a run continues: apps.evaluate_generator's scores of an
export survive its continuation (kept under the task they describe)."""

import json
import shutil

from bir_keras import rundirs
from tests.apps.test_refusals import train
from tests.apps.test_sample import tiny_bir_run
from tests.apps.test_train_app import FAST


def test_quality_scores_survive_a_continued_export(tmp_path, tmp_path_factory):
    # the session's tiny 2-task BI-R run, its export copied: scored by evaluate_generator
    exp = tmp_path / "exp"
    shutil.copytree(tiny_bir_run(tmp_path_factory)[1], exp, symlinks=True)
    # what apps.evaluate_generator leaves: quality.json in the export, listed by its marker
    scores = json.dumps({"n": 20, "fid": 1.5}).encode()
    (exp / "quality.json").write_bytes(scores)
    rundirs.write_marker(exp, rundirs.EXPORT)
    r = train(*FAST, "--method=bir", "--log_every=10", f"--export_dir={exp}", "--tasks=3",
              f"--output_dir={tmp_path / 'o2'}", f"--resume_from={exp}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kept as quality-after-task2.json" in r.stdout
    # scores of the model after task 2, kept in the later export; none for the new model
    assert (exp / "quality-after-task2.json").read_bytes() == scores
    assert not (exp / "quality.json").exists()
    assert json.loads((exp / "run.json").read_text())["tasks_learned"] == 3
    # the export is still one the package may replace (the kept file is one of its own)
    assert rundirs.foreign_entries(exp, rundirs.EXPORT) == []
    # a file of the user's of a similar name is still foreign
    shutil.copy(exp / "quality-after-task2.json", exp / "quality-after-task2.json.bak")
    assert rundirs.foreign_entries(exp, rundirs.EXPORT) == ["quality-after-task2.json.bak"]
