"""TensorBoard logs of apps.train: loss terms, accuracies, replay images and HParams land in
the event files, and a real TensorBoard server serves them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.apps.test_sample import ENV, ROOT, tiny_bir_run


@pytest.fixture(scope="module")
def bir_logs(tmp_path_factory):
    out, _ = tiny_bir_run(tmp_path_factory)
    return out


def accumulator(logdir):
    from tensorboard.backend.event_processing import event_accumulator as ea

    # TF2 writes scalars and images as tensor summaries; keep all of them (0 = no limit)
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
    return acc.Reload()


def test_event_files_hold_losses_accuracies_images_hparams(bir_logs):
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = accumulator(bir_logs / "tensorboard")
    tags = set(acc.Tags()["tensors"])
    assert {"loss/total", "loss/class_current", "loss/class_replay", "loss/recon_current",
            "accuracy/task1", "accuracy/task2", "accuracy/average", "accuracy_curves",
            "about_this_run", "replay/000_0", "replay/003_3"} <= tags, tags

    res = json.loads((bir_logs / "results.json").read_text())
    # a loss point every --log_every=10 steps and at the end of each 25-step task
    steps = [e.step for e in acc.Tensors("loss/total")]
    assert steps == [10, 20, 25, 35, 45, 50]
    assert "loss/class_replay" in tags and acc.Tensors("loss/class_replay")[0].step == 35
    avg = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors("accuracy/average")]
    assert [s for s, _ in avg] == [1, 2]
    assert [v for _, v in avg] == pytest.approx(res["average_accuracy"], abs=1e-6)
    task1 = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("accuracy/task1")]
    assert task1 == pytest.approx([row[0] for row in res["accuracy_matrix"]], abs=1e-6)

    # one labelled grid per dataset class ([width, height, PNG]) after each task from the
    # one that learned it: 8 samples of 8x8 pixels, shown 3x larger with 2-pixel padding
    replay = sorted(t for t in tags if t.startswith("replay/"))
    assert replay == ["replay/000_0", "replay/001_1", "replay/002_2", "replay/003_3"]
    for k, tag in enumerate(replay):
        meta = acc.SummaryMetadata(tag)
        assert meta.plugin_data.plugin_name == "images"
        assert f"samples of dataset class {k} ({k}), learned in task {k // 2 + 1}" in \
            meta.summary_description
        events = acc.Tensors(tag)
        assert [e.step for e in events] == ([1, 2] if k < 2 else [2])
        for e in events:
            arr = tf.make_ndarray(e.tensor_proto)
            assert arr.shape == (3,) and arr[2][:8] == b"\x89PNG\r\n\x1a\n"
            assert [int(arr[0]), int(arr[1])] == [8 * (24 + 2) + 2, 24 + 4]

    # the accuracy chart (unsmoothed) after each task, and the card saying what the axes are
    assert [e.step for e in acc.Tensors("accuracy_curves")] == [1, 2]
    assert "number of tasks learned" in acc.SummaryMetadata("accuracy_curves").summary_description
    [about] = acc.Tensors("about_this_run")
    text = tf.make_ndarray(about.tensor_proto).item().decode()
    assert "x axis = training iteration" in text and "number\n  of tasks learned" in text
    assert "bir, split_digits, class-IL, seed 0" in text

    content = acc.PluginTagToContent("hparams")
    [tag] = content
    data = plugin_data_pb2.HParamsPluginData.FromString(content[tag])
    assert data.WhichOneof("data") == "session_start_info"
    hp = data.session_start_info.hparams
    assert hp["experiment"].string_value == "split_digits"
    assert hp["brain_inspired"].bool_value and hp["iters"].number_value == 25
    assert hp["method"].string_value == "bir"  # the --method shorthand, not "generative"
    assert data.session_start_info.group_name.startswith("split_digits-class-bir-seed0-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: bytes | None = None):
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"} if data else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def tensorboard_server(bir_logs, tmp_path):
    port = free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={bir_logs}", f"--port={port}",
         "--host=127.0.0.1"], cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own group: the data server it starts goes with it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {(tmp_path / 'tensorboard.log').read_text()[-2000:]}")
            try:
                if get_json(f"{base}/data/runs"):  # [] until the first load finished
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.time() > deadline:
                pytest.fail("tensorboard did not serve the run within 60 s")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_real_tensorboard_serves_the_run(tensorboard_server, bir_logs):
    base = tensorboard_server
    res = json.loads((bir_logs / "results.json").read_text())
    assert get_json(f"{base}/data/runs") == ["tensorboard"]
    listing = get_json(f"{base}/data/plugins_listing")
    assert all(listing[p]["enabled"] for p in ("scalars", "images", "hparams"))
    tags = get_json(f"{base}/data/plugin/scalars/tags")["tensorboard"]
    assert {"loss/total", "loss/class_current", "accuracy/task1", "accuracy/average"} <= set(tags)

    q = urllib.parse.urlencode({"run": "tensorboard", "tag": "accuracy/average"})
    series = get_json(f"{base}/data/plugin/scalars/scalars?{q}")  # [[wall time, step, value]]
    assert [s for _, s, _ in series] == [1, 2]
    assert [v for _, _, v in series] == pytest.approx(res["average_accuracy"], abs=1e-6)

    images = get_json(f"{base}/data/plugin/images/tags")["tensorboard"]
    assert {"replay/000_0", "replay/003_3", "accuracy_curves"} <= set(images)
    assert "dataset class 3 (3)" in images["replay/003_3"]["description"]
    q = urllib.parse.urlencode({"run": "tensorboard", "tag": "replay/000_0", "sample": 0})
    grids = get_json(f"{base}/data/plugin/images/images?{q}")
    assert [g["step"] for g in grids] == [1, 2]
    texts = get_json(f"{base}/data/plugin/text/tags")["tensorboard"]
    assert "about_this_run" in texts

    body = json.dumps({"experimentName": ""}).encode()
    experiment = get_json(f"{base}/data/plugin/hparams/experiment", body)
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"experiment", "method", "brain_inspired", "lr", "seed"} <= names
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert "accuracy/average" in metrics
