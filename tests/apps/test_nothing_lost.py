"""Nothing a user made is lost when a run continues: apps.evaluate_generator's scores of an
export survive its continuation (kept under the task they describe)."""

import json
import shutil

from bir_keras import rundirs
from tests.apps.test_refusals import train
from tests.apps.test_train_app import FAST


def test_quality_scores_survive_a_continued_export(tmp_path):
    exp = tmp_path / "exp"
    base = [*FAST, "--method=none", f"--export_dir={exp}"]
    r = train(*base, "--tasks=1", f"--output_dir={tmp_path / 'o1'}")
    assert r.returncode == 0, r.stderr[-2000:]
    # what apps.evaluate_generator leaves: quality.json in the export, listed by its marker
    scores = json.dumps({"n": 20, "fid": 1.5}).encode()
    (exp / "quality.json").write_bytes(scores)
    rundirs.write_marker(exp, rundirs.EXPORT)
    r = train(*base, "--tasks=2", f"--output_dir={tmp_path / 'o2'}", f"--resume_from={exp}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kept as quality-after-task1.json" in r.stdout
    # scores of the model after task 1, kept in the later export; none for the new model
    assert (exp / "quality-after-task1.json").read_bytes() == scores
    assert not (exp / "quality.json").exists()
    assert json.loads((exp / "run.json").read_text())["tasks_learned"] == 2
    # the export is still one the package may replace (the kept file is one of its own)
    assert rundirs.foreign_entries(exp, rundirs.EXPORT) == []
    # a file of the user's of a similar name is still foreign
    shutil.copy(exp / "quality-after-task1.json", exp / "quality-after-task1.json.bak")
    assert rundirs.foreign_entries(exp, rundirs.EXPORT) == ["quality-after-task1.json.bak"]
