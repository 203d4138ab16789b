"""Continual-learning metrics computed from an accuracy matrix.

An accuracy matrix ``R`` holds ``R[i][j]`` = accuracy (a fraction in [0, 1]) on
the test set of task ``j`` after learning task ``i`` (both 0-based).  Entries for
tasks not yet learned (``j > i``) are ``None`` or NaN and are never used; rows
may also be ragged (row ``i`` holding only ``i + 1`` entries).  A matrix that is
only partly filled (trailing rows all missing, e.g. while a run is in progress)
is treated as if it ended at its last row holding any finite value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Matrix = Sequence[Sequence[float | None]] | np.ndarray


def to_array(matrix: Matrix) -> np.ndarray:
    """Convert an accuracy matrix (nested lists, ragged or not) to a float64 array, None -> NaN."""
    if isinstance(matrix, np.ndarray) and matrix.dtype != object:
        arr = np.array(matrix, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"accuracy matrix must be 2-D, got shape {arr.shape}")
        return arr
    rows = [list(row) for row in matrix]
    width = max((len(row) for row in rows), default=0)
    arr = np.full((len(rows), width), np.nan, dtype=np.float64)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if value is not None:
                arr[i, j] = float(value)
    return arr


def _learned(matrix: Matrix) -> np.ndarray:
    """Return the array cut to its filled rows (up to the last row with a finite value)."""
    arr = to_array(matrix)
    filled = np.flatnonzero(np.isfinite(arr).any(axis=1))
    if filled.size == 0:
        raise ValueError("accuracy matrix has no filled row")
    num_tasks = int(filled[-1]) + 1
    if arr.shape[1] < num_tasks:
        raise ValueError(
            f"accuracy matrix has {num_tasks} filled rows but only {arr.shape[1]} columns"
        )
    return arr[:num_tasks]


def average_accuracy(matrix: Matrix) -> list[float]:
    """Per filled row i, the mean accuracy over the tasks learned so far, R[i][0..i]."""
    arr = to_array(matrix)
    if not np.isfinite(arr).any():
        return []
    arr = _learned(arr)
    return [float(np.mean(arr[i, : i + 1])) for i in range(arr.shape[0])]


def backward_transfer(matrix: Matrix) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): mean of R[T-1][j] - R[j][j] over j < T-1."""
    arr = _learned(matrix)
    last = arr.shape[0] - 1
    if last == 0:
        return 0.0
    diag = np.diagonal(arr)[:last]
    return float(np.mean(arr[last, :last] - diag))


def forgetting(matrix: Matrix) -> float:
    """Average forgetting (Chaudhry et al. 2018): mean of max_{l<T-1} R[l][j] - R[T-1][j] over j < T-1."""
    arr = _learned(matrix)
    last = arr.shape[0] - 1
    if last == 0:
        return 0.0
    drops = [np.max(arr[j:last, j]) - arr[last, j] for j in range(last)]
    return float(np.mean(drops))


def summarize(matrix: Matrix) -> dict[str, Any]:
    """Average accuracy per row, final average accuracy, BWT and forgetting in one dict."""
    curve = average_accuracy(matrix)
    if not curve:
        raise ValueError("accuracy matrix has no filled row")
    return {
        "average_accuracy": curve,
        "final_average_accuracy": curve[-1],
        "bwt": backward_transfer(matrix),
        "forgetting": forgetting(matrix),
    }
