"""float32 against mixed_bfloat16: accuracy and time of whole runs of ``apps.train``.

    python -m benchmarks.precision --data_dir=../shared/data/mnist \
        [--methods=bir,generative] [--seeds=12,13,14] [--rows=split_mnist] [--out=FILE.json]

Rows: ``split_mnist`` (Class-IL, the paper's settings: 5 tasks x 2000 iterations) and
``permuted_mnist`` (BI-R, Domain-IL, 2 tasks, the paper's networks). Each run is its own
process (``apps.train``, default flags but ``--precision``); the table gives per method and
precision the mean final average accuracy over the seeds (and each seed's), and the mean
wall and CPU seconds per run. Results are written atomically to ``--out`` (JSON; an
existing file only if this benchmark wrote it, with ``--overwrite``).

Every run's settings (``--rows``, ``--methods``, ``--seeds``, ``--extra``) are checked as
``apps.train`` checks them (``apps.compare.check_run``) before the first run starts: bad
input is one ``error:`` line with exit code 2, never a run that fails later.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import Parser, check_out, write_out
from bir_keras.rundirs import PathRefused

PROGRAM = "benchmarks.precision"

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"split_mnist": ["--experiment=split_mnist", "--scenario=class"],
        "permuted_mnist": ["--experiment=permuted_mnist", "--scenario=domain", "--tasks=2"]}
PRECISIONS = ("float32", "mixed_bfloat16")
# apps.train flags this benchmark sets for each run: --extra may not set them again
SET_HERE = ("experiment", "scenario", "method", "seed", "precision", "data_dir",
            "checkpoint_every", "output_dir", "export_dir", "resume_from", "overwrite")


def train_args(row: str, method: str, seed: int, precision: str, data_dir: str,
               extra: list[str]) -> list[str]:
    """The ``apps.train`` flags of one run (without its output folders)."""
    return [*ROWS[row], f"--method={method}", f"--seed={seed}", f"--precision={precision}",
            f"--data_dir={data_dir}", "--checkpoint_every=0", *extra]


def plan(rows: list[str], methods: list[str], seeds: list[int]) -> list[tuple]:
    """(row, method, seed, precision) of every run, in the order they run."""
    return [(row, method, seed, prec) for row in rows
            for method in (["bir"] if row == "permuted_mnist" else methods)
            for seed in seeds for prec in PRECISIONS]


def check_extra(extra: list[str]) -> str | None:
    """Why ``--extra`` is refused (a word that is not a flag, a flag set here), or None."""
    for arg in extra:
        name = arg.lstrip("-").split("=", 1)[0]
        if not arg.startswith("-") or not name:
            return f"--extra: {arg!r} is not a flag (give apps.train flags as --name=value)"
        for own in SET_HERE:
            if name in (own, f"no{own}"):
                return (f"--extra: {arg} sets --{own}, which this benchmark sets for each run "
                        "(use --rows, --methods, --seeds, --data_dir)")
    return None


def check_runs(runs: list[tuple], data_dir: str, extra: list[str]) -> str | None:
    """Why one of ``runs`` would be refused by ``apps.train`` (its own checks, in this
    process, before any run starts), or None."""
    from apps.compare import check_run  # apps.train's flags and checks; TensorFlow stays out
    from bir_keras.config import ConfigError
    from bir_keras.data.sources import DataError

    seen: set = set()
    for row, method, seed, prec in runs:
        args = train_args(row, method, seed, prec, data_dir, extra)
        if tuple(args) in seen:
            continue
        seen.add(tuple(args))
        try:
            check_run(args)
        except (ConfigError, DataError) as e:
            return f"{row} {method} seed {seed} {prec}: {' '.join(str(e).split())}"
    return None


def run_one(row: str, method: str, seed: int, precision: str, data_dir: str,
            scratch: Path, extra: list[str]) -> dict:
    """One ``apps.train`` process: its final average accuracy, wall and CPU seconds."""
    name = f"{row}-{method}-s{seed}-{precision}"
    cmd = [sys.executable, "-m", "apps.train",
           *train_args(row, method, seed, precision, data_dir, extra),
           f"--output_dir={scratch / name}", f"--export_dir={scratch / (name + '-export')}"]
    start = time.time()
    # output to files (a pipe left unread while waiting could fill and stall the run)
    with open(scratch / f"{name}.out", "w+") as fout, open(scratch / f"{name}.err", "w+") as ferr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fout, stderr=ferr, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{name}: exit {code}: {err.strip().splitlines()[-1:]}")
    acc = None
    for line in out.splitlines():
        if re.match(r"^\{.*final_average_accuracy", line):
            acc = json.loads(line)["final_average_accuracy"]
    return {"row": row, "method": method, "seed": seed, "precision": precision,
            "accuracy": acc, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_gib": usage.ru_maxrss / 2 ** 20}


def table(results: list[dict]) -> str:
    """Markdown: per row, method and precision, the mean over seeds."""
    lines = ["| run | precision | accuracy (mean; per seed) | wall s / run | CPU s / run |",
             "|---|---|---|---|---|"]
    keys = sorted({(r["row"], r["method"]) for r in results})
    for row, method in keys:
        for prec in PRECISIONS:
            rs = [r for r in results if (r["row"], r["method"], r["precision"]) == (row, method, prec)]
            if not rs:
                continue
            accs = [100 * r["accuracy"] for r in rs]
            lines.append(f"| {row} {method} | {prec} | {np.mean(accs):.2f} "
                         f"({', '.join(f'{a:.2f}' for a in accs)}) | "
                         f"{np.mean([r['wall_s'] for r in rs]):.1f} | "
                         f"{np.mean([r['cpu_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.precision",
                    description=__doc__.split("\n\n")[0], paths=("data_dir", "out"))
    parser.add_argument("--data_dir", required=True, help="local MNIST files (IDX .gz)")
    parser.add_argument("--rows", default="split_mnist")
    parser.add_argument("--methods", default="bir,generative")
    parser.add_argument("--seeds", default="12,13,14")
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if an earlier run of this benchmark wrote it")
    parser.add_argument("--extra", default="", help="more apps.train flags, space-separated "
                        "(e.g. --iters=100 for a quick check)")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            print(f"error: --rows: unknown row {row!r} (choose from {', '.join(ROWS)})",
                  file=sys.stderr)
            return 2
    if not Path(args.data_dir).is_dir():
        print(f"error: --data_dir={args.data_dir} is not a directory", file=sys.stderr)
        return 2
    methods = args.methods.split(",")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds = []
    extra = args.extra.split()
    problem = (
        f"--seeds={args.seeds}: give integers separated by commas (e.g. 12,13,14)"
        if not seeds else
        f"--methods={args.methods}: an empty method name" if "" in methods else
        _unknown_methods(methods) or
        _repeated(rows, "rows") or _repeated(methods, "methods") or _repeated(seeds, "seeds") or
        check_extra(extra) or check_runs(plan(rows, methods, seeds), args.data_dir, extra))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.out:
        try:
            check_out(args.out, args.overwrite, PROGRAM)
        except PathRefused as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bir_keras-precision-") as scratch:
        for row, method, seed, prec in plan(rows, methods, seeds):
            try:
                r = run_one(row, method, seed, prec, args.data_dir, Path(scratch), extra)
            except RuntimeError as e:  # a run failed: its last line says why
                print(f"error: {e}", file=sys.stderr)
                return 1
            results.append(r)
            print(json.dumps(r), flush=True)
    print(table(results))
    if args.out:
        try:
            write_out(Path(args.out), {"cpu": _cpu(), "results": results}, PROGRAM)
        except (PathRefused, OSError) as e:
            print(f"error: {args.out} not written: {e}", file=sys.stderr)
            return 1
    return 0


def _unknown_methods(methods: list[str]) -> str | None:
    """Why ``--methods`` is refused when it names a method apps.train does not have (checked
    even where only the permuted MNIST row runs, which takes bir alone)."""
    from bir_keras.config import METHODS

    unknown = [m for m in methods if m not in METHODS]
    return (f"--methods: unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})"
            if unknown else None)


def _repeated(values: list, flag: str) -> str | None:
    """Why ``--flag`` is refused when it names a value twice (the runs would collide)."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    return f"--{flag} names {', '.join(twice)} more than once" if twice else None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
