"""Compare methods over seeds: the paper's figures as one command.

    python -m apps.compare --experiment=split_mnist --scenario=class \
        --methods=none,joint,ewc,online_ewc,si,lwf,generative,generative_distill,bir,bir_si \
        --seeds=3 --output_dir=results/fig3_class --data_dir=DIR

Every other flag (``--iters``, ``--data_dir``, ...) passes through to apps.train. Each run
is cached under ``output_dir/runs/`` by a stamp of its settings: a repeated compare runs
only what is new or changed. Writes ``table.md``, ``table.csv`` and ``accuracy.png``
(average accuracy against the number of tasks, mean and standard-error band).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import flags

from bir_keras.config import METHODS, Config
from bir_keras.fileio import atomic_write_text

FLAGS = flags.FLAGS
_D = Config()  # the one home of the defaults
flags.DEFINE_string("experiment", _D.experiment, "protocol (see apps.train)")
flags.DEFINE_string("scenario", _D.scenario, "task, domain or class")
flags.DEFINE_list("methods", ["none", "joint"], f"methods to compare: {', '.join(METHODS)}")
flags.DEFINE_integer("seeds", 3, "number of seeds (0..seeds-1) per method (default 3)")
flags.DEFINE_integer("first_seed", 0, "first seed (default 0)")
flags.DEFINE_string("output_dir", None, "where runs/, table.md, table.csv, accuracy.png go")
flags.DEFINE_integer("parallel", 0, "runs at once (default: cores // 2, at least 1)")
flags.DEFINE_string("title", None, "plot title (default: experiment and scenario)")
flags.DEFINE_bool("only_cached", False, "tabulate the finished runs, run nothing")
flags.DEFINE_string("sweep", None, "sweep an apps.train flag over values, e.g. "
                    "batch_replay:1,4,16,128 (Fig. 4) or g_fc_units:10,25,100,400")

# The paper's published final average accuracies (method.md 6), shown beside ours.
PUBLISHED = {
    ("split_mnist", "task"): dict(none=87.19, joint=99.66, ewc=98.64, online_ewc=99.12, si=99.09,
                                  lwf=99.57, xdg=99.10, generative=99.50,
                                  generative_distill=99.61),
    ("split_mnist", "class"): dict(none=19.90, joint=97.94, ewc=20.01, online_ewc=19.96, si=19.99,
                                   lwf=23.85, generative=90.79, generative_distill=91.79),
    ("split_cifar100", "task"): dict(none=61.43, joint=78.78, ewc=76.34, si=74.84, lwf=78.59,
                                     xdg=69.86, generative=71.40, bir=79.14),
    ("split_cifar100", "class"): dict(none=7.71, joint=49.78, ewc=8.24, si=8.10, lwf=25.57,
                                      generative=9.67, bir=21.51, bir_si=34.38),
}


def stamp(args: list[str]) -> str:
    """A short hash of a run's settings (its apps.train arguments, order-independent)."""
    return hashlib.sha256(json.dumps(sorted(args)).encode()).hexdigest()[:12]


def parse_sweep(spec: str | None) -> tuple[str | None, list[str]]:
    """``flag:v1,v2,...`` -> (flag, values); None -> (None, [None])."""
    if not spec:
        return None, [None]
    if ":" not in spec:
        raise ValueError(f"--sweep must look like flag:v1,v2 (got {spec!r})")
    name, values = spec.split(":", 1)
    return name.lstrip("-"), [v for v in values.split(",") if v]


def plan(methods: list[str], seeds: list[int], experiment: str, scenario: str,
         passthrough: list[str], root: Path, sweep: str | None = None) -> list[dict]:
    """One entry per (method, sweep value, seed): its arguments, stamp and run directory."""
    name, values = parse_sweep(sweep)
    runs = []
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m == "xdg" and scenario != "task":
            raise ValueError("xdg needs task identity: only with --scenario=task")
        for v in values:
            for s in seeds:
                args = [f"--experiment={experiment}", f"--scenario={scenario}", f"--method={m}",
                        f"--seed={s}", *passthrough] + ([f"--{name}={v}"] if name else [])
                st = stamp(args)
                tag = f"{m}-{name}{v}" if name else m
                d = root / "runs" / f"{tag}-s{s}-{st}"
                runs.append({"method": m, "value": v, "key": tag, "seed": s, "args": args,
                             "stamp": st, "dir": d})
    return runs


def is_cached(run: dict) -> bool:
    """A run is done when its results.json exists with the same stamp."""
    res = run["dir"] / "out" / "results.json"
    st = run["dir"] / "stamp.json"
    return res.exists() and st.exists() and json.loads(st.read_text())["stamp"] == run["stamp"]


def execute(run: dict) -> tuple[dict, int, str]:
    """Run apps.train for one (method, seed) into its cache directory."""
    d = run["dir"]
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "apps.train", *run["args"], f"--output_dir={d / 'out'}",
           f"--export_dir={d / 'export'}", "--overwrite"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(d / "log.txt", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                             cwd=Path(__file__).resolve().parent.parent)
    if rc == 0:
        (d / "stamp.json").write_text(json.dumps({"stamp": run["stamp"], "args": run["args"]}))
    return run, rc, str(d / "log.txt")


def summarize_runs(runs: list[dict]) -> dict[str, dict]:
    """Per method: final accuracies per seed, mean/SEM curves over the number of tasks."""
    out: dict[str, dict] = {}
    for r in runs:
        res = json.loads((r["dir"] / "out" / "results.json").read_text())
        e = out.setdefault(r["key"], {"final": [], "curves": [], "wall": [],
                                      "method": r["method"], "value": r["value"]})
        e["final"].append(res["final_average_accuracy"])
        e["curves"].append(res["average_accuracy"])
        e["wall"].append(res["wall_time_s"])
    for e in out.values():
        f = np.array(e["final"]) * 100
        c = np.array(e["curves"]) * 100
        n = len(f)
        e["mean"], e["sem"] = float(f.mean()), float(f.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        e["curve_mean"] = c.mean(0) / 100
        e["curve_sem"] = (c.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(c.shape[1])) / 100
    return out


# apps.train flags that change how a run executes, not what it computes: runs with only
# these beside --method and --seed have the paper's settings
EXECUTION_FLAGS = {"data_dir", "jit_compile", "strategy", "num_logical_cpus", "deterministic",
                   "log_every", "progress_every", "tf_log", "eval_batch"}


def changed_settings(passthrough: list[str], sweep: str | None = None) -> list[str]:
    """The passed-through flags that make these runs differ from the paper's settings."""
    out = []
    for a in passthrough:
        name = a.lstrip("-").split("=", 1)[0]
        if name.startswith("no") and name[2:] in EXECUTION_FLAGS:
            name = name[2:]
        if name not in EXECUTION_FLAGS:
            out.append(a)
    return out + ([f"--sweep={sweep}"] if sweep else [])


def write_tables(stats: dict, experiment: str, scenario: str, root: Path,
                 changed: list[str] | None = None) -> str:
    """table.md and table.csv: mean +/- SEM per method, with the published number (marked
    when these runs' settings are not the paper's: ``changed`` names what differs)."""
    pub = PUBLISHED.get((experiment, scenario), {})
    mark = "*" if changed else ""
    lines = ["| method | seeds | final average accuracy (%) | published (%) | wall time / run (s) |",
             "|---|---|---|---|---|"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "seeds", "mean", "sem", "published", "wall_time_s",
                "settings_differ_from_published"])
    shown = False
    for m, e in stats.items():
        p = pub.get(m) if e["value"] is None else None
        shown = shown or p is not None
        lines.append(f"| {m} | {len(e['final'])} | {e['mean']:.2f} ± {e['sem']:.2f} | "
                     f"{'' if p is None else f'{p:.2f}{mark}'} | {np.mean(e['wall']):.0f} |")
        w.writerow([m, len(e["final"]), f"{e['mean']:.4f}", f"{e['sem']:.4f}",
                    "" if p is None else p, f"{np.mean(e['wall']):.1f}",
                    " ".join(changed or []) if p is not None else ""])
    if changed and shown:
        lines += ["", f"\\* published with the paper's settings (20 seeds); these runs differ: "
                      f"{' '.join(changed)}"]
    md = "\n".join(lines) + "\n"
    atomic_write_text(root / "table.md", md)
    atomic_write_text(root / "table.csv", buf.getvalue())
    return md


def main(argv: list[str]) -> int:
    """Run what is missing, then tabulate and plot."""
    passthrough = [a for a in argv[1:]]
    if not FLAGS.output_dir:
        print("error: --output_dir is required", file=sys.stderr)
        return 2
    root = Path(FLAGS.output_dir)
    seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
    try:
        runs = plan(FLAGS.methods, seeds, FLAGS.experiment, FLAGS.scenario, passthrough, root,
                    FLAGS.sweep)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    todo = [] if FLAGS.only_cached else [r for r in runs if not is_cached(r)]
    # every method's first seed before any method's second: a cut-short compare still
    # covers all methods
    todo.sort(key=lambda r: r["seed"])
    print(f"{sum(map(is_cached, runs))} cached, {len(todo)} to run", flush=True)
    workers = FLAGS.parallel or max(1, (os.cpu_count() or 2) // 2)
    failed = []
    with cf.ThreadPoolExecutor(workers) as pool:
        for run, rc, log in pool.map(execute, todo):
            print(f"{run['method']} seed {run['seed']}: {'ok' if rc == 0 else f'FAILED ({log})'}",
                  flush=True)
            if rc:
                failed.append(run)
    done = [r for r in runs if is_cached(r)]
    if not done:
        print("error: no run finished", file=sys.stderr)
        return 1
    stats = summarize_runs(done)
    print(write_tables(stats, FLAGS.experiment, FLAGS.scenario, root,
                       changed_settings(passthrough, FLAGS.sweep)))
    written = [root / "table.md", root / "table.csv", root / "accuracy.png"]
    from bir_keras.evaluation.plots import plot_average_accuracy, plot_sweep

    title = FLAGS.title or f"{FLAGS.experiment} ({FLAGS.scenario}-IL)"
    plot_average_accuracy({m: (e["curve_mean"], e["curve_sem"]) for m, e in stats.items()},
                          root / "accuracy.png", title=title)
    name, values = parse_sweep(FLAGS.sweep)
    if name:
        curves = {}
        for m in FLAGS.methods:
            keyed = [stats.get(f"{m}-{name}{v}") for v in values]
            if all(keyed):
                curves[m] = ([k["mean"] / 100 for k in keyed], [k["sem"] / 100 for k in keyed])
        xs = [float(v) for v in values]
        # sizes and counts (replayed samples, hidden units) spread over a factor of 8 or
        # more are shown on a log axis, as in the paper's Fig. 4
        log_x = min(xs) > 0 and max(xs) / min(xs) >= 8
        plot_sweep(xs, curves, root / "sweep.png", xlabel=name, title=title, log_x=log_x)
        written.append(root / "sweep.png")
    print(f"wrote {', '.join(str(p) for p in written)} (runs in {root / 'runs'})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    from apps.common import run_app

    # flags this app does not define pass through to apps.train
    run_app(main, known_only=True)
