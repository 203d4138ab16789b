r"""Compare methods over seeds: the paper's figures as one command.

    python -m apps.compare --experiment=split_mnist --scenario=class \
        --methods=none,joint,ewc,online_ewc,si,lwf,generative,generative_distill,bir,bir_si \
        --seeds=3 --output_dir=results/fig3_class --data_dir=DIR

Every apps.train flag (``--iters``, ``--data_dir``, ...) passes through to apps.train; each is
checked as apps.train checks it, and every planned run's settings as a whole, before any run
starts. Each run is cached under ``output_dir/runs/`` by a stamp of its settings: a repeated
compare runs only what is new or changed (flags that only change how a run reports or
checkpoints, ``--checkpoint_every``, ``--progress_every``, do not change the stamp). Writes
``table.md``, ``table.csv`` and ``accuracy.png`` (average accuracy against the number of
tasks, mean and standard-error band), and ``sweep.png`` with ``--sweep``.

``--seeds_at_once=K`` trains up to K seeds of one method (consecutive uncached seeds) in
one apps.train process and one vectorised step (apps.train ``--seeds_at_once``), then moves
each seed's output and export into its own run directory, cached as that seed's run: a
packed seed's numbers are those of its ``--nojit_compile`` run alone up to float rounding
(README, "Several seeds at once"). The default packs as many seeds as fit in memory, and
runs alone the settings that cannot be packed.

``--output_dir`` is apps.compare's own folder, marked by a ``.bir_keras`` marker (kind
``compare``) that lists what it holds: a new or empty folder becomes one; an existing folder
without that marker, or holding anything else, is refused before any run starts (nothing in
it is ever replaced), and a compare holds it for as long as it works (a second compare on it
is refused).

Exit codes: 0 done, 1 a run failed or none finished (the tables show those that did),
2 refused input (one ``error:`` line, no run started), 130 Ctrl-C (the finished runs stay
cached; the runs in progress are stopped and are not).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from absl import flags

from apps import common
from apps import train as _train  # noqa: F401 - defines apps.train's flags, which pass through
from bir_keras import appfiles, rundirs
from bir_keras.config import (
    MAX_SEEDS_AT_ONCE,
    METHODS,
    ConfigError,
    check_seeds_at_once,
    unpackable,
)
from bir_keras.fileio import atomic_dir, atomic_write_json, atomic_write_text

FLAGS = flags.FLAGS
# apps.train flags that apps.compare sets for each run itself (given, they are refused)
SET_PER_RUN = {"method": "list methods in --methods", "seed": "use --seeds and --first_seed",
               "output_dir": "", "export_dir": "each run's directories are under "
               "--output_dir/runs/", "resume_from": "each run's directories are under "
               "--output_dir/runs/", "overwrite": "apps.compare replaces only its own runs"}
# apps.train's flags (defined by apps.common): checked here, passed through to each run
TRAIN_FLAGS = frozenset(f.name for f in FLAGS.flags_by_module_dict().get("apps.common", [])
                        if f.name != "tf_log")
# --help lists apps.train's flags too, but those that apps.compare sets itself
for _key_flag in sorted(TRAIN_FLAGS | {"tf_log"}):
    if _key_flag not in SET_PER_RUN or _key_flag == "output_dir":
        flags.declare_key_flag(_key_flag)
MAX_RUNS = 10_000       # runs one compare may plan (methods x sweep values x seeds)
MAX_PARALLEL = 256      # runs at once
MAX_TITLE = 200         # characters of --title
NAME_MAX, PATH_MAX = 255, 4096  # bytes of a file name, of a path (Linux)
# the longest path a compare folder holds beyond its own (runs/<run folder name, up to ~160>
# /export/seed<s>-interrupted/saved_model/variables/..., temporaries): the rest is its own
PATH_ROOM = PATH_MAX - 640
flags.DEFINE_list("methods", ["none", "joint"], f"methods to compare: {', '.join(METHODS)}")
flags.DEFINE_integer("seeds", 3, "number of seeds (first_seed, first_seed + 1, ...) per method "
                     f"(default 3; at most {MAX_RUNS:,} runs in all: methods x sweep values x "
                     "seeds)")
flags.DEFINE_integer("first_seed", 0, "first seed (default 0)")
flags.DEFINE_integer("parallel", 0, f"runs at once, 0 to {MAX_PARALLEL}; 0: cores // 2, at "
                     "least 1")
flags.DEFINE_string("title", None, f"plot title, at most {MAX_TITLE} characters (default: "
                    "experiment and scenario)")
flags.DEFINE_bool("only_cached", False, "tabulate the finished runs, run nothing")
flags.DEFINE_string("sweep", None, "sweep an apps.train flag over values, e.g. "
                    "batch_replay:1,4,16,128 (Fig. 4) or g_fc_units:10,25,100,400")
FLAGS["seeds_at_once"].help = ("seeds of one method trained together in one apps.train "
                                "process and step, at least 1 (more than --seeds packs them "
                                "all)")
# its default here is not apps.train's 1 (the flag is apps.train's: say what compare does)
FLAGS["seeds_at_once"].default_as_str = ("as many as fit in memory; 1 for the settings that "
                                         "cannot be packed")
FLAGS["output_dir"].help = ("apps.compare's folder (required): runs/, table.md, table.csv, "
                            "accuracy.png, sweep.png; a new or empty folder, or one an earlier "
                            "compare wrote (its runs are reused); anything else is refused")
common.validate("seeds", lambda v: v >= 1, "at least 1")
common.validate("first_seed", lambda v: 0 <= v < 2 ** 32, "in [0, 2^32)")
common.validate("parallel", lambda v: 0 <= v <= MAX_PARALLEL,
                f"in [0, {MAX_PARALLEL}] (0: cores // 2)")
flags.register_multi_flags_validator(
    ["first_seed", "seeds"], lambda d: d["first_seed"] + d["seeds"] <= 2 ** 32,
    message="--first_seed + --seeds must be at most 2^32 (seeds are in [0, 2^32))")

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

# apps.train flags that change how a run executes, not what it computes: runs with only
# these beside --method and --seed have the paper's settings
EXECUTION_FLAGS = {"data_dir", "jit_compile", "strategy", "num_logical_cpus", "deterministic",
                   "log_every", "progress_every", "tf_log", "eval_batch", "checkpoint_every",
                   "xla_cache_dir"}
# ... and those of them that cannot change a run's numbers at all: left out of its stamp, so
# that a run is cached whatever they are
NOT_STAMPED = {"progress_every", "tf_log", "checkpoint_every", "xla_cache_dir"}


def flag_name(arg: str) -> str:
    """The flag an argument sets: ``--nojit_compile`` -> ``jit_compile``."""
    name = arg.lstrip("-").split("=", 1)[0]
    if name.startswith("no") and name not in FLAGS and name[2:] in FLAGS:
        return name[2:]
    return name


def stamp(args: list[str]) -> str:
    """A short hash of a run's settings (its apps.train arguments, order-independent; the
    flags that cannot change its numbers are left out)."""
    kept = [a for a in args if flag_name(a) not in NOT_STAMPED]
    return hashlib.sha256(json.dumps(sorted(kept)).encode()).hexdigest()[:12]


def train_flag_values(args: list[str]) -> flags.FlagValues:
    """apps.train's flags (copies with their defaults and validators) parsed from ``args``;
    raises ``flags.Error`` as apps.train would refuse them."""
    fv = flags.FlagValues()
    for name in TRAIN_FLAGS:
        f = copy.deepcopy(FLAGS[name])
        f.unparse()
        fv[name] = f
    fv(["apps.train", *args])
    return fv


def parse_sweep(spec: str | None) -> tuple[str | None, list[str | None]]:
    """``flag:v1,v2,...`` -> (flag, values as apps.train reads them); None -> (None, [None]).
    Raises ``ValueError`` for a flag apps.train does not have (or apps.compare sets, or one
    that cannot change a run's numbers), an empty value, a value that is not of the flag's
    type, a repeated value (a value out of range is refused with the planned run's
    settings, ``check_run``)."""
    if spec is None:
        return None, [None]
    if ":" not in spec:
        raise ValueError(f"--sweep must look like flag:v1,v2 (got {spec!r})")
    name, values = spec.split(":", 1)
    name = name.strip().lstrip("-")
    if name not in TRAIN_FLAGS or name in SET_PER_RUN or name in NOT_STAMPED \
            or name in ("experiment", "scenario", "seeds_at_once"):
        why = ("it does not change a run's numbers" if name in NOT_STAMPED or name == "tf_log"
               else "it is set by apps.compare" if name in TRAIN_FLAGS
               else "no such apps.train flag")
        raise ValueError(f"--sweep={spec}: cannot sweep --{name} ({why}); sweep an apps.train "
                         "flag such as batch_replay, g_fc_units, iters")
    out: list[str | None] = []
    for v in (v.strip() for v in values.split(",")):
        if not v:
            raise ValueError(f"--sweep={spec}: an empty value (values are separated by "
                             "single commas)" if values.strip() else
                             f"--sweep={spec}: no values to sweep over")
        try:
            f = train_flag_values([f"--{name}={v}"])[name]
        except flags.Error as e:
            raise ValueError(f"--sweep={spec}: {v!r} is not a value of --{name} ({e})") from None
        shown = str(f.value).lower() if isinstance(f.value, bool) else str(f.value)
        if shown in out:
            raise ValueError(f"--sweep={spec}: --{name}={shown} is listed twice")
        out.append(shown)
    return name, out


def sweep_size(spec: str | None) -> int:
    """How many values ``--sweep`` lists (1 without a sweep), counted before they are
    parsed."""
    return 1 if spec is None or ":" not in spec else spec.split(":", 1)[1].count(",") + 1


# what a sweep value may keep in a file name as it is (nothing else: no '/', no NUL, no
# leading '.', no '..'); a value with anything else, or longer than NAME_PART, is written as
# a slug of it, '~' and a hash of the value ('~' never appears in a value kept as it is)
KEPT = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_+=.-]*")
NAME_PART = 40


def name_part(value: str) -> str:
    """``value`` (a sweep value) as a part of a file name: itself where it is a safe, short
    name (``KEPT``, ``NAME_PART`` characters at most, no ``..``), else a readable slug of it
    with ``~`` and a hash of the value, so that two values never give one name."""
    if len(value) <= NAME_PART and KEPT.fullmatch(value) and ".." not in value:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9_+=-]+", "_", value).strip("_")
    return f"{slug[:NAME_PART - len(digest) - 1]}~{digest}"


def plan(methods: list[str], seeds: list[int], experiment: str, scenario: str,
         passthrough: list[str], root: Path, sweep: str | None = None) -> list[dict]:
    """One entry per (method, sweep value, seed): its arguments, stamp and run directory
    (``<root>/runs/<name>``, a single path component whatever the sweep value is: see
    ``name_part``)."""
    name, values = parse_sweep(sweep)
    if not methods:
        raise ValueError("--methods is empty: name at least one method")
    runs = []
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m in methods[:i]:
            raise ValueError(f"--methods lists {m} twice")
        for v in values:
            for s in seeds:
                args = [f"--experiment={experiment}", f"--scenario={scenario}", f"--method={m}",
                        f"--seed={s}", *passthrough] + ([f"--{name}={v}"] if name else [])
                st = stamp(args)
                # key: how tables and messages name the setting; tag: how file names do
                key = f"{m}-{name}{v}" if name else m
                tag = f"{m}-{name}{name_part(v)}" if name else m
                d = root / "runs" / f"{tag}-s{s}-{st}"
                runs.append({"method": m, "value": v, "key": key, "tag": tag, "seed": s,
                             "args": args, "stamp": st, "dir": d})
    return runs


def check_run(args: list[str]):
    """Refuse (``ConfigError``, ``DataError``) a run's arguments that apps.train would
    refuse: a flag's value, incompatible settings, a protocol without that many tasks, a
    ``--data_dir`` or (with conv layers) ``--conv_weights`` that does not exist, your own
    data that the run could not cut into tasks, a run that needs more memory than is
    available; else its resolved config."""
    from bir_keras.config import resolve

    try:
        fv = train_flag_values(args)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    config = common.config_from_flags(fv)
    c = resolve(config)                        # as apps.train: bir_keras.config.check
    common.check_data_dir(fv.data_dir)         # as apps.train, before any data loads
    common.check_conv_weights(c)
    common.check_stream(config, c)             # your own data: read and cut as the run will
    check_memory(c, 1)
    return c


def check_memory(c, seeds: int) -> None:
    """apps.train's check that a run (of ``seeds`` seeds at once) fits in the memory
    available (``common.check_memory``; apps.train stops such a run before anything loads),
    as a refusal (``ConfigError``)."""
    try:
        common.check_memory(c, seeds)
    except common.TrainingFailed as e:
        more = f" or --seeds_at_once ({seeds} seeds at once)" if seeds > 1 else ""
        raise ConfigError(f"{e}{more}") from None


def pack_size(args: list[str], explicit: int | None, seeds: int, workers: int) -> int:
    """How many seeds of the setting ``args`` one apps.train packs: ``explicit``
    (``--seeds_at_once``; refused with ``ConfigError`` above 1 where the setting cannot be
    packed) or, by default, as many of ``seeds`` as fit in the memory available to
    ``workers`` runs at once (1 where the setting cannot be packed)."""
    from bir_keras.appfiles import available_memory
    from bir_keras.config import resolve

    c = resolve(common.config_from_flags(train_flag_values(args)))
    why = unpackable(c)
    if explicit is not None:
        if explicit > 1 and why:
            raise ConfigError(why)
        # apps.train's rule of a pack (1 <= K <= MAX_SEEDS_AT_ONCE); more than that packs
        # as many as one apps.train takes
        k = min(explicit, MAX_SEEDS_AT_ONCE) if explicit >= 1 else explicit
        check_seeds_at_once(c, k)
        return k
    if why:
        return 1
    free = available_memory()
    if free is None:
        return min(seeds, MAX_SEEDS_AT_ONCE)
    return max(1, min(seeds, MAX_SEEDS_AT_ONCE,
                      int(free // (common.memory_estimate(c)[0] * workers))))


def groups_of(todo: list[dict], sizes: dict[str, int]) -> list[list[dict]]:
    """The runs to do, as packs: consecutive seeds of one method (and sweep value), at most
    ``sizes[key]`` per pack; every method's first pack before any method's second."""
    by_key: dict[str, list[dict]] = {}
    for r in todo:
        by_key.setdefault(r["key"], []).append(r)
    out = []
    for key, runs in by_key.items():
        runs.sort(key=lambda r: r["seed"])
        for r in runs:
            g = out[-1] if out and out[-1][0]["key"] == key else None
            if g and len(g) < sizes[key] and r["seed"] == g[-1]["seed"] + 1:
                g.append(r)
            else:
                out.append([r])
    out.sort(key=lambda g: g[0]["seed"])
    return out


def is_cached(run: dict) -> bool:
    """A run is done when its results.json exists with the same stamp."""
    res = run["dir"] / "out" / "results.json"
    st = run["dir"] / "stamp.json"
    try:
        return res.exists() and json.loads(st.read_text())["stamp"] == run["stamp"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


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


def changed_settings(passthrough: list[str], sweep: str | None = None) -> list[str]:
    """The passed-through flags that make these runs differ from the paper's settings."""
    out = [a for a in passthrough if flag_name(a) not in EXECUTION_FLAGS]
    return out + ([f"--sweep={sweep}"] if sweep else [])


def write_tables(stats: dict, experiment: str, scenario: str, root: Path,
                 changed: list[str] | None = None, folder: Folder | None = None) -> str:
    """table.md and table.csv: mean +/- SEM per method, with the published number (marked
    when these runs' settings are not the paper's: ``changed`` names what differs), written
    through ``folder`` (the compare folder's checks) where given."""
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
    for name, text in (("table.md", md), ("table.csv", buf.getvalue())):
        def write(tmp: str, text: str = text) -> None:
            Path(tmp).write_text(text)

        if folder is not None:
            folder.write(name, write)
        else:
            appfiles.write_file(root / name, write)
    return md


# -- the output folder: apps.compare's own -------------------------------------------------
# the folder of a pack of seeds (``Runner._execute``): <tag>-s<first>-s<last>-pack-<stamp>
PACK_NAME = re.compile(r".+-s[0-9]+-s[0-9]+-pack-[0-9a-f]{12}")


def _expected(entry: str) -> bool:
    """Whether an entry the marker does not list is one that apps.compare (or an apps.train
    run of it) may have left since the marker was last written: ``runs/``, a run directory
    in it, its ``log.txt`` or ``stamp.json``, a temporary file of an atomic write, and the
    ``out/`` and ``export/`` folders of a pack of seeds, in which each seed's directories
    (``seed<s>``, ``seed<s>-interrupted`` after Ctrl-C) carry markers of their own, checked
    against them."""
    parts = entry.rstrip("/").split("/")
    base = parts[-1]
    if appfiles.TEMP_NAME.match(base):
        return True
    if parts[0] != "runs":
        return False
    if len(parts) == 3 and entry.endswith("/") and PACK_NAME.fullmatch(parts[1]) \
            and base in ("out", "export"):
        return True
    return (len(parts) <= 2 and entry.endswith("/")) or \
        (len(parts) == 3 and base in ("log.txt", "stamp.json"))


def unexpected_entries(root: Path) -> list[str]:
    """What ``root`` (a compare folder) holds that apps.compare did not write (looking into
    the folders it may have left unlisted: what they hold must be expected too; a symbolic
    link is never apps.compare's)."""
    out = []
    for e in rundirs.foreign_entries(root, rundirs.COMPARE):
        if not _expected(e) or (root / e).is_symlink():
            out.append(e)
        elif e.endswith("/") and not appfiles.TEMP_NAME.match(e.rstrip("/").split("/")[-1]):
            out += _unlisted(root, e)
    return out


def _unlisted(root: Path, folder: str) -> list[str]:
    """What the folder ``folder`` (relative to ``root``, expected but not listed by the
    marker) holds that is not expected; a sub-folder with a marker of its own is checked
    against it (``rundirs.foreign_entries``)."""
    try:
        names = sorted(os.listdir(root / folder))
    except OSError as e:
        return [f"{folder} (unreadable: {e.strerror or e})"]
    out = []
    for name in names:
        path = root / folder / name
        is_dir = path.is_dir() and not path.is_symlink()
        entry = f"{folder}{name}{'/' if is_dir else ''}"
        if is_dir and (path / rundirs.MARKER).is_file():
            kind = rundirs.marker_kind(path)
            out += [f"{entry}{q}" for q in rundirs.foreign_entries(path, kind)] \
                if kind in rundirs.CONTENTS else [entry]
        elif not _expected(entry) or path.is_symlink():
            out.append(entry)
        elif is_dir and not appfiles.TEMP_NAME.match(name):
            out += _unlisted(root, entry)
    return out


def check_output_dir(root: Path) -> None:
    """Refuse (``PathRefused``) an ``--output_dir`` that apps.compare may not write into:
    absent, empty or marked as a compare folder holding only what compare writes."""
    try:
        _check_output_dir(root)
    except OSError as e:   # e.g. a name too long for the file system
        raise rundirs.PathRefused(f"--output_dir={root}: cannot check it "
                                  f"({e.strerror or e})") from None


def _check_output_dir(root: Path) -> None:
    flag = f"--output_dir={root}"
    if not os.path.lexists(root):
        rundirs.check_writable(root, "--output_dir")
        return
    if root.is_symlink() or not root.is_dir():
        raise rundirs.PathRefused(f"{flag} exists and is not a directory; it is never "
                                  "replaced: choose another --output_dir")
    try:
        entries = sorted(p.name for p in root.iterdir())
    except OSError as e:
        raise rundirs.PathRefused(f"{flag}: cannot read it ({e.strerror or e})") from None
    if not entries:
        rundirs.check_writable(root, "--output_dir")
        return
    kind = rundirs.marker_kind(root)
    if kind != rundirs.COMPARE:
        why = (f"is marked as a bir_keras {kind} directory" if kind else
               f"has no {rundirs.MARKER} marker of apps.compare")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise rundirs.PathRefused(
            f"{flag} exists, holds {shown} and {why}: apps.compare writes its tables and runs "
            "only into a new or empty folder, or one an earlier compare wrote; nothing there "
            "is replaced: choose another --output_dir")
    others = unexpected_entries(root)
    if others:
        raise rundirs.PathRefused(
            f"{flag} holds files apps.compare did not write ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); nothing is written into it: move them "
            "away or choose another --output_dir")
    rundirs.check_writable(root, "--output_dir")


class Folder:
    """The compare folder while this compare holds it: its marker is rewritten as runs are
    added (never over something that is not ours), and at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()
        self.written: set[str] = set()  # the tables and plots this compare wrote

    def write(self, name: str, write) -> Path:
        """Write the table or plot ``name`` (``write(tmp_path)``), never over a file that is
        not apps.compare's (checked at the moment of replacing it)."""
        path = appfiles.write_file(self.root / name, write, check=self.check)
        self.written.add(name)
        return path

    def mark(self) -> bool:
        """List what the folder holds in its marker, unless something appeared there that
        is not apps.compare's (then the marker is left as it was)."""
        with self.lock:
            for _ in range(5):  # a run renaming its temporary folder while this walks
                try:
                    if set(unexpected_entries(self.root)) - self.written:
                        return False
                    rundirs.write_marker(self.root, rundirs.COMPARE)
                    return True
                except FileNotFoundError:
                    time.sleep(0.05)
            return False

    def check(self, path: Path) -> None:
        """At the moment a table or plot replaces ``path``: it must be absent or ours."""
        if not os.path.lexists(path):
            return
        if path.name in rundirs.foreign_entries(self.root, rundirs.COMPARE) \
                or path.is_symlink() or not path.is_file():
            raise rundirs.PathRefused(
                f"{path} appeared while apps.compare was working and is not its own; nothing "
                f"was replaced (the finished runs are cached in {self.root / 'runs'}): move it "
                "away and run the same command again")


# -- running ---------------------------------------------------------------------------
class Runner:
    """Runs apps.train for the planned runs, a few at a time, each in its own process group
    (so that a terminal's Ctrl-C reaches apps.compare alone, which passes it on once)."""

    def __init__(self, folder: Folder):
        self.folder = folder
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.active = 0   # runs being executed (their process, then their stamp and marker)
        self.live: dict[int, tuple[list[dict], subprocess.Popen]] = {}
        self.stopping = False
        self.stopped: list[dict] = []   # in progress when Ctrl-C came

    def execute(self, group: list[dict]) -> tuple[list[dict], int | None, str]:
        """Run apps.train for one (method, seed), or for a pack of consecutive seeds of one
        method (``groups_of``), into the runs' cache directories; rc None: not started
        (Ctrl-C came first)."""
        with self.lock:
            self.active += 1
        try:
            return self._execute(group)
        finally:
            with self.lock:
                self.active -= 1
                self.idle.notify_all()

    def _execute(self, group: list[dict]) -> tuple[list[dict], int | None, str]:
        first = group[0]
        # one seed: its own run directory; a pack: one directory for the pack, whose seeds
        # are moved into their run directories once it has finished
        d = first["dir"] if len(group) == 1 else first["dir"].with_name(
            f"{first['tag']}-s{first['seed']}-s{group[-1]['seed']}-pack-{first['stamp']}")
        log_path = d / "log.txt"
        with self.lock:
            if self.stopping:
                return group, None, str(log_path)
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "apps.train", *first["args"], f"--output_dir={d / 'out'}",
               f"--export_dir={d / 'export'}", "--overwrite"]
        if len(group) > 1:
            cmd.append(f"--seeds_at_once={len(group)}")
        repo = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        with open(log_path, "w") as log:
            self.folder.mark()  # the new run directory and its log are apps.compare's
            with self.lock:
                if self.stopping:
                    return group, None, str(log_path)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
                self.live[proc.pid] = (group, proc)
            try:
                rc = proc.wait()
            finally:
                with self.lock:
                    self.live.pop(proc.pid, None)
        if rc == 0:
            for run in group:
                if len(group) > 1:
                    unpack(d, run)
                atomic_write_text(run["dir"] / "stamp.json",
                                  json.dumps({"stamp": run["stamp"], "args": run["args"]}))
            if len(group) > 1:   # the pack's folder, now empty but for its log
                log_path = group[0]["dir"] / "log.txt"
                with contextlib.suppress(OSError):
                    (d / "log.txt").unlink()
                    for sub in ("out", "export", ""):
                        os.rmdir(d / sub)
        self.folder.mark()
        return group, rc, str(log_path)

    def interrupt(self) -> None:
        """Ctrl-C: start nothing more; pass the interrupt to the runs in progress."""
        with self.lock:
            self.stopping = True
            live = list(self.live.values())
        for group, proc in live:
            self.stopped += [r for r in group if r not in self.stopped]
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)

    def wait_live(self) -> None:
        """Wait for the runs being executed to end (a further Ctrl-C is passed on:
        apps.train then stops at once)."""
        while True:
            try:
                with self.lock:
                    while self.active:
                        self.idle.wait(0.2)
                return
            except KeyboardInterrupt:
                self.interrupt()


def unpack(pack: Path, run: dict) -> None:
    """Move one seed of a finished pack (``<pack>/out/seed<s>``, ``<pack>/export/seed<s>``)
    into its run directory (``out``, ``export``; an earlier unfinished run of it there is
    replaced only if it is a run directory bir_keras wrote), with the pack's log; its
    results.json then names the export where it now is."""
    s = run["seed"]
    dest = run["dir"]
    dest.mkdir(parents=True, exist_ok=True)

    def move_into(src: Path, fix=None):
        def write(tmp: Path) -> None:
            for entry in sorted(os.listdir(src)):
                os.rename(src / entry, tmp / entry)
            if fix:
                fix(tmp)
        return write

    def export_here(tmp: Path) -> None:
        rec = json.loads((tmp / "results.json").read_text())
        rec["export_dir"] = str(dest / "export")
        atomic_write_json(tmp / "results.json", rec)

    for name, kind, flag, fix in (("export", rundirs.EXPORT, "--export_dir", None),
                                  ("out", rundirs.OUTPUT, "--output_dir", export_here)):
        src = pack / name / f"seed{s}"
        atomic_dir(dest / name, move_into(src, fix), overwrite=True,
                   check=rundirs.replace_check(kind, flag))
        os.rmdir(src)
    (dest / "log.txt").write_text(f"seed {s} of the pack {pack.name}, whose log follows\n"
                                  + (pack / "log.txt").read_text(errors="replace"))


def last_error(log: str) -> str:
    """The last ``error:`` line of a run's log, if any."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else ""


def _name(run: dict) -> str:
    return f"{run['key']} seed {run['seed']}"


def interrupted_line(runs: list[dict], runner: Runner | None, root: Path) -> str:
    """One line: what is cached, what was stopped, what did not start."""
    if runner is None:
        return "interrupted before any run started"
    cached = [r for r in runs if is_cached(r)]
    stopped = [r for r in runner.stopped if not is_cached(r)]
    rest = len(runs) - len(cached) - len(stopped)
    return (f"interrupted: {len(cached)} of {len(runs)} run(s) finished and are cached in "
            f"{root / 'runs'} (the same command again skips them); "
            + (f"stopped before finishing, not cached: {', '.join(map(_name, stopped))}; "
               if stopped else "no run was in progress; ")
            + f"{rest} not started")


def main(argv: list[str]) -> int:
    """Check everything, run what is missing, then tabulate and plot.

    Exit codes (``common.run_work``): 0 done, 1 a run failed or none finished, 2 refused
    input, 130 Ctrl-C."""
    del argv
    state: dict = {"runs": [], "runner": None, "root": None}

    def interrupted(e: BaseException) -> str:
        stop_runs(state)  # (done already where the folder was held)
        return interrupted_line(state["runs"], state["runner"], state["root"])

    return common.run_work(lambda: _main(state), interrupted=interrupted, one_line=True)


def stop_runs(state: dict) -> None:
    """After Ctrl-C: pass it on to the runs in progress, wait for them, mark the folder."""
    runner = state["runner"]
    if runner is None or state.get("stopped"):
        return
    runner.interrupt()
    runner.wait_live()
    runner.folder.mark()
    state["stopped"] = True


def passthrough_args() -> list[str]:
    """The apps.train flags given on the command line, as apps.train reads them."""
    return [FLAGS[n].serialize() for n in sorted(TRAIN_FLAGS)
            if FLAGS[n].present and n not in SET_PER_RUN
            and n not in ("experiment", "scenario", "seeds_at_once")]


def check_flags() -> tuple[Path, list[dict], list[str], dict[str, int], int]:
    """Everything the flags decide, before any run: (output folder, runs, passthrough,
    seeds packed per method key, runs at once)."""
    if not FLAGS.output_dir:
        raise ConfigError("--output_dir is required")
    for name, hint in SET_PER_RUN.items():
        if FLAGS[name].present and name != "output_dir":
            raise ConfigError(f"--{name} is set by apps.compare for each run; {hint}")
    common.check_data_dir(FLAGS.data_dir)
    root = Path(os.path.abspath(FLAGS.output_dir))
    check_output_path(root)
    check_title(FLAGS.title)
    if FLAGS["sweep"].present > 1:
        raise ConfigError(f"--sweep is given {FLAGS['sweep'].present} times: apps.compare "
                          "sweeps one flag, --sweep=flag:v1,v2,...")
    count = len(FLAGS.methods) * sweep_size(FLAGS.sweep) * FLAGS.seeds
    if count > MAX_RUNS:
        raise ConfigError(f"this compare would start {count:,} runs ({len(FLAGS.methods)} "
                          f"method(s) x {sweep_size(FLAGS.sweep):,} sweep value(s) x "
                          f"{FLAGS.seeds:,} seed(s)); at most {MAX_RUNS:,} are allowed: "
                          "lower --seeds or the methods or values")
    passthrough = passthrough_args()
    seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
    try:
        runs = plan(FLAGS.methods, seeds, FLAGS.experiment, FLAGS.scenario, passthrough, root,
                    FLAGS.sweep)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    swept = FLAGS.sweep and runs[0]["args"][-1][2:].split("=", 1)[0]  # (parsed by plan)
    if swept and FLAGS[swept].present:
        raise ConfigError(f"{FLAGS[swept].serialize()} and --sweep={FLAGS.sweep} both set "
                          f"--{swept}: give it once")
    workers = FLAGS.parallel or max(1, (os.cpu_count() or 2) // 2)
    explicit = FLAGS.seeds_at_once if FLAGS["seeds_at_once"].present else None
    sizes: dict[str, int] = {}
    for r in runs:  # the seed (checked above) does not change what else apps.train accepts
        if r["key"] in sizes:
            continue
        try:
            c = check_run(r["args"])
            sizes[r["key"]] = pack_size(r["args"], explicit, FLAGS.seeds, workers)
            if sizes[r["key"]] > 1:
                check_memory(c, min(sizes[r["key"]], FLAGS.seeds))
        except common.USER_ERRORS as e:
            raise ConfigError(refusal(r, e)) from None
    check_output_dir(root)
    return root, runs, passthrough, sizes, workers


def check_output_path(root: Path) -> None:
    """Refuse (``PathRefused``) an ``--output_dir`` with a NUL character, whose name, or a
    name in it, is too long for the file system, or too long for the runs it will hold."""
    if "\0" in str(root):
        raise rundirs.PathRefused(f"--output_dir={str(root)!r} holds a NUL character")
    for part in root.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise rundirs.PathRefused(
                f"--output_dir={root}: the name {part[:40]}... is {len(os.fsencode(part))} "
                f"bytes long, the file system allows at most {NAME_MAX}")
    if len(os.fsencode(str(root))) > PATH_ROOM:
        raise rundirs.PathRefused(
            f"--output_dir={root} is {len(os.fsencode(str(root)))} bytes long: the runs in it "
            f"need paths of up to {PATH_MAX - PATH_ROOM} bytes more than it, the file system "
            f"allows {PATH_MAX}; choose a shorter path")


def check_title(title: str | None) -> None:
    """Refuse (``ConfigError``) a ``--title`` that the plots could not draw: too long, with
    control characters, or matplotlib math (``$...$``) it cannot parse."""
    if not title:
        return
    if len(title) > MAX_TITLE:
        raise ConfigError(f"--title is {len(title):,} characters long: at most {MAX_TITLE}")
    if any(ord(c) < 32 and c != "\n" for c in title):
        raise ConfigError(f"--title={title!r} holds control characters")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title(title)
    try:
        fig.canvas.draw()
    except ValueError as e:
        why = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"--title={title!r} cannot be drawn by matplotlib "
                          f"({why[-1] if why else 'a math expression it cannot parse'}); "
                          "write a $ that is not math as \\$") from None


def refusal(run: dict, e: Exception) -> str:
    """Why apps.train would refuse a planned run: its sweep value where that alone makes the
    difference (the run without it would be accepted), else its settings."""
    if run["value"] is not None:
        swept = run["args"][-1]   # --<flag>=<value>, last: it wins over a passed-through one
        try:
            check_run(run["args"][:-1])
        except common.USER_ERRORS:
            pass
        else:
            return (f"--sweep value {swept}: {run['method']} seed {run['seed']} with it would "
                    f"be refused by apps.train: {e}")
    return f"{_name(run)} ({' '.join(run['args'][2:])}) would be refused by apps.train: {e}"


def _main(state: dict) -> int:
    root, runs, passthrough, sizes, workers = check_flags()
    state["root"], state["runs"] = root, runs
    with rundirs.claim(root, "--output_dir"):  # one compare per folder
        check_output_dir(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise rundirs.PathRefused(f"--output_dir={root}: cannot create it "
                                      f"({e.strerror or e})") from None
        folder = Folder(root)
        folder.mark()
        try:
            return _run(state, folder, root, runs, passthrough, sizes, workers)
        except BaseException as e:
            if appfiles.caused_by_interrupt(e):
                stop_runs(state)  # while the folder is still held
            raise


def _run(state: dict, folder: Folder, root: Path, runs: list[dict],
         passthrough: list[str], sizes: dict[str, int], workers: int) -> int:
    todo = [] if FLAGS.only_cached else [r for r in runs if not is_cached(r)]
    # every method's first seed (or pack of seeds) before any method's second: a cut-short
    # compare still covers all methods
    groups = groups_of(todo, sizes)
    packed = sum(len(g) for g in groups if len(g) > 1)
    print(f"{sum(map(is_cached, runs))} cached, {len(todo)} to run"
          + (f" ({packed} of them in {sum(len(g) > 1 for g in groups)} pack(s) of seeds)"
             if packed else ""), flush=True)
    runner = state["runner"] = Runner(folder)
    failed = []
    pool = cf.ThreadPoolExecutor(workers)
    try:
        for group, rc, log in pool.map(runner.execute, groups):
            for run in group:
                if rc == 0:
                    print(f"{_name(run)}: ok", flush=True)
                else:
                    err = last_error(log)
                    print(f"{_name(run)}: FAILED (exit {rc}{': ' + err if err else ''}; "
                          f"log {log})", flush=True)
                    failed.append(run)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    done = [r for r in runs if is_cached(r)]
    folder.mark()
    if not done:
        raise common.TrainingFailed("no run finished")
    stats = summarize_runs(done)
    others = unexpected_entries(root)
    if others:
        raise rundirs.PathRefused(
            f"--output_dir={root}: files apps.compare did not write appeared while it ran "
            f"({', '.join(others[:5])}); no table was written (the finished runs are cached "
            f"in {root / 'runs'}): move them away and run the same command again")
    print(write_tables(stats, FLAGS.experiment, FLAGS.scenario, root,
                       changed_settings(passthrough, FLAGS.sweep), folder=folder))
    written = [root / "table.md", root / "table.csv", root / "accuracy.png"]
    from bir_keras.evaluation.plots import plot_average_accuracy, plot_sweep

    title = FLAGS.title or f"{FLAGS.experiment} ({FLAGS.scenario}-IL)"
    # (a '$' of a sweep value in a legend is a dollar sign, not matplotlib math)
    curves = {m.replace("$", r"\$"): (e["curve_mean"], e["curve_sem"])
              for m, e in stats.items()}
    folder.write("accuracy.png", lambda tmp: plot_average_accuracy(curves, tmp, title=title))
    name, values = parse_sweep(FLAGS.sweep)
    if name:
        try:
            xs = [float(v) for v in values]
        except ValueError:
            xs = None
        if xs is None or not all(map(math.isfinite, xs)):
            print(f"(no sweep.png: the values of --{name} are not numbers)", flush=True)
        else:
            sweep_curves = {}
            for m in FLAGS.methods:
                keyed = [stats.get(f"{m}-{name}{v}") for v in values]
                if all(keyed):
                    sweep_curves[m] = ([k["mean"] / 100 for k in keyed],
                                       [k["sem"] / 100 for k in keyed])
            # sizes and counts (replayed samples, hidden units) spread over a factor of 8 or
            # more are shown on a log axis, as in the paper's Fig. 4
            log_x = min(xs) > 0 and max(xs) / min(xs) >= 8
            folder.write("sweep.png", lambda tmp: plot_sweep(xs, sweep_curves, tmp, xlabel=name,
                                                             title=title, log_x=log_x))
            written.append(root / "sweep.png")
    folder.mark()
    print(f"wrote {', '.join(str(p) for p in written)} (runs in {root / 'runs'})", flush=True)
    return common.EXIT_FAILED if failed else common.EXIT_OK


if __name__ == "__main__":
    common.run_app(main)
