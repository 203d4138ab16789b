"""A sweep's statistics, tables and plots: per setting the final average accuracy over
seeds (mean and standard error), beside the paper's published number (``PUBLISHED``),
in ``table.md`` and ``table.csv``; ``accuracy.png`` (average accuracy against the number
of tasks, mean and standard-error band) and, for a sweep of numbers, ``sweep.png``."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from bir_keras.config import ConfigError
from bir_keras.fileio import atomic_write
from bir_keras.sweeps.planning import Run

MAX_TITLE = 200         # characters of a plot title

# The paper's published final average accuracies (%, 20 seeds; its section 6), shown beside
# ours: (experiment, scenario) -> method -> accuracy. ``config.PAPER_HPARAMS`` holds the
# hyper-parameters they were published with.
PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
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


def summarise(records: Iterable[tuple[str, str, str | None, dict]]) -> dict[str, dict]:
    """Per setting ``key``, from ``(key, method, sweep value, results.json record)``
    entries in the order of the table: ``final`` (the final average accuracy of each seed),
    ``curves`` and ``wall`` (each seed's), ``method``, ``value``, and over the seeds
    ``mean`` and ``sem`` (in %; the standard error is 0 for one seed), ``curve_mean`` and
    ``curve_sem`` (fractions, per number of tasks)."""
    out: dict[str, dict] = {}
    for key, method, value, res in records:
        e = out.setdefault(key, {"final": [], "curves": [], "wall": [], "method": method,
                                 "value": value})
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


def summarise_runs(runs: Iterable[Run]) -> dict[str, dict]:
    """``summarise`` over finished runs (their ``out/results.json``)."""
    return summarise((r.key, r.method, r.value,
                      json.loads((r.dir / "out" / "results.json").read_text())) for r in runs)


def table_texts(stats: dict, experiment: str, scenario: str,
           changed: Sequence[str] | None = None) -> tuple[str, str]:
    """(Markdown, CSV): mean ± SEM per setting, with the published number of a method at
    the paper's settings (marked ``*`` when these runs' settings are not the paper's:
    ``changed`` names what differs) and the mean wall time of a run."""
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
        # a sweep value may hold a bar, which would end the cell
        lines.append(f"| {m.replace('|', '&#124;')} | {len(e['final'])} | {e['mean']:.2f} ± {e['sem']:.2f} | "
                     f"{'' if p is None else f'{p:.2f}{mark}'} | {np.mean(e['wall']):.0f} |")
        w.writerow([m, len(e["final"]), f"{e['mean']:.4f}", f"{e['sem']:.4f}",
                    "" if p is None else p, f"{np.mean(e['wall']):.1f}",
                    " ".join(changed or []) if p is not None else ""])
    if changed and shown:
        lines += ["", f"\\* published with the paper's settings (20 seeds); these runs differ: "
                      f"{' '.join(changed)}"]
    return "\n".join(lines) + "\n", buf.getvalue()


Writer = Callable[[str, Callable[[str], object]], object]


def _writer(root: Path, write: Writer | None) -> Writer:
    """``write(name, fill)``: ``Folder.write`` where given, else an atomic write into
    ``root``."""
    return write or (lambda name, fill: atomic_write(root / name, fill))


def write_tables(stats: dict, experiment: str, scenario: str, root: Path,
                 changed: Sequence[str] | None = None, write: Writer | None = None) -> str:
    """``table_texts`` into ``root/table.md`` and ``root/table.csv``, written through ``write``
    (``Folder.write``: the compare folder's checks) where given; returns the Markdown."""
    md, text_csv = table_texts(stats, experiment, scenario, changed)
    for name, text in (("table.md", md), ("table.csv", text_csv)):
        _writer(root, write)(name, lambda tmp, text=text: Path(tmp).write_text(text))
    return md


def write_plots(stats: dict, root: Path, title: str, methods: Sequence[str],
                sweep: tuple[str, Sequence[str]] | None = None,
                write: Writer | None = None) -> tuple[list[Path], str | None]:
    """``accuracy.png`` and, for a sweep of finite numbers, ``sweep.png`` (each method's
    final accuracy against the swept value; a log axis where the values spread over a
    factor of 8 or more, as the paper's Fig. 4): (the paths written, a note on what was not
    drawn)."""
    from bir_keras.evaluation.plots import plot_average_accuracy, plot_sweep

    put = _writer(root, write)
    # (a '$' of a sweep value in a legend is a dollar sign, not matplotlib math)
    curves = {m.replace("$", r"\$"): (e["curve_mean"], e["curve_sem"])
              for m, e in stats.items()}
    put("accuracy.png", lambda tmp: plot_average_accuracy(curves, tmp, title=title))
    written = [root / "accuracy.png"]
    if sweep is None:
        return written, None
    name, values = sweep
    try:
        xs = [float(v) for v in values]
    except ValueError:
        xs = None
    if xs is None or not all(map(math.isfinite, xs)):
        return written, f"(no sweep.png: the values of --{name} are not numbers)"
    sweep_curves = {}
    for m in methods:
        keyed = [stats.get(f"{m}-{name}{v}") for v in values]
        if all(keyed):
            sweep_curves[m] = ([k["mean"] / 100 for k in keyed], [k["sem"] / 100 for k in keyed])
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 8
    put("sweep.png", lambda tmp: plot_sweep(xs, sweep_curves, tmp, xlabel=name, title=title,
                                            log_x=log_x))
    return written + [root / "sweep.png"], None


def check_title(title: str | None, flag: str = "--title") -> None:
    """Refuse (``ConfigError``) a plot title that the plots could not draw: too long, with
    control characters, or matplotlib math (``$...$``) it cannot parse."""
    if not title:
        return
    if len(title) > MAX_TITLE:
        raise ConfigError(f"{flag} is {len(title):,} characters long: at most {MAX_TITLE}")
    if any(ord(c) < 32 and c != "\n" for c in title):
        raise ConfigError(f"{flag}={title!r} holds control characters")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    fig.add_subplot().set_title(title)
    try:
        fig.canvas.draw()
    except ValueError as e:
        why = [ln for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"{flag}={title!r} cannot be drawn by matplotlib "
                          f"({why[-1] if why else 'a math expression it cannot parse'}); "
                          "write a $ that is not math as \\$") from None
