"""Side by side with the authors' code: both programs run as whole processes, for speed
(timed rows) or for fidelity (methods x seeds, their final accuracies).

    python -m benchmarks.vs_reference --reference=PATH --data_dir=DIR \\
        --reference_python=/path/to/venv_ref/bin/python [--rows=split_mnist,permuted_mnist] \\
        [--iters_scale=0.05] [--precision=mixed_bfloat16] \\
        [--out=benchmarks/results/vs_reference.json]

    python -m benchmarks.vs_reference --reference=PATH --data_dir=DIR \\
        --reference_python=/path/to/venv_ref/bin/python \\
        --methods=lwf,generative,generative_distill,bir,bir_si [--seeds=12,13,14] \\
        [--scenario=class] [--out=fidelity.json]

``--reference`` is a checkout of the authors' repository (``GMvandeVen/brain-inspired-replay``,
PyTorch), fetched by the user: it is never a dependency of this project and nothing of it is
copied here. Their ``store/models`` folder (pre-trained conv layers for CIFAR) is not
needed. ``--reference_python`` is a Python that imports ``torch`` and ``torchvision`` (and
numpy, scipy, scikit-learn, matplotlib, tqdm, which their code imports; it was run with
torch 2.14.1 / torchvision 0.29.1). Their code imports ``visdom``, only to plot to a visdom
server: this script puts an empty stand-in module on their ``PYTHONPATH`` (any use of it
raises), so visdom need not be installed.

Rows (both programs get the same seed and the same local MNIST files; the MNIST IDX files
of ``--data_dir``, ``.gz`` or not, are read by ``apps.train`` directly and, for their code,
decompressed into a temporary folder in the layout torchvision's ``MNIST`` reads, so it
downloads nothing):

* ``split_mnist``: BI-R on split MNIST, Class-IL, seed 12, the paper's settings (5 tasks x
  2000 iterations, batch 128, lr 0.001, 2 x 400 units);
* ``permuted_mnist``: BI-R on permuted MNIST, Domain-IL, 2 tasks x 200 iterations, seed 12
  (the paper's batch 256, lr 1e-4, 2 x 2000 units).

Fidelity (``--methods``, not with ``--rows``): each method of ``--methods`` (bir_keras'
``--method`` shorthands: none, joint, ewc, online_ewc, si, xdg (Task-IL only), lwf,
generative, generative_distill, bir, bir_si and the split MNIST ablations gr_rtf, gr_con,
gr_gat, gr_dis, bir_no_rtf, bir_no_con, bir_no_gat, bir_no_dis) on split MNIST in
``--scenario`` (class, task or domain; default class) at the paper's settings (5 tasks x 2000
iterations, batch 128, lr 0.001, 2 x 400 units), once per seed of ``--seeds`` (default
12,13,14), by both programs: ours as ``apps.train --method=NAME``, theirs with the
``main_cl.py`` flags of the same method (``METHODS`` below: LwF ``--replay=current
--distill``, GR ``--replay=generative``, BI-R ``--replay=generative --brain-inspired``, ...).
The grid-searched values a method takes (SI's c, EWC's lambda and gamma, XdG's and BI-R's
gate proportions) are given to both explicitly: their options.py values for splitMNIST, the
same as bir_keras' (a test checks). The table has each seed's final average accuracy of both
programs, then per method the mean ± s.e.m. of each, the difference of the means with its
standard error, and the mean ± s.e.m. of the per-seed differences (a seed gives both the same
class order). The runs go one after another (method by method, seed by seed, ours first).

Each side runs as a child process (``subprocess.Popen``, reaped with ``os.wait4``): wall
time from start to exit, CPU time as the child's user + system time, and its peak resident
memory (``ru_maxrss``). Everything each program does is timed: interpreter start and
imports, data loading, building the networks, training, the evaluation after every task
and at the end, and whatever files it writes (ours: results.json, accuracy.png, TensorBoard
logs, a SavedModel + checkpoint after every task; theirs: the final model checkpoint and
two result files). Output goes to log files in a temporary folder (removed at the end
unless ``--keep_work_dir``; kept when a side fails). The final average accuracy (over the
tasks' full test sets after the last task) is read from each program's output.

``--iters_scale=F`` multiplies every row's iterations per task (at least 1): a quick check
that both programs run, not a measurement (the table says so).

Prints a Markdown table to stdout (progress to stderr) and, with ``--out``, writes the
numbers as JSON (atomically; an existing file only if this benchmark wrote it, with
``--overwrite``). Bad input (no reference checkout or no ``main_cl.py`` in it,
missing or malformed MNIST files, a reference Python that is missing or cannot import
torch) is refused with a one-line ``error:`` and exit code 2 before anything is run; a
side that fails gives exit code 1 after the table.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import Parser, check_out, write_out
from bir_keras.rundirs import PathRefused

PROGRAM = "benchmarks.vs_reference"

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 12
MNIST_FILES = {  # name -> IDX magic number (2051: images, 2049: labels)
    "train-images-idx3-ubyte": 2051,
    "train-labels-idx1-ubyte": 2049,
    "t10k-images-idx3-ubyte": 2051,
    "t10k-labels-idx1-ubyte": 2049,
}
REFERENCE_MAIN = "main_cl.py"


@dataclass(frozen=True)
class Row:
    """One benchmark row: the same protocol as flags of each program."""

    name: str
    title: str
    tasks: int
    iters: int
    batch: int
    lr: float
    fc_units: int
    ours: tuple[str, ...]
    theirs: tuple[str, ...]


# Ours: apps/train.py's flags. Theirs: the flags of main_cl.py, defined in their options.py
# (add_*_options; set_defaults fills the rest). ``--replay=generative --brain-inspired`` is
# their README's BI-R command: it sets --feedback, --prior=GMM, --per-class, --dg-gates,
# --distill (and --hidden / --pre-convE / --freeze-convE, which do nothing without conv
# layers: MNIST has --depth=0); --dg-prop defaults to 0.8 for both experiments, --dg-type
# to "class" on splitMNIST and "task" on permMNIST. Batch, lr and units are their
# set_defaults values for each experiment, given explicitly on both sides.
ROWS = {
    "split_mnist": Row(
        name="split_mnist", title="BI-R split MNIST Class-IL", tasks=5, iters=2000,
        batch=128, lr=0.001, fc_units=400,
        ours=("--experiment=split_mnist", "--scenario=class", "--method=bir"),
        theirs=("--experiment=splitMNIST", "--scenario=class", "--replay=generative",
                "--brain-inspired"),
    ),
    "permuted_mnist": Row(
        name="permuted_mnist", title="BI-R permuted MNIST Domain-IL", tasks=2, iters=200,
        batch=256, lr=0.0001, fc_units=2000,
        ours=("--experiment=permuted_mnist", "--scenario=domain", "--method=bir"),
        theirs=("--experiment=permMNIST", "--scenario=domain", "--replay=generative",
                "--brain-inspired"),
    ),
}

# -- fidelity: methods x seeds ---------------------------------------------------------------
# The paper's grid-searched values for split MNIST, as their options.py ``set_defaults`` sets
# them for main_cl.py (``--experiment=splitMNIST``; gamma 1 and dg_prop 0.8 in every scenario,
# xdg_prop only in Task-IL). Both programs are given them explicitly, so that both run the
# same values whatever either one's defaults; tests/test_vs_reference.py checks them against
# bir_keras.config.PAPER_HPARAMS. BI-R + SI takes the same c as SI on split MNIST (their
# main_cl.py has no separate one; bir_keras' ``bir_si_c``).
SPLIT_MNIST_HPARAMS = {
    "task": dict(si_c=10.0, ewc_lambda=1e9, gamma=1.0, xdg_prop=0.9, dg_prop=0.8),
    "class": dict(si_c=0.1, ewc_lambda=1e5, gamma=1.0, dg_prop=0.8),
    "domain": dict(si_c=0.1, ewc_lambda=1e5, gamma=1.0, dg_prop=0.8),
}
# a hyper-parameter's flag in each program: (apps.train, main_cl.py)
HPARAM_FLAGS = {"si_c": ("--si_c", "--c"), "ewc_lambda": ("--ewc_lambda", "--lambda"),
                "gamma": ("--gamma", "--gamma"), "xdg_prop": ("--xdg_prop", "--xdg-prop"),
                "dg_prop": ("--dg_prop", "--dg-prop")}
SCENARIOS = ("class", "task", "domain")
SCENARIO_TITLES = {"class": "Class-IL", "task": "Task-IL", "domain": "Domain-IL"}
DEFAULT_SEEDS = (12, 13, 14)


@dataclass(frozen=True)
class Method:
    """One of bir_keras' ``--method`` shorthands and the same method in main_cl.py's flags."""

    name: str
    title: str
    theirs: tuple[str, ...]
    hparams: tuple[str, ...] = ()  # keys of SPLIT_MNIST_HPARAMS both programs are given
    scenarios: tuple[str, ...] = SCENARIOS


# Theirs: the README's commands (``--replay=current --distill`` for LwF, ``--replay=generative``
# for GR, ``--replay=generative --brain-inspired`` for BI-R, ``--si --c=`` for SI, ``--ewc
# --lambda=`` / ``--ewc --online --lambda= --gamma=`` for EWC / online EWC, ``--xdg
# --xdg-prop=`` for XdG, Task-IL only) and compare_MNIST.py's (``--replay=offline`` for
# joint). ``--brain-inspired`` sets --feedback --prior=GMM --per-class --dg-gates --distill
# (options.py set_defaults; --hidden does nothing without conv layers), so BI-R less one
# component spells out the other four, and GR plus one component names that one (Fig. 8).
_GEN = "--replay=generative"
_CON = ("--prior=GMM", "--per-class")
METHODS = {m.name: m for m in (
    Method("none", "None", ()),
    Method("joint", "Joint", ("--replay=offline",)),
    Method("ewc", "EWC", ("--ewc",), ("ewc_lambda",)),
    Method("online_ewc", "Online EWC", ("--ewc", "--online"), ("ewc_lambda", "gamma")),
    Method("si", "SI", ("--si",), ("si_c",)),
    Method("xdg", "XdG", ("--xdg",), ("xdg_prop",), scenarios=("task",)),
    Method("lwf", "LwF", ("--replay=current", "--distill")),
    Method("generative", "GR", (_GEN,)),
    Method("generative_distill", "GR + distill", (_GEN, "--distill")),
    Method("bir", "BI-R", (_GEN, "--brain-inspired"), ("dg_prop",)),
    Method("bir_si", "BI-R + SI", (_GEN, "--brain-inspired", "--si"), ("si_c", "dg_prop")),
    Method("gr_rtf", "GR + rtf", (_GEN, "--feedback")),
    Method("gr_con", "GR + con", (_GEN, *_CON)),
    Method("gr_gat", "GR + gat", (_GEN, "--dg-gates"), ("dg_prop",)),
    Method("gr_dis", "GR + dis", (_GEN, "--distill")),
    Method("bir_no_rtf", "BI-R - rtf", (_GEN, *_CON, "--dg-gates", "--distill"), ("dg_prop",)),
    Method("bir_no_con", "BI-R - con", (_GEN, "--feedback", "--dg-gates", "--distill"),
           ("dg_prop",)),
    Method("bir_no_gat", "BI-R - gat", (_GEN, "--feedback", *_CON, "--distill")),
    Method("bir_no_dis", "BI-R - dis", (_GEN, "--feedback", *_CON, "--dg-gates"),
           ("dg_prop",)),
)}
# bir_keras shorthands with no counterpart here: ``buffer`` (not in their code) and the
# internal-replay variants ``gr_int`` / ``bir_no_int`` (no conv layers on MNIST)


def method_row(method: Method, scenario: str) -> Row:
    """Split MNIST, the paper's settings (their set_defaults for splitMNIST: 5 tasks x 2000
    iterations, batch 128, lr 0.001, 2 x 400 units), ``method`` in ``scenario``."""
    hp = SPLIT_MNIST_HPARAMS[scenario]
    ours_hp = tuple(f"{HPARAM_FLAGS[k][0]}={hp[k]:g}" for k in method.hparams)
    theirs_hp = tuple(f"{HPARAM_FLAGS[k][1]}={hp[k]:g}" for k in method.hparams)
    return Row(name=method.name,
               title=f"{method.title} split MNIST {SCENARIO_TITLES[scenario]}", tasks=5,
               iters=2000, batch=128, lr=0.001, fc_units=400,
               ours=("--experiment=split_mnist", f"--scenario={scenario}",
                     f"--method={method.name}", *ours_hp),
               theirs=("--experiment=splitMNIST", f"--scenario={scenario}", *method.theirs,
                       *theirs_hp))


def parse_methods(text: str, scenario: str) -> list[Method]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("--methods is empty")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"--methods: unknown {', '.join(unknown)} (known: "
                         f"{', '.join(METHODS)})")
    wrong = [n for n in names if scenario not in METHODS[n].scenarios]
    if wrong:
        raise InputError(f"--methods: {', '.join(wrong)} not in --scenario={scenario} (only "
                         f"{', '.join(sorted({s for n in wrong for s in METHODS[n].scenarios}))})")
    return [METHODS[n] for n in dict.fromkeys(names)]


def parse_seeds(text: str) -> list[int]:
    parts = [n.strip() for n in text.split(",") if n.strip()]
    if not parts:
        raise InputError("--seeds is empty")
    seeds = []
    for part in parts:
        try:
            seed = int(part)
        except ValueError:
            raise InputError(f"--seeds: {part!r} is not an integer") from None
        if not 0 <= seed < 2**31:
            raise InputError(f"--seeds: {seed} is not in [0, 2**31)")
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds: a seed is named twice in {text}")
    return seeds


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the standard error of the mean (sample s.d. / sqrt(n); None for n < 2)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, (var / n) ** 0.5


def _acc(side: Side | None) -> float | None:
    return side.final_average_accuracy if side is not None and side.ok else None


def summarize(runs: list[dict]) -> list[dict]:
    """Per method (in the order of ``runs``): each program's final average accuracy (in %)
    over the seeds it finished, mean ± s.e.m.; the difference of the means (ours - theirs)
    with its standard error sqrt(sem_ours^2 + sem_theirs^2), as for independent runs; and
    the mean ± s.e.m. of the per-seed differences over the seeds both finished (``paired``:
    a seed gives both programs the same class order, the authors' ``np.random.permutation``
    after ``np.random.seed``, but not the same initial weights or batches)."""
    out = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        row = {"method": name, "seeds": [r["seed"] for r in mine]}
        for key in ("ours", "reference"):
            values = [100 * a for a in (_acc(r[key]) for r in mine) if a is not None]
            mean, sem = mean_sem(values)
            row[key] = {"n": len(values), "mean": mean, "sem": sem,
                        "values": [round(v, 4) for v in values]}
        o, t = row["ours"], row["reference"]
        if o["mean"] is None or t["mean"] is None:
            row["difference"] = {"mean": None, "sem": None}
        else:
            sem = (None if o["sem"] is None or t["sem"] is None
                   else (o["sem"] ** 2 + t["sem"] ** 2) ** 0.5)
            row["difference"] = {"mean": o["mean"] - t["mean"], "sem": sem}
        diffs = [100 * (_acc(r["ours"]) - _acc(r["reference"])) for r in mine
                 if _acc(r["ours"]) is not None and _acc(r["reference"]) is not None]
        mean, sem = mean_sem(diffs)
        row["paired"] = {"n": len(diffs), "mean": mean, "sem": sem}
        out.append(row)
    return out


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    sem = "" if stat["sem"] is None else f" ± {stat['sem']:.2f}"
    return f"{stat['mean']:.2f}{sem} (n={stat['n']})"


def _signed(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:+.2f}" + ("" if stat["sem"] is None else f" ± {stat['sem']:.2f}")


def _acc_cell(side: Side | None) -> str:
    if side is None:
        return "not run"
    if not side.ok:
        return f"failed (exit {side.returncode})"
    acc = side.final_average_accuracy
    return "n/a" if acc is None else f"{100 * acc:.2f}"


def format_fidelity_table(runs: list[dict], info: dict) -> str:
    """Markdown: the machine and versions, per-seed final average accuracies of both programs,
    then per method mean ± s.e.m. of both and of their difference (ours - theirs)."""
    lines = _header_lines(info)
    lines.append(f"split MNIST {SCENARIO_TITLES[info['scenario']]}, {info['tasks']} tasks x "
                 f"{info['iters']} iters, batch 128, lr 0.001, 2 x 400 units (the paper's "
                 "settings); final average accuracy (%) over all tasks' test sets")
    lines += [
        "",
        "| method | seed | bir_keras (%) | wall (s) | authors' (%) | wall (s) "
        "| ours - theirs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        a, b = _acc(r["ours"]), _acc(r["reference"])
        diff = "n/a" if a is None or b is None else f"{100 * (a - b):+.2f}"
        walls = [_num(s.wall_s, 1) if s is not None and s.ok else "" for s in
                 (r["ours"], r["reference"])]
        lines.append(f"| {r['method']} | {r['seed']} | {_acc_cell(r['ours'])} | {walls[0]} "
                     f"| {_acc_cell(r['reference'])} | {walls[1]} | {diff} |")
    lines += [
        "",
        "| method | bir_keras mean ± s.e.m. | authors' mean ± s.e.m. "
        "| difference of the means (ours - theirs) ± s.e. "
        "| per-seed differences, mean ± s.e.m. |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in summarize(runs):
        lines.append(f"| {s['method']} | {_pm(s['ours'])} | {_pm(s['reference'])} "
                     f"| {_signed(s['difference'])} | {_signed(s['paired'])} |")
    return "\n".join(lines)


def fidelity_json(runs: list[dict], info: dict) -> dict:
    return {**info, "mode": "fidelity",
            "runs": [{"method": r["method"], "seed": r["seed"], "label": r["row"].title,
                      "ours": r["ours"].as_dict() if r["ours"] else None,
                      "reference": r["reference"].as_dict() if r["reference"] else None}
                     for r in runs],
            "summary": summarize(runs)}


VISDOM_STUB = '''"""Stand-in for visdom (benchmarks/vs_reference.py): imported, never used."""


class Visdom:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("visdom is a stand-in here: run without --visdom")
'''

# What main_cl.py prints last: "=> Average accuracy over all 10 classes: 0.9055"
# (Class-IL) or "... over all 2 tasks: 0.9712" (Task-IL and Domain-IL); also written to
# <results-dir>/acc-<param-stamp>.txt.
_THEIR_ACCURACY = re.compile(r"=> Average accuracy over all \d+ (?:classes|tasks): ([0-9.eE+-]+)")


class InputError(Exception):
    """Bad input: reported as one ``error:`` line with exit code 2."""


@dataclass
class Side:
    """One program's run of one row."""

    command: list[str]
    returncode: int | None = None
    wall_s: float | None = None
    user_s: float | None = None
    sys_s: float | None = None
    peak_rss_gib: float | None = None
    final_average_accuracy: float | None = None  # a fraction in [0, 1]
    log: str | None = None

    @property
    def cpu_s(self) -> float | None:
        if self.user_s is None or self.sys_s is None:
            return None
        return self.user_s + self.sys_s

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def as_dict(self) -> dict:
        return {"command": self.command, "returncode": self.returncode, "wall_s": self.wall_s,
                "cpu_s": self.cpu_s, "user_s": self.user_s, "sys_s": self.sys_s,
                "peak_rss_gib": self.peak_rss_gib,
                "final_average_accuracy": self.final_average_accuracy}


# -- parsing each program's output ----------------------------------------------------------
def parse_ours_accuracy(stdout: str) -> float | None:
    """``final_average_accuracy`` of the last JSON line apps.train printed (a fraction)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and "final_average_accuracy" in line):
            continue
        try:
            value = json.loads(line).get("final_average_accuracy")
        except (json.JSONDecodeError, AttributeError):
            continue
        return None if value is None else float(value)
    return None


def parse_reference_accuracy(stdout: str) -> float | None:
    """The last "=> Average accuracy over all N classes|tasks: X" main_cl.py printed."""
    found = _THEIR_ACCURACY.findall(stdout)
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


# -- checks before anything runs ------------------------------------------------------------
def mnist_files(data_dir: Path) -> dict[str, Path]:
    """The four MNIST IDX files in ``data_dir`` (each ``.gz`` or not), checked by magic number."""
    if not data_dir.is_dir():
        raise InputError(f"--data_dir {data_dir} is not a directory")
    found = {}
    for name, magic in MNIST_FILES.items():
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.is_file():
                break
        else:
            raise InputError(f"--data_dir {data_dir} has no {name}[.gz] (the four MNIST IDX "
                             "files are needed)")
        opener = gzip.open if candidate.suffix == ".gz" else open
        try:
            with opener(candidate, "rb") as f:
                head = f.read(4)
        except (OSError, EOFError) as e:
            raise InputError(f"cannot read {candidate}: {e}") from None
        if len(head) < 4 or int.from_bytes(head, "big") != magic:
            raise InputError(f"{candidate} is not an MNIST IDX file (magic number "
                             f"{int.from_bytes(head, 'big') if len(head) == 4 else 'missing'}, "
                             f"expected {magic})")
        found[name] = candidate
    return found


def check_reference(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"--reference {path} does not exist (a checkout of "
                         "GMvandeVen/brain-inspired-replay)")
    if not path.is_dir():
        raise InputError(f"--reference {path} is not a directory")
    for name in (REFERENCE_MAIN, "options.py", "data/load.py"):
        if not (path / name).is_file():
            raise InputError(f"--reference {path} has no {name}: not a checkout of "
                             "GMvandeVen/brain-inspired-replay")
    return path.resolve()


def check_reference_python(python: str) -> tuple[str, dict[str, str]]:
    """The reference interpreter's path and its torch / torchvision versions; refused unless
    it imports every module their ``main_cl.py`` needs (a side that fails after minutes of
    the other side's run is a wasted benchmark)."""
    exe = shutil.which(python) if os.sep not in python else python
    if exe is None or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        raise InputError(f"--reference_python {python} is not an executable file")
    probe = ("import json, platform, torch, torchvision\n"
             "for m in ('numpy', 'scipy', 'sklearn', 'matplotlib', 'tqdm'):\n"
             "    try:\n        __import__(m)\n"
             "    except ImportError:\n        raise SystemExit(f'no module named {m!r}')\n"
             "print(json.dumps({'python': "
             "platform.python_version(), 'torch': torch.__version__, "
             "'torchvision': torchvision.__version__}))")
    try:
        done = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=300,
                              env=_clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InputError(f"--reference_python {exe} did not run: {e}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"--reference_python {exe} cannot import torch, torchvision, numpy, "
                         f"scipy, scikit-learn, matplotlib and tqdm: {last}")
    try:
        versions = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise InputError(f"--reference_python {exe}: unexpected output {done.stdout!r}") from None
    return exe, versions


def parse_rows(text: str) -> list[Row]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("--rows is empty")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise InputError(f"--rows: unknown {', '.join(unknown)} (known: {', '.join(ROWS)})")
    return [ROWS[n] for n in dict.fromkeys(names)]


# -- the commands ---------------------------------------------------------------------------
def scaled_iters(row: Row, scale: float) -> int:
    return max(1, round(row.iters * scale))


def ours_command(row: Row, iters: int, data_dir: Path, work: Path,
                 precision: str = "float32", seed: int = SEED) -> list[str]:
    # --precision is ours alone: their code computes in float32
    return [sys.executable, "-m", "apps.train", *row.ours, f"--tasks={row.tasks}",
            f"--iters={iters}", f"--batch={row.batch}", f"--lr={row.lr:g}",
            f"--fc_units={row.fc_units}", f"--seed={seed}", f"--precision={precision}",
            f"--data_dir={data_dir}", f"--output_dir={work / 'out'}",
            f"--export_dir={work / 'export'}"]


def reference_command(python: str, reference: Path, row: Row, iters: int, data_root: Path,
                      work: Path, seed: int = SEED) -> list[str]:
    # main_cl.py's own flags (options.py): --no-gpus keeps it on the CPU; every folder it
    # writes to is in the work folder; no --pdf and no --visdom (no plots).
    return [python, str(reference / REFERENCE_MAIN), *row.theirs, f"--tasks={row.tasks}",
            f"--iters={iters}", f"--batch={row.batch}", f"--lr={row.lr:g}",
            f"--fc-units={row.fc_units}", f"--seed={seed}", "--no-gpus",
            f"--data-dir={data_root}", f"--model-dir={work / 'models'}",
            f"--plot-dir={work / 'plots'}", f"--results-dir={work / 'results'}"]


def prepare_reference_data(files: dict[str, Path], root: Path) -> Path:
    """torchvision's MNIST layout (``<root>/mnist/MNIST/raw/<name>``, uncompressed) of ``files``.

    Their data/load.py opens ``datasets.MNIST('<data-dir>/mnist', download=True)``, which
    downloads only when these four files are not there.
    """
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, src in files.items():
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(raw / name, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        else:
            os.symlink(src.resolve(), raw / name)
    return root


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra or {})
    return env


# -- running --------------------------------------------------------------------------------
def run_timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Side:
    """Run ``command`` to its end; wall, user, sys time and peak RSS from ``os.wait4``."""
    side = Side(command=command, log=str(log))
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        side.wall_s = time.perf_counter() - start
    proc.returncode = side.returncode = os.waitstatus_to_exitcode(status)
    side.user_s, side.sys_s = usage.ru_utime, usage.ru_stime
    side.peak_rss_gib = usage.ru_maxrss / 1024**2  # KiB on Linux
    return side


def log_tail(path: str | None, lines: int = 15) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    # their tqdm bars redraw with carriage returns: keep the last state of each line
    kept = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    return "\n".join(kept[-lines:])


# -- machine and versions -------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or "unknown"


# the extensions that decide how fast either program's matmuls run (bfloat16 and AMX
# included): the CPU model alone does not say, a virtual machine may hide AVX-512
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd",
                "sve")


def vector_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of ``VECTOR_FLAGS`` this CPU reports (Linux; empty where it cannot be read)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.split(":", 1)[0].strip() in ("flags", "Features"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in VECTOR_FLAGS if f in have]
    except OSError:
        pass
    return []


def git_commit(path: Path, *pathspecs: str) -> str:
    """``HEAD``'s short hash, "+ local changes" when tracked files (``pathspecs``) differ."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain",
                                 "--untracked-files=no", "--", *(pathspecs or (".",))],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    dirty = " + local changes" if status.returncode == 0 and status.stdout.strip() else ""
    return head.stdout.strip() + dirty


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "vector_isa": vector_isa(), "cores": os.cpu_count(),
            "usable_cores": usable,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


# -- the table ------------------------------------------------------------------------------
def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cells(side: Side | None) -> list[str]:
    if side is None:
        return ["not run"] + [""] * 3
    if not side.ok:
        return [f"failed (exit {side.returncode})", _num(side.cpu_s, 0),
                _num(side.peak_rss_gib, 2), "n/a"]
    acc = side.final_average_accuracy
    return [_num(side.wall_s, 1), _num(side.cpu_s, 0), _num(side.peak_rss_gib, 2),
            "n/a" if acc is None else f"{100 * acc:.2f}"]


def ratio(ours: Side | None, theirs: Side | None) -> float | None:
    if ours is None or theirs is None or not (ours.ok and theirs.ok) or not ours.wall_s:
        return None
    return theirs.wall_s / ours.wall_s


def row_label(row: Row, iters: int, precision: str = "float32") -> str:
    ours = "" if precision == "float32" else f", bir_keras in {precision}"
    return f"{row.title}, {row.tasks} tasks x {iters} iters, seed {SEED}{ours}"


def _header_lines(info: dict) -> list[str]:
    """The machine, both programs' versions, the date (and a scaled-iterations warning)."""
    m, o, r = info["machine"], info["ours"], info["reference"]
    lines = [
        f"CPU: {m['cpu']} ({', '.join(m.get('vector_isa') or ['extensions not read'])}), "
        f"{m['cores']} cores ({m.get('usable_cores', m['cores'])} usable); "
        f"load average at start {', '.join(f'{x:.2f}' for x in m.get('load_avg_at_start', []))}",
        f"bir_keras: commit {o['commit']} (Python {o['python']}, TensorFlow {o['tensorflow']}, "
        f"Keras {o['keras']})",
        f"authors' code: commit {r['commit']} (Python {r['python']}, torch {r['torch']}, "
        f"torchvision {r['torchvision']})",
        f"date: {info['date']}",
    ]
    if info.get("iters_scale", 1.0) != 1.0:
        lines.append(f"**iterations scaled by {info['iters_scale']:g}: a quick check that both "
                     "programs run, not a measurement**")
    return lines


def format_table(results: list[dict], info: dict) -> str:
    """Markdown: the machine and versions, then one line per row.

    ``results``: dicts with ``row`` (a Row), ``iters``, ``ours`` and ``reference`` (Side or
    None). ``info``: ``machine``, ``ours``, ``reference``, ``date``, ``iters_scale``.
    """
    lines = _header_lines(info)
    lines += [
        "",
        "| run | bir_keras wall (s) | CPU (s) | peak RSS (GiB) | final avg acc (%) "
        "| authors' wall (s) | CPU (s) | peak RSS (GiB) | final avg acc (%) "
        "| ratio (their wall / ours) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        q = ratio(res["ours"], res["reference"])
        cells = [row_label(res["row"], res["iters"], info.get("precision", "float32")),
                 *_cells(res["ours"]),
                 *_cells(res["reference"]), "n/a" if q is None else f"{q:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results: list[dict], info: dict) -> dict:
    rows = []
    for res in results:
        row = res["row"]
        label = row_label(row, res["iters"], info.get("precision", "float32"))
        rows.append({"row": row.name, "label": label, "tasks": row.tasks,
                     "iters": res["iters"], "batch": row.batch, "lr": row.lr,
                     "fc_units": row.fc_units, "seed": SEED,
                     "ours": res["ours"].as_dict() if res["ours"] else None,
                     "reference": res["reference"].as_dict() if res["reference"] else None,
                     "ratio_wall": ratio(res["ours"], res["reference"])})
    return {**info, "rows": rows}


# -- main -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # one error: line and exit 2 for bad input, an empty path flag included
    p = Parser(prog="python -m benchmarks.vs_reference",
               description="Run bir_keras and the authors' code side by side: "
                           "timed rows, or methods x seeds for their accuracies.",
               paths=("reference", "data_dir", "reference_python", "out"))
    p.add_argument("--reference", required=True,
                   help="a checkout of GMvandeVen/brain-inspired-replay")
    p.add_argument("--data_dir", required=True, help="the four MNIST IDX files (.gz or not)")
    p.add_argument("--rows", default=None,
                   help=f"speed rows, comma-separated: {', '.join(ROWS)} (default: all; not "
                        "with --methods)")
    p.add_argument("--methods", default=None,
                   help="fidelity: these methods (bir_keras' --method shorthands, "
                        f"comma-separated: {', '.join(METHODS)}) on split MNIST at the "
                        "paper's settings, each seed of --seeds, both programs; a table of "
                        "final average accuracies per seed and mean ± s.e.m. per method")
    p.add_argument("--seeds", default=None,
                   help="with --methods: comma-separated seeds (default "
                        f"{','.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--scenario", default=None, choices=SCENARIOS,
                   help="with --methods: split MNIST's scenario (default class)")
    p.add_argument("--iters_scale", type=float, default=1.0,
                   help="multiply the iterations per task (quick check; default 1)")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"],
                   help="bir_keras' --precision (default float32, its default; their code "
                        "runs in float32 either way)")
    p.add_argument("--reference_python", default="python3",
                   help="a Python with torch and torchvision for their code (default python3)")
    p.add_argument("--reference_threads", type=int, default=None,
                   help="OMP_NUM_THREADS and MKL_NUM_THREADS for their code (default: unset, "
                        "torch's own choice, one thread per core). On cores shared with other "
                        "work torch's threads wait on each other: 1 ran their split MNIST "
                        "iterations 8x faster on a loaded 2-core machine")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if an earlier run of this benchmark wrote it")
    p.add_argument("--keep_work_dir", action="store_true",
                   help="keep the temporary folder with both programs' logs and outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0 < args.iters_scale < float("inf"):  # NaN and inf too
            raise InputError(f"--iters_scale must be a finite number > 0, got "
                             f"{args.iters_scale}")
        if args.reference_threads is not None and not 1 <= args.reference_threads <= 1024:
            raise InputError(f"--reference_threads must be in 1..1024, got "
                             f"{args.reference_threads}")
        if args.methods is None:
            for flag in ("seeds", "scenario"):
                if getattr(args, flag) is not None:
                    raise InputError(f"--{flag} goes with --methods (the speed rows run "
                                     f"seed {SEED} in their own scenario)")
            rows = parse_rows(",".join(ROWS) if args.rows is None else args.rows)
            jobs = [(row, SEED) for row in rows]
        else:
            if args.rows is not None:
                raise InputError("--rows and --methods are two modes: give one of them")
            scenario = args.scenario or "class"
            methods = parse_methods(args.methods, scenario)
            seeds = parse_seeds(",".join(map(str, DEFAULT_SEEDS)) if args.seeds is None
                                else args.seeds)
            jobs = [(method_row(m, scenario), seed) for m in methods for seed in seeds]
        reference = check_reference(Path(args.reference).expanduser())
        data_dir = Path(args.data_dir).expanduser().resolve()
        files = mnist_files(data_dir)
        out = Path(args.out).expanduser() if args.out else None
        if out is not None:
            try:
                check_out(out, args.overwrite, PROGRAM)
            except PathRefused as e:
                raise InputError(str(e)) from None
        python, ref_versions = check_reference_python(args.reference_python)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "iters_scale": args.iters_scale,
        "precision": args.precision,
        "ours": {"commit": git_commit(REPO_ROOT, "bir_keras", "apps"),
                 "python": platform.python_version(), "tensorflow": _version("tensorflow"),
                 "keras": _version("keras")},
        "reference": {"path": str(reference), "commit": git_commit(reference, "*.py"),
                      "python_exe": python, **ref_versions},
        "data_dir": str(data_dir),
        "reference_threads": args.reference_threads,
    }
    fidelity = args.methods is not None
    if fidelity:
        info.update(scenario=scenario, seeds=seeds, methods=[m.name for m in methods],
                    tasks=jobs[0][0].tasks, iters=scaled_iters(jobs[0][0], args.iters_scale))
    work = Path(tempfile.mkdtemp(prefix="vs_reference-"))
    failed = finished = False
    results = []
    try:
        ref_data = prepare_reference_data(files, work / "reference_data")
        stub = work / "stub"
        (stub / "visdom").mkdir(parents=True)
        (stub / "visdom" / "__init__.py").write_text(VISDOM_STUB)
        ours_env = _clean_env()
        ref_env = _clean_env({"PYTHONPATH": str(stub), "MPLBACKEND": "Agg", **(
            {} if args.reference_threads is None else
            {k: str(args.reference_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})})
        for n, (row, seed) in enumerate(jobs, 1):
            iters = scaled_iters(row, args.iters_scale)
            res = {"row": row, "method": row.name, "seed": seed, "iters": iters, "ours": None,
                   "reference": None}
            results.append(res)
            tag = f"[{n}/{len(jobs)} {row.name} seed {seed}]"
            run_dir = work / (f"{row.name}-seed{seed}" if fidelity else row.name)

            ours_work = run_dir / "ours"
            ours_work.mkdir(parents=True)
            cmd = ours_command(row, iters, data_dir, ours_work, args.precision, seed)
            print(f"{tag} bir_keras: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            side = run_timed(cmd, REPO_ROOT, ours_env, ours_work / "log.txt")
            side.final_average_accuracy = parse_ours_accuracy(Path(side.log).read_text(
                errors="replace"))
            res["ours"] = side
            _report(side)

            ref_work = run_dir / "reference"
            ref_work.mkdir(parents=True)
            cmd = reference_command(python, reference, row, iters, ref_data, ref_work, seed)
            print(f"{tag} authors' code: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            side = run_timed(cmd, ref_work, ref_env, ref_work / "log.txt")
            side.final_average_accuracy = parse_reference_accuracy(Path(side.log).read_text(
                errors="replace"))
            res["reference"] = side
            _report(side)
            failed |= not (res["ours"].ok and res["reference"].ok)
        finished = True
    except KeyboardInterrupt:
        print(f"interrupted; logs kept in {work}", file=sys.stderr)
        return 130
    finally:
        if finished and not (failed or args.keep_work_dir):
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"a side failed; logs kept in {work}", file=sys.stderr)
    elif args.keep_work_dir:
        print(f"logs and outputs kept in {work}", file=sys.stderr)

    print(format_fidelity_table(results, info) if fidelity else format_table(results, info))
    if out is not None and failed:
        # a record with a failed side measures nothing: the earlier one stays
        print(f"{out} not written (a side failed)", file=sys.stderr)
    elif out is not None:
        try:
            write_out(out, (fidelity_json if fidelity else to_json)(results, info), PROGRAM)
        except (PathRefused, OSError) as e:  # it changed meanwhile, or the disk refused
            print(f"error: {out} not written: {e}", file=sys.stderr)
            return 1
        print(f"wrote {out}", file=sys.stderr)
    return 1 if failed else 0


def _report(side: Side) -> None:
    if side.ok:
        acc = side.final_average_accuracy
        print(f"  done: {side.wall_s:.1f} s wall, {side.cpu_s:.0f} s CPU, "
              f"{side.peak_rss_gib:.2f} GiB peak, final average accuracy "
              f"{'n/a' if acc is None else f'{100 * acc:.2f}'}", file=sys.stderr, flush=True)
    else:
        print(f"  failed with exit {side.returncode}; last lines of {side.log}:\n"
              f"{log_tail(side.log)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
