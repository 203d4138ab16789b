"""Distributed training computes what one device computes.

MirroredStrategy over two logical CPU devices, and MultiWorkerMirroredStrategy with two
worker processes on localhost, against the default strategy with the same global batch and
seed. Logical devices and TF_CONFIG must be set before TensorFlow initialises, which a pytest
process has already done, so the distributed runs run in subprocesses: the two workers are
each ``python -m apps.train``; the four MirroredStrategy runs share one process (one
TensorFlow start instead of four), whose first run is the command line ``apps.train
--strategy=mirrored --num_logical_cpus=2`` itself and whose others call
``experiment.run`` with a MirroredStrategy as apps.train does. All three subprocesses start
together (they share the cores), and the single-device reference runs, which need no
special device setup, run in the pytest process (``experiment.run`` with the same
``Config``) while they train; the multi-worker test compares with the BI-R reference of the
mirrored test (the same settings).

Tolerances. All randomness is drawn once per step in cross-replica context, so the replicas
see the same numbers as a single device; what differs is the order of floating-point sums
(each replica sums its half of the batch, then the gradients are all-reduced). Measured on
short runs (2 tasks x 30 iterations, 2 x 20 for the workers): accuracy matrices identical,
per-task mean losses within 3e-8 (relative), every checkpointed variable (weights, Adam
slots, SI's path integral, importance and anchors, the frozen BI-R copy, the RNG state)
within 6.2e-7 of its largest magnitude; on these runs (2 x 20 each, references in the pytest
process) within 1.4e-6. We allow 1e-5 for losses and 1e-4 for variables (about 100x margin:
rounding differences may grow during training, but a wrong
reduction, e.g. gradients summed twice, unscaled losses or SI fed with one replica's
gradients, is off by order 1), and at most one test sample per task for accuracies (an input
whose two top logits lie within rounding of each other may flip; none did).
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
ITERS = 20
BASE = ["--experiment=split_digits", "--scenario=class", "--tasks=2", "--batch=32",
        "--fc_units=40", "--z_dim=8", "--keep_label_order", "--log_every=10",
        f"--iters={ITERS}"]
# the same settings as Config fields (what apps.train makes of BASE)
BASE_CONFIG = dict(experiment="split_digits", scenario="class", tasks=2, batch=32, fc_units=40,
                   z_dim=8, keep_label_order=True, log_every=10, iters=ITERS)
METHODS = {
    "none": {},
    # a large c, so that the penalty (and SI's path integral of its gradient) matters
    "si": {"si_c": 10.0},
    "bir": {},
    # the memory's variables grow after each task (first dimension unknown)
    "buffer": {"budget": 5},
}
# the method run through the command line (with --jit_compile, which is ignored)
CLI_METHOD = "none"
LOSS_RTOL = 1e-5
VAR_RTOL = 1e-4


def method_argv(method: str) -> list[str]:
    return [f"--method={method}", *(f"--{k}={v}" for k, v in METHODS[method].items())]


def method_config(method: str, **extra) -> dict:
    """``Config`` keyword arguments of BASE + ``method_argv(method)``, as apps.train makes
    them (the method's settings, explicit flags winning), plus ``extra``."""
    from bir_keras.config import method_settings

    return {**BASE_CONFIG, "method": method, **method_settings(method, "split_digits", "class"),
            **METHODS[method], **extra}


class Outputs:
    """The output and export directories of one run."""

    def __init__(self, root: Path, name: str):
        self.out, self.export = root / name / "out", root / name / "export"
        self.name = name

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


class Proc:
    """One subprocess in a session of its own, its output in ``<root>/<name>.log``."""

    def __init__(self, root: Path, name: str, cmd: list[str], env: dict | None = None):
        self.log = root / f"{name}.log"
        self.name = name
        with open(self.log, "w") as log:
            # a session of its own, so that a hung run can be stopped with its children
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env or ENV, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


class Run(Outputs, Proc):
    """One ``python -m apps.train`` subprocess with its own output and export directories."""

    def __init__(self, root: Path, name: str, args: list[str], env: dict | None = None):
        Outputs.__init__(self, root, name)
        Proc.__init__(self, root, name, [sys.executable, "-m", "apps.train", *args,
                                         f"--output_dir={self.out}",
                                         f"--export_dir={self.export}"], env)


def wait_all(procs: list[Proc], timeout: float = TIMEOUT_S) -> None:
    """Wait for every process; on a timeout or a failed one, kill the others and fail."""
    deadline = time.monotonic() + timeout
    try:
        pending = list(procs)
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
        for r in procs:
            r.kill()


# The MirroredStrategy runs, in one process: argv[1] is a JSON list of jobs. The first is
# apps.train's command line (its --num_logical_cpus=2 sets up the devices the others use
# too); each other one is {"name", "config", "out", "export"}: experiment.run with the
# Config and a fresh MirroredStrategy, as apps.train runs it.
MIRRORED_DRIVER = r"""
import json, runpy, sys
first, *jobs = json.loads(sys.argv[1])
sys.argv = ["apps.train", *first]
try:
    runpy.run_module("apps.train", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code != 0:
        raise
import tensorflow as tf
from bir_keras import distribute, experiment
from bir_keras.config import Config
for i, job in enumerate(jobs, 1):
    print("=== " + job["name"], flush=True)
    # collective ops are cached process-wide by key: each strategy gets keys of its own
    # (TensorFlow's hook for several strategies in one process; the first one had base 0)
    tf.distribute.MirroredStrategy._collective_key_base = 100000 * i
    strategy, _ = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    experiment.run(Config(**job["config"]), job["out"], export_dir=job["export"],
                   strategy=strategy)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(method)``: the single-device run of ``method`` (no XLA: over several
    replicas the step runs without it), in this process, once per module."""
    from bir_keras import experiment
    from bir_keras.config import Config

    root = tmp_path_factory.mktemp("reference")
    done: dict[str, Outputs] = {}

    def get(method: str) -> Outputs:
        if method not in done:
            ref = Outputs(root, method)
            experiment.run(Config(**method_config(method, jit_compile=False)), str(ref.out),
                           export_dir=str(ref.export), verbose=False)
            done[method] = ref
        return done[method]

    return get


def _start_workers(root: Path) -> list[Run]:
    """Two MultiWorkerMirroredStrategy workers of BI-R on localhost (the first is the chief)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    try:
        for i in range(2):
            env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                    "task": {"type": "worker", "index": i}})}
            workers.append(Run(root, f"worker{i}", [*BASE, *method_argv("bir"),
                                                    "--strategy=multi_worker"], env))
    except BaseException:
        for w in workers:
            w.kill()
        raise
    return workers


@pytest.fixture(scope="module")
def distributed(tmp_path_factory, reference):
    """Every distributed run, started together so that they share the cores: the
    MirroredStrategy runs in one subprocess and the two workers, while the references train
    here. {"mirrored": runs by method, "log": the mirrored process's log, "workers": the
    two workers}."""
    root = tmp_path_factory.mktemp("distributed")
    runs = {m: Outputs(root, m) for m in METHODS}
    cli = runs[CLI_METHOD]
    # XLA compiles for one device: over several replicas the step runs without it and an
    # explicit --jit_compile is ignored with a warning
    first = [*BASE, *method_argv(CLI_METHOD), "--strategy=mirrored", "--num_logical_cpus=2",
             "--jit_compile", f"--output_dir={cli.out}", f"--export_dir={cli.export}"]
    jobs = [{"name": m, "config": method_config(m, strategy="mirrored"), "out": str(r.out),
             "export": str(r.export)} for m, r in runs.items() if m != CLI_METHOD]
    procs = [Proc(root, "mirrored", [sys.executable, "-c", MIRRORED_DRIVER,
                                     json.dumps([first, *jobs])])]
    try:
        procs += _start_workers(root)
        for m in METHODS:
            reference(m)
    except BaseException:
        for r in procs:
            r.kill()
        raise
    wait_all(procs)
    return {"mirrored": runs, "log": procs[0].log.read_text(errors="replace"),
            "workers": procs[1:]}


def _test_sizes() -> list[int]:
    """Test samples per task of the protocol these runs use."""
    from bir_keras.data.protocols import make_protocol

    p = make_protocol("split_digits", "class", tasks=2, keep_label_order=True)
    return [len(p.task(j).y_test) for j in range(p.num_tasks)]


# what may differ between the settings of a distributed run and its reference
EXECUTION = ("strategy", "jit_compile", "notes")


def assert_same_training(dist: Outputs, single: Outputs) -> None:
    """The same settings; accuracy matrices, per-task mean losses and all checkpointed
    variables agree."""
    a, b = dist.results(), single.results()
    fa, fb = ({k: v for k, v in r["flags"].items() if k not in EXECUTION} for r in (a, b))
    assert fa == fb
    assert a["global_step"] == b["global_step"] == 2 * ITERS
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
def test_mirrored_two_logical_cpus_matches_default(distributed, reference, method):
    run, log = distributed["mirrored"][method], distributed["log"]
    assert run.results()["flags"]["strategy"] == "mirrored"
    assert_same_training(run, reference(method))
    if method == CLI_METHOD:
        # the command line's run comes first in the log, before the other runs
        assert "--jit_compile ignored" in log.split("=== ")[0]
    ckpt = run.checkpoint()
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


def test_multi_worker_two_processes_chief_exports(distributed, reference):
    workers = distributed["workers"]
    chief, other = workers
    assert (chief.export / "saved_model" / "saved_model.pb").exists()
    assert (chief.export / "run.json").exists()
    assert (chief.out / "results.json").exists()
    assert json.loads((chief.export / "run.json").read_text())["tasks_learned"] == 2
    # the other worker trained too, but wrote nothing (no export, no output, no scratch)
    assert not other.export.exists() and not other.out.exists()
    assert not [p for p in other.out.parent.glob(".*") if ".tmp-" in p.name]
    assert_same_training(chief, reference("bir"))


BAD_TF_CONFIGS = [None, "{not json", json.dumps(
    {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}})]


@pytest.mark.parametrize("tf_config", BAD_TF_CONFIGS)
def test_multi_worker_strategy_refuses_a_bad_tf_config(monkeypatch, tf_config):
    """What apps.train's --strategy=multi_worker reads TF_CONFIG with (in this process: the
    refusal comes before any strategy is made)."""
    from bir_keras import distribute
    from bir_keras.config import ConfigError

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_multi_worker_refuses_a_bad_tf_config(tmp_path):
    """The command line turns the refusal into one error line and exit code 2, before
    writing anything (one case: every bad TF_CONFIG takes the same way out, checked above)."""
    env = {**ENV, "TF_CONFIG": "{not json"}
    r = subprocess.run([sys.executable, "-m", "apps.train", *BASE,
                        "--strategy=multi_worker", f"--output_dir={tmp_path / 'out'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert "TF_CONFIG" in line
    assert not (tmp_path / "out").exists()
