"""Figures in the style of the paper: accuracy matrices, average-accuracy curves, sweeps.

All functions take accuracies as fractions in [0, 1] and plot them as percentages.
Every PNG is written atomically (``bir_keras.fileio.atomic_write``: a temporary file in
the target folder, then renamed), so a reader never sees a half-written image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from bir_keras.evaluation.metrics import Matrix, to_array  # noqa: E402
from bir_keras.fileio import atomic_write  # noqa: E402

Curves = Mapping[str, tuple[Sequence[float], Sequence[float] | None]]

_DPI = 120


def _save_atomic(fig: Figure, path: str | os.PathLike) -> str:
    """Save ``fig`` as a PNG at ``path`` via a temp file in the same folder, then close it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI,
                                                   bbox_inches="tight"))
    finally:
        plt.close(fig)
    return os.fspath(path)


def plot_accuracy_matrix(
    matrix: Matrix,
    path: str | os.PathLike,
    title: str = "",
    annotate: bool | None = None,
) -> str:
    """Heat map of the accuracy matrix (in %), numbers in cells, blank cells for unlearned tasks."""
    arr = to_array(matrix) * 100.0
    rows, cols = arr.shape
    if annotate is None:
        annotate = max(rows, cols) <= 20
    side = min(max(3.0, 0.6 * max(rows, cols) + 1.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    shown = np.ma.masked_invalid(arr)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    if annotate:
        for i in range(rows):
            for j in range(cols):
                value = arr[i, j]
                if np.isfinite(value):
                    color = "black" if value > 60.0 else "white"
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=color, fontsize=8)
    step = max(1, max(rows, cols) // 20)
    ax.set_xticks(range(0, cols, step), [str(j + 1) for j in range(0, cols, step)])
    ax.set_yticks(range(0, rows, step), [str(i + 1) for i in range(0, rows, step)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after learning task")
    if title:
        ax.set_title(title)
    return _save_atomic(fig, path)


def _draw_curves(ax: plt.Axes, xs: np.ndarray | None, curves: Curves) -> None:
    """Draw mean lines (in %) with shaded mean +/- SEM bands where SEMs are given; with
    ``xs=None`` each curve gets x = 1..len(curve), so runs of different lengths share a plot."""
    for i, (name, (means, sems)) in enumerate(curves.items()):
        mean = np.asarray(means, dtype=np.float64) * 100.0
        xs_i = np.arange(1, mean.size + 1, dtype=np.float64) if xs is None else xs
        if mean.shape != xs_i.shape:
            raise ValueError(f"curve {name!r} has {mean.size} points, expected {xs_i.size}")
        # the colour cycle has 10 colours: the 11th curve on gets a dashed line
        (line,) = ax.plot(xs_i, mean, marker="o" if xs_i.size <= 30 else None, markersize=3,
                          label=name, linestyle="-" if i < 10 else "--")
        if sems is not None:
            sem = np.asarray(sems, dtype=np.float64) * 100.0
            if sem.shape != xs_i.shape:
                raise ValueError(f"curve {name!r} has {sem.size} SEMs, expected {xs_i.size}")
            ax.fill_between(xs_i, mean - sem, mean + sem, color=line.get_color(), alpha=0.25,
                            lw=0)


def plot_average_accuracy(
    curves: Curves,
    path: str | os.PathLike,
    title: str = "",
    ylabel: str = "average accuracy (%)",
) -> str:
    """Average accuracy over tasks learned so far against number of tasks, mean +/- SEM bands."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    _draw_curves(ax, None, curves)
    num_tasks = max((len(means) for means, _ in curves.values()), default=0)
    if 0 < num_tasks <= 20:
        ax.set_xticks(np.arange(1, num_tasks + 1))
    ax.set_xlabel("number of tasks learned")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save_atomic(fig, path)


def plot_sweep(
    xs: Sequence[float],
    curves: Curves,
    path: str | os.PathLike,
    xlabel: str,
    title: str = "",
    log_x: bool = False,
    ylabel: str = "average accuracy (%)",
) -> str:
    """Accuracy (in %) against a swept setting, mean +/- SEM bands; log2 x axis if ``log_x``."""
    x = np.asarray(xs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    _draw_curves(ax, x, curves)
    if log_x:
        ax.set_xscale("log", base=2)
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        ax.xaxis.set_major_formatter(formatter)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    if x.size <= 20:
        ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save_atomic(fig, path)


def accuracy_curves_png(matrix: Matrix, title: str = "") -> bytes:
    """PNG of each task's accuracy and the average (bold) against the number of tasks
    learned, every point marked and labelled: readable with a handful of points, where
    TensorBoard's smoothed scalar cards are not."""
    import io

    m = to_array(matrix) * 100
    rows = m.shape[0]
    xs = np.arange(1, rows + 1)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for j in range(m.shape[1]):
        col = m[:, j]
        keep = ~np.isnan(col)
        if keep.any():
            ax.plot(xs[keep], col[keep], marker="o", ms=3, lw=1, alpha=0.6, label=f"task {j + 1}")
    avg = np.array([np.nanmean(r) for r in m])
    ax.plot(xs, avg, marker="o", color="black", lw=2.5, label="average")
    for x, y in zip(xs, avg):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xlim(0.5, rows + 0.5)
    ax.set_ylim(0, 105)
    ax.set_xlabel("number of tasks learned")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    if m.shape[1] <= 10:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()
