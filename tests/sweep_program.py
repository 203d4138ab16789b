"""A stand-in for ``apps.train`` in the tests of ``bir_keras.sweeps``: ``python -m
tests.sweep_program`` takes apps.train's run arguments (``--method``, ``--seed``,
``--output_dir``, ``--export_dir``, ``--seeds_at_once``, anything else) and writes in a
moment what a finished run writes where the sweep reads it (``out/results.json`` and an
export, each marked as bir_keras's), one folder per seed for a pack. Its numbers are
known: seed s of any method ends at a final average accuracy of (s + 1) / 10 after two
tasks, plus ``--bonus``. ``--fail_seed=S`` fails seed S (exit 1, an ``error:`` line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bir_keras import rundirs
from bir_keras.fileio import atomic_dir


def value(args: list[str], name: str, default=None):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def write_seed(out: Path, export: Path, seed: int, k: int, bonus: float) -> None:
    final = (seed + 1) / 10 + bonus

    def fill_out(tmp: Path) -> None:
        (tmp / "results.json").write_text(json.dumps({
            "final_average_accuracy": final, "average_accuracy": [1.0, final],
            "accuracy_matrix": [[1.0, None], [2 * final - 1.0, 1.0]], "wall_time_s": 0.5,
            "export_dir": str(export), "flags": {"seed": seed}, "seeds_at_once": k}))
        rundirs.write_marker(tmp, rundirs.OUTPUT)

    def fill_export(tmp: Path) -> None:
        (tmp / "run.json").write_text(json.dumps({"flags": {"seed": seed}}))
        rundirs.write_marker(tmp, rundirs.EXPORT)

    atomic_dir(export, fill_export, overwrite=True)
    atomic_dir(out, fill_out, overwrite=True)


def main(args: list[str]) -> int:
    seed, k = int(value(args, "seed")), int(value(args, "seeds_at_once", 1))
    out, export = Path(value(args, "output_dir")), Path(value(args, "export_dir"))
    fail = value(args, "fail_seed")
    print(f"training {value(args, 'method')} seeds {seed}..{seed + k - 1}", flush=True)
    if fail is not None and seed <= int(fail) < seed + k:
        print(f"error: seed {fail} fails here", flush=True)
        return 1
    for s in range(seed, seed + k):
        o, e = (out, export) if k == 1 else (out / f"seed{s}", export / f"seed{s}")
        o.parent.mkdir(parents=True, exist_ok=True)
        e.parent.mkdir(parents=True, exist_ok=True)
        write_seed(o, e, s, k, float(value(args, "bonus", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
