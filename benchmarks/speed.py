"""Speed and memory of every method's training step (a benchmark, not a test).

    python -m benchmarks.speed --quick     # tiny sizes: does it run? (runs/benchmarks/)
    python -m benchmarks.speed                               # everything, paper sizes
    python -m benchmarks.speed --methods=bir,none --experiments=split_mnist --xla=off
    python -m benchmarks.speed --experiments=split_mnist --xla=default \
        --precisions=float32,mixed_bfloat16 --seeds_at_once=1,10   # alone and packed

Per method and experiment, the step of a replay task (task index 1: after
``trainer.start_task(1)``) on random data of the
right shape (a fake MNIST of random uint8 28x28x1 images, so it runs anywhere), after
warm-up, as the median over ``--repeats`` timings of ``--steps`` iterations, two ways:

* ``step``: ``trainer.run_steps(run, 1)`` once per iteration, losses fetched each time
  (``.numpy()``);
* ``loop``: ``trainer.run_steps(run, k)``, up to ``Trainer.steps_per_call``
  iterations per call, fetched once per call: what ``Trainer.train_task`` runs.

Both with and without XLA (``Config.jit_compile``); a method whose step fails to compile
under XLA is reported with the error and measured without it. ``--precisions`` times each
``--precision`` (``--xla=default``: XLA as ``apps.train`` chooses it, not for bfloat16 on a
CPU, where the update alone is compiled, ``strategies.base.xla_update``), and
``--seeds_at_once`` times K seeds packed into one step (``strategies.pack.SeedPack``, seeds
0..K-1; the step without XLA, its update with XLA unless ``--xla=off``) as
``apps.train --seeds_at_once=K`` runs them: the time per iteration and per seed is the
pack's time divided by K. Also the wall time and peak memory of a whole protocol run (split
MNIST Class-IL BI-R, 5 tasks x ``--protocol_iters`` iterations, through ``experiment.run``
with its evaluation, exports and TensorBoard logs) in a fresh process, and this machine's
dense matmul rate (2048 x 2048 float32).

Experiments (the paper's sizes): split MNIST, batch 128 (+128 replayed), 2 x 400 units,
Class-IL (Task-IL for XdG, which needs task identity); permuted MNIST, batch 256 (+256),
2 x 2000 units, Domain-IL (Task-IL for XdG).

Writes a Markdown table to stdout and JSON to ``--out`` (atomically; by default
``benchmarks/results/speed.json``, with ``--quick`` ``runs/benchmarks/speed_quick.json``, so
that a smoke check never touches a shipped record). An existing ``--out`` is replaced only
with ``--overwrite`` and only if it is this benchmark's JSON (``written_by``, or the keys of
the records written before it carried one), a ``--quick`` run's only over another
``--quick`` run's; anything else is refused before any work starts (``benchmarks``' rule).
Bad input (a flag it does not have, a value of the wrong type or out of range, an empty
``--out`` or ``--data_dir``) is one ``error:`` line with exit code 2, before any work (flags
parsed as the apps parse them, ``apps.common.parse_flags``).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import PathRefused, check_out, empty_path_message, write_out  # noqa: E402

PROGRAM = "benchmarks.speed"
DEFAULT_OUT = os.path.join("benchmarks", "results", "speed.json")
DEFAULT_OUT_QUICK = os.path.join("runs", "benchmarks", "speed_quick.json")
# the keys of every JSON this benchmark writes (the shipped records predate written_by)
RECORD_KEYS = ("machine", "quick", "steps", "repeats", "methods", "protocol", "markdown")
METHOD_NAMES = ["none", "joint", "ewc", "online_ewc", "si", "lwf", "xdg", "generative",
                "generative_distill", "bir", "bir_si"]
EXPERIMENTS = {
    "split_mnist": dict(scenario="class", batch=128, fc_units=400),
    "permuted_mnist": dict(scenario="domain", batch=256, fc_units=2000),
}
QUICK = dict(batch=16, fc_units=32, z_dim=8, n_train=600, n_test=100, steps=5, repeats=2,
             warmup=2, matmul=256, protocol_iters=10)

flags.DEFINE_list("methods", METHOD_NAMES, "methods to time (names of --method; default all)")
flags.DEFINE_list("experiments", list(EXPERIMENTS), "split_mnist and/or permuted_mnist")
flags.DEFINE_list("precisions", ["float32"], "--precision values to time (float32, "
                  "mixed_bfloat16; each with the --xla modes)")
flags.DEFINE_list("seeds_at_once", ["1"], "pack sizes K to time (1: one seed, its own step; "
                  "K > 1: K seeds in one packed step, without XLA)")
flags.DEFINE_integer("steps", 50, "iterations per timing (default 50)")
flags.DEFINE_integer("repeats", 5, "timings per method; the median is reported (default 5)")
flags.DEFINE_integer("warmup", 5, "untimed iterations after tracing (default 5)")
flags.DEFINE_enum("xla", "both", ["both", "on", "off", "default"], "time the step with XLA, "
                  "without, both, or as apps.train chooses by default (XLA for float32 on "
                  "one device; not for bfloat16 or conv steps on a CPU; default both)")
flags.DEFINE_bool("quick", False, "tiny sizes and few steps: a smoke check, not a measurement")
flags.DEFINE_integer("protocol_iters", None, "iterations per task of the whole-protocol run "
                     "(split MNIST Class-IL BI-R, 5 tasks; default 2000 = the paper's, 10 with "
                     "--quick; 0 skips it)")
flags.DEFINE_string("data_dir", None, "real MNIST IDX files for the protocol run (default: "
                    "random images of MNIST's size)")
flags.DEFINE_integer("matmul_n", 2048, "side of the square matmul that measures the machine "
                     "(default 2048)")
flags.DEFINE_string("out", None, "JSON results, written atomically (default "
                    f"{DEFAULT_OUT}, with --quick {DEFAULT_OUT_QUICK}); an existing file only "
                    "with --overwrite and only if this benchmark wrote it")
flags.DEFINE_bool("overwrite", False, "replace --out if an earlier run of this benchmark wrote "
                  "it (a --quick run only an earlier --quick run's); any other file is never "
                  "replaced")
flags.DEFINE_bool("protocol_child", False, "internal: run the protocol in this process and "
                  "print its JSON")
flags.DEFINE_bool("protocol_xla", False, "internal: the protocol run's jit_compile")
FLAGS = flags.FLAGS


# -- data and trainers ---------------------------------------------------------------
def fake_mnist(n_train: int, n_test: int, seed: int = 0):
    """A ``Dataset`` named mnist of random uint8 28x28x1 images and labels 0..9."""
    from bir_keras.data.sources import Dataset

    rs = np.random.RandomState(seed)
    return Dataset("mnist", rs.randint(0, 256, (n_train, 28, 28, 1), dtype=np.uint8),
                   rs.randint(0, 10, n_train).astype(np.int64),
                   rs.randint(0, 256, (n_test, 28, 28, 1), dtype=np.uint8),
                   rs.randint(0, 10, n_test).astype(np.int64), [str(i) for i in range(10)])


def make_config(experiment: str, method: str, quick: bool, jit: bool,
                precision: str = "float32", seed: int = 0):
    """The resolved Config of a method at the paper's sizes (or tiny with ``quick``)."""
    from bir_keras.config import Config, method_settings, resolve

    e = EXPERIMENTS[experiment]
    scenario = "task" if method == "xdg" else e["scenario"]
    sizes = dict(batch=e["batch"], fc_units=e["fc_units"])
    if quick:
        sizes = dict(batch=QUICK["batch"], fc_units=QUICK["fc_units"], z_dim=QUICK["z_dim"])
    cfg = Config(experiment=experiment, scenario=scenario, iters=10, jit_compile=jit,
                 precision=precision, seed=seed, **sizes,
                 **method_settings(method, experiment, scenario))
    return resolve(cfg, False)


def make_replay_step(experiment: str, method: str, quick: bool, jit: bool, dataset,
                     precision: str = "float32", seed: int = 0):
    """(trainer, run) ready for the step of task index 1 (replay from task 0)."""
    from bir_keras.data.protocols import make_protocol
    from bir_keras.strategies.trainers import make_trainer

    cfg = make_config(experiment, method, quick, jit, precision, seed)
    protocol = make_protocol(experiment, cfg.scenario, dataset=dataset, seed=cfg.seed)
    trainer = make_trainer(cfg, protocol, verbose=False)
    return trainer, trainer.start_task(1)


class PackedStep:
    """K seeds' replay steps (task index 1) in one ``SeedPack`` step, with the
    ``run_steps(run, k) -> (losses, count)`` of a trainer, so ``time_trainer`` times it."""

    def __init__(self, experiment: str, method: str, quick: bool, dataset, precision: str,
                 k: int, xla: bool | None = None):
        from bir_keras.strategies.execution import pad_samples
        from bir_keras.strategies.pack import SeedPack, check_packable

        # ``xla`` is each seed's --jit_compile: None (auto) or False; the packed step runs
        # without XLA either way, its update with XLA under auto (strategies.base.xla_update)
        made = [make_replay_step(experiment, method, quick, xla, dataset, precision, s)
                for s in range(k)]
        self.trainers = [tr for tr, _ in made]
        check_packable(self.trainers)
        self.pack = SeedPack(self.trainers)
        # as SeedPack.train_task runs a task: padded data, the plan of the task's iterations
        self.runs = [r._replace(data=pad_samples(r.data)) for _, r in made]
        self.plan = self.trainers[0].plan_for_iteration(self.runs[0].plan, 0)
        self.steps_per_call = self.trainers[0].steps_per_call

    def run_steps(self, run, k: int):
        rows = self.pack.run_steps(self.runs, k, self.plan)
        return rows[0], len(rows[0])


# -- FLOPs ---------------------------------------------------------------------------
def dense_macs(*layers) -> int:
    """Multiply-accumulates per sample of the dense kernels (2-D weights named kernel)."""
    total = 0
    for layer in layers:
        if layer is None:
            continue
        for v in layer.weights:
            if len(v.shape) == 2 and v.name.split("/")[-1].split(":")[0] == "kernel":
                total += int(v.shape[0]) * int(v.shape[1])
    return total


def first_kernel_macs(layer) -> int:
    """Multiply-accumulates per sample of the first dense kernel of a network (the layer
    that reads its inputs)."""
    for v in layer.weights:
        if len(v.shape) == 2 and v.name.split("/")[-1].split(":")[0] == "kernel":
            return int(v.shape[0]) * int(v.shape[1])
    return 0


def flops_per_iteration(trainer, replay: bool = True) -> dict[str, int]:
    """FLOPs of one iteration counted from the dense layers' sizes.

    A dense layer with ``in`` inputs and ``out`` units costs ``2 * in * out`` FLOPs per
    sample forward; a trained layer costs 3x that (forward, gradient with respect to its
    input, gradient with respect to its weights), but for the first layer of each trained
    network, whose inputs (pixels, or replayed samples from the frozen generator) need no
    gradient: TensorFlow prunes that unused matmul from the step, so it costs 2x; the
    frozen previous model and generator that make and label the replay run forward only::

        FLOPs = sum_trained 6 * in * out * n_samples - sum_first 2 * in * out * n_samples
                + sum_frozen 2 * in * out * n_samples

    with, for B current and R replayed samples (``replay``: a task after the first):

    * None, EWC, online EWC, SI, XdG, Joint: the classifier on B;
    * LwF: the classifier on B + R (the current inputs again, with the frozen model's soft
      targets), the frozen classifier on R;
    * GR (with or without distillation): classifier and VAE on B + R; frozen decoder (to
      generate) and frozen classifier (to label) on R;
    * BI-R (+ SI): the whole RtF model (encoder, latent heads, softmax layer, decoder) on
      B + R; frozen decoder and frozen encoder + softmax layer on R.

    Biases, activations, losses, the prior's log-densities, penalties and the optimiser's
    element-wise updates are not counted (they are O(parameters + activations), not
    O(parameters x batch)).
    """
    from bir_keras.models.vae import VAE

    c = trainer.config
    b, r = c.batch, (c.batch_replay if replay and trainer.uses_replay else 0)
    m = trainer.model
    n = b + r
    trained = 6 * dense_macs(m) * n - 2 * first_kernel_macs(m) * n
    if isinstance(m, VAE):  # BI-R's RtF model
        frozen = r * (dense_macs(m.decoder, m.out_layer) + dense_macs(m.encoder, m.head))
    else:
        frozen = dense_macs(m) * r
        gen = getattr(trainer, "generator", None)
        if gen is not None:
            trained += 6 * dense_macs(gen) * n - 2 * first_kernel_macs(gen) * n
            frozen += r * dense_macs(gen.decoder, gen.out_layer)
    return {"trained": trained, "frozen": 2 * frozen, "total": trained + 2 * frozen}


# -- timing --------------------------------------------------------------------------
def matmul_gflops(n: int, repeats: int) -> float:
    """This machine's dense float32 matmul rate: n x n by n x n in a tf.function, median."""
    import tensorflow as tf

    a = tf.random.stateless_normal([n, n], seed=[1, 2])
    b = tf.random.stateless_normal([n, n], seed=[3, 4])

    @tf.function(jit_compile=False)
    def mm(a, b):
        return tf.matmul(a, b)[0, 0]  # fetching one element still needs the whole product

    mm(a, b).numpy()
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        mm(a, b).numpy()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def _timed(fn, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds (wall and process CPU) per iteration over ``repeats`` runs of ``fn``."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(steps)
        wall.append((time.perf_counter() - t0) / steps)
        cpu.append((time.process_time() - c0) / steps)
    return {"s_per_it": statistics.median(wall), "s_per_it_min": min(wall),
            "cpu_s_per_it": statistics.median(cpu)}


def time_trainer(trainer, run, steps: int, repeats: int, warmup: int) -> dict:
    """Time the per-iteration call and the multi-iteration loop, after tracing and warm-up."""

    def per_call(n):
        for _ in range(n):
            trainer.run_steps(run, 1)

    def loop(n):
        done = 0
        while done < n:
            k = min(trainer.steps_per_call, n - done)
            _, count = trainer.run_steps(run, k)
            if count < k:
                raise FloatingPointError("non-finite loss in the benchmark step")
            done += k

    out = {}
    t0 = time.perf_counter()
    per_call(1)
    out["trace_s_step"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop(1)
    out["trace_s_loop"] = time.perf_counter() - t0
    per_call(warmup)
    loop(warmup)
    # alternate the two ways so that a change of machine load hits both alike
    step, lp = [], []
    for _ in range(repeats):
        step.append(_timed(per_call, steps, 1))
        lp.append(_timed(loop, steps, 1))
    for name, runs in (("step", step), ("loop", lp)):
        out[name] = {k: statistics.median([r[k] for r in runs]) for k in runs[0]}
        out[name]["s_per_it_min"] = min(r["s_per_it"] for r in runs)
        out[name]["it_per_s"] = 1.0 / out[name]["s_per_it"]
    return out


def bench_method(experiment: str, method: str, xla: bool, dataset, steps: int, repeats: int,
                 warmup: int, quick: bool, precision: str = "float32", k: int = 1) -> dict:
    """One row: its/s (of the pack: K iterations, one per seed), GFLOP/s, or the error that
    stopped it."""
    rec: dict = {"experiment": experiment, "method": method, "xla": xla,
                 "precision": precision, "seeds_at_once": k}
    trainer = run = None
    try:
        if k == 1:
            trainer, run = make_replay_step(experiment, method, quick, xla, dataset,
                                            precision)
            first = trainer
        else:
            trainer = PackedStep(experiment, method, quick, dataset, precision, k, xla)
            first = trainer.trainers[0]
        # what the step runs with (--xla=default decides): XLA for the whole step, or for
        # its update alone (strategies.base.xla_update; a pack's step never has XLA)
        rec["xla"] = first.jit_compile if k == 1 else False
        rec["xla_update"] = first.xla_update if k == 1 else trainer.pack.xla_update
        rec["scenario"] = first.config.scenario
        rec["batch"], rec["batch_replay"] = first.config.batch, first.config.batch_replay
        rec["flops"] = {n: k * f for n, f in flops_per_iteration(first).items()}
        rec.update(time_trainer(trainer, run, steps, repeats, warmup))
        for way in ("step", "loop"):
            rec[way]["gflops"] = rec["flops"]["total"] * rec[way]["it_per_s"] / 1e9
            rec[way]["s_per_it_per_seed"] = rec[way]["s_per_it"] / k
    except Exception as e:  # report the op that failed (e.g. under XLA) and go on
        rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    finally:  # drop this method's graphs before the next one
        import keras

        trainer = run = first = None
        keras.backend.clear_session()
        gc.collect()
    return rec


# -- the whole protocol in a fresh process ---------------------------------------------
def protocol_child(iters: int, data_dir: str | None, quick: bool, xla: bool) -> dict:
    """Split MNIST Class-IL BI-R, 5 tasks x ``iters``, through ``experiment.run``."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # as apps.train does by default
    from bir_keras import experiment
    from bir_keras.config import Config, method_settings, resolve
    from bir_keras.data.protocols import make_protocol

    t_start = time.perf_counter()
    dataset = None
    if data_dir is None:
        dataset = fake_mnist(QUICK["n_train"] if quick else 60000,
                             QUICK["n_test"] if quick else 10000)
    sizes = dict(batch=QUICK["batch"], fc_units=QUICK["fc_units"], z_dim=QUICK["z_dim"]) \
        if quick else {}
    cfg = resolve(Config(experiment="split_mnist", scenario="class", iters=iters,
                         data_dir=data_dir, jit_compile=xla, **sizes,
                         **method_settings("bir", "split_mnist", "class")), False)
    protocol = make_protocol("split_mnist", "class", data_dir=data_dir, dataset=dataset,
                             seed=cfg.seed)
    setup = experiment.Setup(cfg, protocol, protocol, None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rec = experiment.run(cfg, str(Path(tmp) / "out"), export_dir=str(Path(tmp) / "export"),
                             setup=setup, verbose=False)
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, where = peak_rss_mib()
    return {"iters": iters, "tasks": protocol.num_tasks, "batch": cfg.batch,
            "fc_units": cfg.fc_units, "xla": xla, "real_data": data_dir is not None,
            "wall_s": wall, "wall_s_with_startup": time.perf_counter() - t_start,
            "task_times_s": rec.get("task_times_s"), "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": peak, "peak_rss_from": where,
            "final_average_accuracy": rec.get("final_average_accuracy")}


def peak_rss_mib() -> tuple[float, str]:
    """Peak resident memory of this process in MiB, and where it was read.

    ``VmHWM`` of /proc/self/status first: ``ru_maxrss`` of a process started by a big
    parent can report the parent's peak (Linux carries it over ``exec``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def protocol_run(iters: int, data_dir: str | None, quick: bool, xla: bool) -> dict:
    """``protocol_child`` in a fresh Python process (clean peak memory and start-up)."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--protocol_child",
           f"--protocol_iters={iters}", f"--quick={quick}", f"--protocol_xla={xla}"]
    if data_dir:
        cmd.append(f"--data_dir={data_dir}")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    if r.returncode != 0:
        return {"iters": iters, "xla": xla, "error": r.stderr.strip()[-1000:]}
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    rec["process_wall_s"] = time.perf_counter() - t0
    return rec


# -- report --------------------------------------------------------------------------
def machine() -> dict:
    """Where the numbers come from: CPU, cores, load, library versions."""
    import keras
    import tensorflow as tf

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__}


def _xla_cell(r: dict) -> str:
    """XLA column: the whole step, or without XLA but with an XLA-compiled update."""
    if r["xla"] is None:
        return "default"
    return "on" if r["xla"] else "off, update on" if r.get("xla_update") else "off"


def markdown(results: dict) -> str:
    """The table of step speeds and the protocol run."""
    mm = results["matmul_gflops"]
    lines = [f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"load {', '.join(f'{x:.1f}' for x in results['machine']['load_avg'])} "
             f"(at start; {', '.join(f'{x:.1f}' for x in results['load_avg_end'])} at end); "
             f"dense matmul {mm:.1f} GFLOP/s"
             + (" (--quick: sizes are tiny, numbers mean nothing)" if results["quick"] else ""),
             "",
             "| experiment | method | precision | XLA | seeds | loop ms per seed | MFLOP/it | "
             "step ms (it/s) | loop ms (it/s) | per-call overhead ms | loop CPU ms | "
             "loop GFLOP/s | % of matmul |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["methods"]:
        head = (f"| {r['experiment']} | {r['method']} | {r.get('precision', 'float32')} | "
                f"{_xla_cell(r)} | "
                f"{r.get('seeds_at_once', 1)} |")
        if "error" in r:
            lines.append(f"{head} failed: {r['error'][:120]} | | | | | | | |")
            continue
        s, lp = r["step"], r["loop"]
        lines.append(f"{head} {1e3 * lp['s_per_it_per_seed']:.2f} | "
                     f"{r['flops']['total'] / 1e6:.1f} | "
                     f"{1e3 * s['s_per_it']:.2f} ({s['it_per_s']:.1f}) | "
                     f"{1e3 * lp['s_per_it']:.2f} ({lp['it_per_s']:.1f}) | "
                     f"{1e3 * (s['s_per_it'] - lp['s_per_it']):.2f} "
                     f"(CPU {1e3 * (s['cpu_s_per_it'] - lp['cpu_s_per_it']):.2f}) | "
                     f"{1e3 * lp['cpu_s_per_it']:.2f} | {lp['gflops']:.1f} | "
                     f"{100 * lp['gflops'] / mm:.0f}% |")
    for p in results.get("protocol", []):
        if "error" in p:
            lines += ["", f"Protocol run (XLA {'on' if p['xla'] else 'off'}) failed: "
                      f"{p['error'][-300:]}"]
            continue
        lines += ["", f"Whole protocol (split MNIST Class-IL BI-R, {p['tasks']} tasks x "
                  f"{p['iters']} iterations, batch {p['batch']} + {p['batch']}, "
                  f"{'real' if p['real_data'] else 'random'} data, XLA "
                  f"{'on' if p['xla'] else 'off'}): {p['wall_s']:.1f} s in experiment.run "
                  f"({p['wall_s_with_startup']:.1f} s with imports and data, "
                  f"{p['process_wall_s']:.1f} s for the process), CPU {p['cpu_s']:.1f} s, "
                  f"peak RSS {p['peak_rss_mib']:.0f} MiB; per task "
                  f"{', '.join(f'{t:.1f}' for t in p['task_times_s'])} s; final average "
                  f"accuracy {p['final_average_accuracy']:.4f}"]
    return "\n".join(lines)


def speed_record(path: Path, quick: bool) -> bool:
    """Whether ``path`` is a JSON this benchmark wrote (``written_by``, or for the records
    written before that mark, all of ``RECORD_KEYS``) and, for a ``quick`` run, one of a
    ``--quick`` run: a smoke check never replaces a measurement."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(rec, dict):
        return False
    mine = rec.get("written_by") == PROGRAM if "written_by" in rec else all(
        k in rec for k in RECORD_KEYS)
    return mine and (not quick or rec.get("quick") is True)


def out_path(out: str | None, quick: bool, overwrite: bool) -> Path:
    """``--out`` (or its default) checked: ``PathRefused`` for a file this run may not write."""
    path = out or (DEFAULT_OUT_QUICK if quick else DEFAULT_OUT)
    what = "a --quick run of benchmarks.speed" if quick else PROGRAM
    try:
        return check_out(path, overwrite, PROGRAM, lambda p: speed_record(p, quick))
    except PathRefused:
        if quick and speed_record(Path(path), False) and not speed_record(Path(path), True):
            raise PathRefused(f"--out={path} holds a measurement of {PROGRAM} (not a --quick "
                              f"run): {what} never replaces it; choose another --out") from None
        raise


def main(argv: list[str]) -> int | None:
    """Time the steps, run the protocol, print the table, write the JSON."""
    del argv
    quick = FLAGS.quick
    iters = FLAGS.protocol_iters
    if iters is None:
        iters = QUICK["protocol_iters"] if quick else 2000
    if FLAGS.protocol_child:
        print(json.dumps(protocol_child(iters, FLAGS.data_dir, quick, FLAGS.protocol_xla)))
        return
    unknown = [m for m in FLAGS.methods if m not in METHOD_NAMES]
    bad_exp = [e for e in FLAGS.experiments if e not in EXPERIMENTS]
    if unknown or bad_exp:
        return _refuse(f"unknown methods {unknown} or experiments {bad_exp}; choose from "
                       f"{METHOD_NAMES} and {list(EXPERIMENTS)}")
    steps, repeats, warmup = FLAGS.steps, FLAGS.repeats, FLAGS.warmup
    if quick:
        steps, repeats, warmup = QUICK["steps"], QUICK["repeats"], QUICK["warmup"]
    # None: what apps.train chooses by default (execution.step_xla: XLA for float32 on one
    # device, not for bfloat16 or conv steps on a CPU)
    xla_modes = {"both": [False, True], "on": [True], "off": [False],
                 "default": [None]}[FLAGS.xla]
    precisions = FLAGS.precisions
    bad = [p for p in precisions if p not in ("float32", "mixed_bfloat16")]
    try:
        packs = [int(k) for k in FLAGS.seeds_at_once]
    except ValueError:
        packs = [0]
    if bad or not packs or min(packs) < 1:
        return _refuse(f"--precisions takes float32, mixed_bfloat16 (got {bad}) and "
                       f"--seeds_at_once integers >= 1 (got {FLAGS.seeds_at_once})")
    small = [f"--{n}={getattr(FLAGS, n)}" for n in ("steps", "repeats", "warmup", "matmul_n")
             if getattr(FLAGS, n) < (0 if n == "warmup" else 1)]
    if small or iters < 0:
        return _refuse(f"{', '.join(small) or f'--protocol_iters={iters}'}: --steps, --repeats "
                       "and --matmul_n must be at least 1, --warmup and --protocol_iters at "
                       "least 0")
    for name in ("out", "data_dir"):
        if FLAGS[name].present and not (FLAGS[name].value or "").strip():
            return _refuse(empty_path_message(name))
    empty = [f"--{n}" for n in ("methods", "experiments", "precisions", "seeds_at_once")
             if not getattr(FLAGS, n)]
    if empty:
        return _refuse(f"{', '.join(empty)} names nothing: give at least one value, or leave "
                       "the flag out for its default")
    if FLAGS.data_dir and not os.path.exists(FLAGS.data_dir):
        return _refuse(f"--data_dir={FLAGS.data_dir} does not exist")
    try:  # before any work: the file it may write
        out = out_path(FLAGS.out, quick, FLAGS.overwrite)
    except PathRefused as e:
        return _refuse(str(e))
    # one seed: each --xla mode; a pack's step runs without XLA (strategies.pack), its
    # update with XLA under auto (None): --xla=off times it without, default and on with
    # it, both both ways
    pack_modes = {"both": [False, None], "on": [None], "off": [False],
                  "default": [None]}[FLAGS.xla]
    variants = [(p, k, x) for p in precisions for k in packs
                for x in (xla_modes if k == 1 else pack_modes)]
    results: dict = {"machine": machine(), "quick": quick, "steps": steps, "repeats": repeats,
                     "warmup": warmup}
    results["matmul_n"] = QUICK["matmul"] if quick else FLAGS.matmul_n
    results["matmul_gflops"] = matmul_gflops(results["matmul_n"], repeats)
    rows = []
    for experiment in FLAGS.experiments:
        dataset = fake_mnist(QUICK["n_train"] if quick else 12000,
                             QUICK["n_test"] if quick else 1000, seed=1)
        for method in FLAGS.methods:
            for precision, k, xla in variants:
                rec = bench_method(experiment, method, xla, dataset, steps, repeats, warmup,
                                   quick, precision, k)
                rows.append(rec)
                if xla is not False and "error" in rec:
                    rec["fallback"] = "measured without XLA"
                    if False not in xla_modes:
                        rows.append(bench_method(experiment, method, False, dataset, steps,
                                                 repeats, warmup, quick, precision, k))
                print(f"{experiment} {method} {precision} K={k} xla={xla}: "
                      + (rec["error"] if "error" in rec else
                         f"{1e3 * rec['loop']['s_per_it_per_seed']:.2f} ms/it per seed "
                         f"(loop), {1e3 * rec['step']['s_per_it']:.2f} ms/call (step)"),
                      file=sys.stderr, flush=True)
    results["methods"] = rows
    results["protocol"] = []
    if iters > 0:
        # with --xla=both or default: XLA on, apps.train's default for this float32 run
        xla = xla_modes[-1] is not False
        results["protocol"].append(protocol_run(iters, FLAGS.data_dir, quick, xla))
    results["matmul_gflops_end"] = matmul_gflops(results["matmul_n"], repeats)
    results["load_avg_end"] = list(os.getloadavg())
    results["peak_rss_mib_benchmark"] = peak_rss_mib()[0]
    table = markdown(results)
    print(table)
    results["markdown"] = table
    try:
        write_out(out, results, PROGRAM, lambda p: speed_record(p, quick))
    except (PathRefused, OSError) as e:
        print(f"error: {out} not written: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _refuse(message: str) -> int:
    """Bad input: one ``error:`` line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_flags(argv: list[str]) -> list[str]:
    """The flags as the apps parse them (``apps.common.parse_flags``): a flag it does not
    have, a value of the wrong type or out of range, or a stray argument is one ``error:``
    line and exit code 2, not absl's ``FATAL Flags parsing error`` and exit 1."""
    from apps.common import parse_flags as parse

    return parse(argv)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
