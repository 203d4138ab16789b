"""float32 against mixed_bfloat16: accuracy and time of whole runs of ``apps.train``.

    python -m benchmarks.precision --data_dir=../shared/data/mnist \
        [--methods=bir,generative] [--seeds=12,13,14] [--rows=split_mnist] [--out=FILE.json]

Rows: ``split_mnist`` (Class-IL, the paper's settings: 5 tasks x 2000 iterations) and
``permuted_mnist`` (BI-R, Domain-IL, 2 tasks, the paper's networks). Each run is its own
process (``apps.train``, default flags but ``--precision``); the table gives per method and
precision the mean final average accuracy over the seeds (and each seed's), and the mean
wall and CPU seconds per run. Results are written atomically to ``--out`` (JSON; an
existing file only if this benchmark wrote it, with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import check_out, write_out
from bir_keras.rundirs import PathRefused

PROGRAM = "benchmarks.precision"

ROOT = Path(__file__).resolve().parent.parent
ROWS = {"split_mnist": ["--experiment=split_mnist", "--scenario=class"],
        "permuted_mnist": ["--experiment=permuted_mnist", "--scenario=domain", "--tasks=2"]}
PRECISIONS = ("float32", "mixed_bfloat16")


def run_one(row: str, method: str, seed: int, precision: str, data_dir: str,
            scratch: Path, extra: list[str]) -> dict:
    """One ``apps.train`` process: its final average accuracy, wall and CPU seconds."""
    name = f"{row}-{method}-s{seed}-{precision}"
    cmd = [sys.executable, "-m", "apps.train", *ROWS[row], f"--method={method}", f"--seed={seed}",
           f"--precision={precision}", f"--data_dir={data_dir}", "--checkpoint_every=0",
           f"--output_dir={scratch / name}", f"--export_dir={scratch / (name + '-export')}",
           *extra]
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    if args.out:
        try:
            check_out(args.out, args.overwrite, PROGRAM)
        except PathRefused as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="bir_keras-precision-") as scratch:
        for row in rows:
            methods = ["bir"] if row == "permuted_mnist" else args.methods.split(",")
            for method in methods:
                for seed in (int(s) for s in args.seeds.split(",")):
                    for prec in PRECISIONS:
                        try:
                            r = run_one(row, method, seed, prec, args.data_dir,
                                        Path(scratch), args.extra.split())
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
