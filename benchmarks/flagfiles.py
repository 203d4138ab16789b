"""Write ``apps/configs/<experiment>_<scenario>_<method>.cfg``: the paper's runs as flagfiles.

    python -m benchmarks.flagfiles          # rewrite them from bir_keras.config
    python -m benchmarks.flagfiles --check  # exit 1 if a committed one is out of date

Each flagfile spells out what ``--method`` and ``bir_keras.config.resolve`` give for that
setting (the paper's defaults and grid-searched values, the Fig. 8 variants' own gate
proportions), so it reads as the run's settings and never disagrees with the shorthand.
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def text(experiment: str, scenario: str, method: str) -> str:
    """The flagfile of one run."""
    conv = experiment.startswith("split_cifar")
    flags = method_settings(method, experiment, scenario)
    c = resolve(Config(experiment=experiment, scenario=scenario, **flags), conv)
    name = NAMES.get(method, f"Fig. 8 variant {method}")
    lines = [f"# {name} on {experiment}, {scenario}-IL, with the paper's settings "
             "(method.md 2-4, fidelity.md).",
             "# Written by `python -m benchmarks.flagfiles`; add --data_dir=DIR (else TFDS) "
             "and --seed=N (the paper: 12 and up)."]
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


def main(argv: list[str]) -> int:
    files = expected()
    if "--check" in argv:
        stale = [p.name for p, t in files.items() if not p.exists() or p.read_text() != t]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m benchmarks.flagfiles")
            return 1
        return 0
    for path, content in files.items():
        path.write_text(content)
    print(f"wrote {len(files)} flagfiles to {CONFIGS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
