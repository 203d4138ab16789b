"""Write ``apps/configs/<experiment>_<scenario>_<method>.cfg``: the paper's runs as flagfiles.

    python -m benchmarks.flagfiles --check      # exit 1 if a committed one is out of date
    python -m benchmarks.flagfiles              # write the missing ones
    python -m benchmarks.flagfiles --overwrite  # also rewrite the out-of-date ones

Each flagfile spells out what ``--method`` and ``bir_keras.config.resolve`` give for that
setting (the paper's defaults and grid-searched values, the Fig. 8 variants' own gate
proportions), so it reads as the run's settings and never disagrees with the shorthand.

A flagfile that is up to date is left alone; an out-of-date one is rewritten (atomically)
only with ``--overwrite`` and only if this program wrote it (its ``# Written by`` line); any
other file at one of those paths is never replaced. All of them are checked before
anything is written (one ``error:`` line, exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import Parser, PathRefused, check_file, write_file
from bir_keras.config import METHODS, Config, method_settings, resolve

CONFIGS = Path(__file__).resolve().parent.parent / "apps" / "configs"
BASELINES = ["none", "joint", "ewc", "online_ewc", "si", "lwf", "generative",
             "generative_distill", "bir", "bir_si"]
VARIANTS = [m for m in METHODS if m.startswith(("gr_", "bir_no_"))]
# (experiment, scenario) -> methods with a flagfile: the paper's Fig. 3-6 and Fig. 8 runs
SETTINGS: dict[tuple[str, str], list[str]] = {
    ("split_mnist", "task"): BASELINES + ["xdg"],
    ("split_mnist", "class"): BASELINES,
    ("permuted_mnist", "domain"): BASELINES + [m for m in VARIANTS if not m.endswith("int")],
    ("split_cifar100", "task"): BASELINES + ["xdg"] + VARIANTS,
    ("split_cifar100", "class"): BASELINES + VARIANTS,
}
NAMES = {"none": "None (fine-tuning)", "joint": "Joint", "ewc": "EWC", "online_ewc": "online EWC",
         "si": "SI", "lwf": "LwF", "xdg": "XdG", "generative": "generative replay (GR)",
         "generative_distill": "GR + distillation", "bir": "brain-inspired replay (BI-R)",
         "bir_si": "BI-R + SI"}
HPARAMS = ("iters", "lr", "batch", "fc_units")
PROGRAM = "benchmarks.flagfiles"
MARK = "# Written by `python -m benchmarks.flagfiles`"


def text(experiment: str, scenario: str, method: str) -> str:
    """The flagfile of one run."""
    conv = experiment.startswith("split_cifar")
    flags = method_settings(method, experiment, scenario)
    c = resolve(Config(experiment=experiment, scenario=scenario, **flags), conv)
    name = NAMES.get(method, f"Fig. 8 variant {method}")
    lines = [f"# {name} on {experiment}, {scenario}-IL, with the paper's settings "
             "(method.md 2-4, fidelity.md).",
             f"{MARK}; add --data_dir=DIR (else TFDS) and --seed=N (the paper: 12 and up)."]
    lines += [f"# note: {n}" for n in c.notes]
    lines += [f"--experiment={experiment}", f"--scenario={scenario}", f"--method={method}"]
    if experiment == "permuted_mnist":
        lines.append(f"--tasks={c.tasks}")
    lines += [f"--{k}={getattr(c, k)}" for k in HPARAMS]
    for k, v in flags.items():
        lines.append(f"--{k}" if v is True else f"--no{k}" if v is False else f"--{k}={v}")
    extra = []
    if c.ewc:
        extra.append(("ewc_lambda", c.ewc_lambda))
    if c.si:
        extra.append(("si_c", c.si_c))
    if c.xdg:
        extra.append(("xdg_prop", c.xdg_prop))
    if c.replay == "generative" and (c.dg_gates or flags.get("brain_inspired")):
        extra.append(("dg_prop", c.dg_prop))
    lines += [f"--{k}={v}" for k, v in extra if f"--{k}={v}" not in lines]
    lines.append(f"--output_dir=runs/{experiment}_{scenario}_{method}")
    return "\n".join(lines) + "\n"


def expected() -> dict[Path, str]:
    """Every flagfile's path and text."""
    return {CONFIGS / f"{e}_{s}_{m}.cfg": text(e, s, m)
            for (e, s), methods in SETTINGS.items() for m in methods}


def flagfile_ours(path: Path) -> bool:
    """Whether ``path`` is a flagfile this program wrote (its second line is ``MARK``)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [f.readline(), f.readline()]
    except (OSError, UnicodeDecodeError):
        return False
    return lines[0].startswith("# ") and lines[1].startswith(MARK)


def main(argv: list[str]) -> int:
    parser = Parser(prog="python -m benchmarks.flagfiles",  # bad input: one error: line, exit 2
                    description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a flagfile is missing or out of date; write nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite out-of-date flagfiles this program wrote")
    args = parser.parse_args(argv)
    files = expected()
    stale = {p: t for p, t in files.items() if not _same(p, t)}
    if args.check:
        if stale:
            print(f"out of date: {', '.join(p.name for p in stale)}; run python -m "
                  "benchmarks.flagfiles --overwrite")
            return 1
        return 0
    try:  # every one before any is written
        for path in stale:
            check_file(path, "flagfile", args.overwrite, flagfile_ours, PROGRAM)
    except PathRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for path, content in stale.items():
            write_file(path, lambda tmp, c=content: Path(tmp).write_text(c), "flagfile",
                       flagfile_ours, PROGRAM)
    except (PathRefused, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(stale)} flagfiles to {CONFIGS} ({len(files) - len(stale)} were up to "
          "date)")
    return 0


def _same(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
