"""Distributed training computes what one device computes.

MirroredStrategy over two logical CPU devices, and MultiWorkerMirroredStrategy with two
worker processes on localhost, against the default strategy with the same global batch and
seed. Every run is ``python -m apps.train`` in a subprocess: logical devices and TF_CONFIG
must be set before TensorFlow initialises, which a pytest process has already done.

Tolerances. All randomness is drawn once per step in cross-replica context, so the replicas
see the same numbers as a single device; what differs is the order of floating-point sums
(each replica sums its half of the batch, then the gradients are all-reduced). Measured on
these short runs (2 tasks x 30 iterations, 2 x 20 for the workers): accuracy matrices
identical, per-task mean losses within 3e-8 (relative), every checkpointed variable (weights,
Adam slots, SI's path integral, importance and anchors, the frozen BI-R copy, the RNG state)
within 6.2e-7 of its largest magnitude. We allow 1e-5 for losses and 1e-4 for variables
(over 100x margin: rounding differences may grow during training, but a wrong reduction,
e.g. gradients summed twice, unscaled losses or SI fed with one replica's gradients, is off
by order 1), and at most one test sample per task for accuracies (an input whose two top
logits lie within rounding of each other may flip; none did).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("TF_CONFIG", None)
TIMEOUT_S = 300
BASE = ["--experiment=split_digits", "--scenario=class", "--tasks=2", "--batch=32",
        "--fc_units=40", "--z_dim=8", "--keep_label_order", "--log_every=10"]
METHODS = {
    "none": ["--method=none"],
    # a large c, so that the penalty (and SI's path integral of its gradient) matters
    "si": ["--method=si", "--si_c=10"],
    "bir": ["--method=bir"],
    # the memory's variables grow after each task (first dimension unknown)
    "buffer": ["--method=buffer", "--budget=5"],
}
LOSS_RTOL = 1e-5
VAR_RTOL = 1e-4


class Run:
    """One apps.train subprocess with its own output and export directories."""

    def __init__(self, root: Path, name: str, args: list[str], env: dict | None = None):
        self.out, self.export = root / name / "out", root / name / "export"
        self.log = root / f"{name}.log"
        self.name = name
        with open(self.log, "w") as log:
            # a session of its own, so that a hung run can be stopped with its children
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "apps.train", *args, f"--output_dir={self.out}",
                 f"--export_dir={self.export}"],
                cwd=ROOT, env=env or ENV, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def results(self) -> dict:
        return json.loads((self.out / "results.json").read_text())

    def checkpoint(self) -> dict[str, np.ndarray]:
        """Every floating-point variable of the exported training checkpoint."""
        import tensorflow as tf

        reader = tf.train.load_checkpoint(str(self.export / "checkpoint" / "ckpt"))
        out = {}
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                out[key] = value
        return out


def wait_all(runs: list[Run], timeout: float = TIMEOUT_S) -> None:
    """Wait for every run; on a timeout or a failed run, kill the others and fail."""
    deadline = time.monotonic() + timeout
    try:
        pending = list(runs)
        while pending:
            for r in list(pending):
                code = r.proc.poll()
                if code is None:
                    continue
                pending.remove(r)
                if code != 0:
                    pytest.fail(f"{r.name} exited with {code}:\n{r.tail()}")
            if pending and time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s: {[r.name for r in pending]}\n"
                            + "\n".join(r.tail() for r in pending))
            time.sleep(0.2)
    finally:
        for r in runs:
            r.kill()


def _test_sizes() -> list[int]:
    """Test samples per task of the protocol these runs use."""
    from bir_keras.data.protocols import make_protocol

    p = make_protocol("split_digits", "class", tasks=2, keep_label_order=True)
    return [len(p.task(j).y_test) for j in range(p.num_tasks)]


def assert_same_training(dist: Run, single: Run) -> None:
    """Accuracy matrices, per-task mean losses and all checkpointed variables agree."""
    a, b = dist.results(), single.results()
    assert a["global_step"] == b["global_step"]
    ma = np.array(a["accuracy_matrix"], dtype=float)
    mb = np.array(b["accuracy_matrix"], dtype=float)
    assert np.array_equal(np.isnan(ma), np.isnan(mb))
    n_test = np.array(_test_sizes(), dtype=float)
    # at most one test sample per task may flip (see the module docstring)
    diff = np.nan_to_num(np.abs(ma - mb))
    assert np.all(diff <= 1.0 / n_test[None, :] + 1e-12), (ma, mb)
    for la, lb in zip(a["losses"], b["losses"]):
        assert la.keys() == lb.keys()
        for k in la:
            assert la[k] == pytest.approx(lb[k], rel=LOSS_RTOL, abs=1e-7), (k, la[k], lb[k])
    va, vb = dist.checkpoint(), single.checkpoint()
    assert va.keys() == vb.keys()
    worst = 0.0
    for k, x in va.items():
        if x.size == 0:
            continue
        scale = max(float(np.max(np.abs(vb[k]))), 1e-3)
        rel = float(np.max(np.abs(x - vb[k]))) / scale
        worst = max(worst, rel)
        assert rel <= VAR_RTOL, f"{k}: differs by {rel:.3g} of its scale"
    print(f"largest variable difference: {worst:.3g} of its scale")


@pytest.mark.parametrize("method", list(METHODS))
def test_mirrored_two_logical_cpus_matches_default(tmp_path, method):
    args = [*BASE, "--iters=30", *METHODS[method]]
    # XLA compiles for one device: over several replicas the step runs without it (and an
    # explicit --jit_compile is ignored with a warning), so compare with one device, no XLA
    single = Run(tmp_path, "default", [*args, "--nojit_compile"])
    extra = ["--jit_compile"] if method == "none" else []
    mirrored = Run(tmp_path, "mirrored",
                   [*args, "--strategy=mirrored", "--num_logical_cpus=2", *extra])
    wait_all([single, mirrored])
    assert_same_training(mirrored, single)
    if extra:
        assert "--jit_compile ignored" in mirrored.log.read_text()
    ckpt = mirrored.checkpoint()
    if method == "si":
        # SI's state was updated in the step (after_apply, all-reduced gradients)
        w = [v for k, v in ckpt.items() if k.startswith("reg0_si_w/")]
        assert w and max(float(np.abs(v).max()) for v in w) > 0
    if method == "bir":
        assert any(k.startswith("prev_model/") for k in ckpt)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_multi_worker_two_processes_chief_exports(tmp_path):
    args = [*BASE, "--iters=20", *METHODS["bir"]]
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for i in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": i}})}
        workers.append(Run(tmp_path, f"worker{i}", [*args, "--strategy=multi_worker"], env))
    single = Run(tmp_path, "default", [*args, "--nojit_compile"])
    wait_all([*workers, single])
    chief, other = workers
    assert (chief.export / "saved_model" / "saved_model.pb").exists()
    assert (chief.export / "run.json").exists()
    assert (chief.out / "results.json").exists()
    assert json.loads((chief.export / "run.json").read_text())["tasks_learned"] == 2
    # the other worker trained too, but wrote nothing (no export, no output, no scratch)
    assert not other.export.exists() and not other.out.exists()
    assert not [p for p in other.out.parent.glob(".*") if ".tmp-" in p.name]
    assert_same_training(chief, single)


@pytest.mark.parametrize("tf_config", [None, "{not json", json.dumps(
    {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}})])
def test_multi_worker_refuses_a_bad_tf_config(tmp_path, tf_config):
    env = dict(ENV)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    r = subprocess.run([sys.executable, "-m", "apps.train", *BASE, "--iters=5",
                        "--strategy=multi_worker", f"--output_dir={tmp_path / 'out'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert "TF_CONFIG" in line
    assert not (tmp_path / "out").exists()
