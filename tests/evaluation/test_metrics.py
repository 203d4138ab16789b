"""Tests for bir_keras.evaluation.metrics and bir_keras.evaluation.plots."""

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bir_keras.evaluation import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# R[i][j]: accuracy on task j after learning task i.
R4 = [
    [0.90, None, None, None],
    [0.70, 0.95, None, None],
    [0.80, 0.60, 0.85, None],
    [0.50, 0.65, 0.75, 0.99],
]


def test_to_array_none_to_nan_and_ragged_rows():
    arr = metrics.to_array([[0.5], [0.25, 0.75]])
    assert arr.dtype == np.float64
    assert arr.shape == (2, 2)
    assert math.isnan(arr[0, 1])
    np.testing.assert_array_equal(arr[1], [0.25, 0.75])
    arr4 = metrics.to_array(R4)
    assert arr4.shape == (4, 4)
    assert np.isnan(arr4[np.triu_indices(4, 1)]).all()


def test_average_accuracy_per_row():
    expected = [
        0.90,
        (0.70 + 0.95) / 2,  # 0.825
        (0.80 + 0.60 + 0.85) / 3,  # 0.75
        (0.50 + 0.65 + 0.75 + 0.99) / 4,  # 0.7225
    ]
    np.testing.assert_allclose(metrics.average_accuracy(R4), expected)


def test_backward_transfer_by_hand():
    # (0.50 - 0.90) + (0.65 - 0.95) + (0.75 - 0.85) = -0.40 - 0.30 - 0.10 = -0.80; / 3
    assert metrics.backward_transfer(R4) == pytest.approx(-0.80 / 3)


def test_forgetting_by_hand():
    # task 0: max(0.90, 0.70, 0.80) - 0.50 = 0.40
    # task 1: max(0.95, 0.60) - 0.65 = 0.30
    # task 2: max(0.85) - 0.75 = 0.10
    assert metrics.forgetting(R4) == pytest.approx((0.40 + 0.30 + 0.10) / 3)


def test_forgetting_uses_max_not_diagonal():
    # Accuracy on task 0 rises after task 1 (positive transfer), then drops.
    r = [[0.5, None, None], [0.9, 0.8, None], [0.6, 0.7, 0.9]]
    # BWT: ((0.6 - 0.5) + (0.7 - 0.8)) / 2 = 0.0
    assert metrics.backward_transfer(r) == pytest.approx(0.0)
    # forgetting: ((0.9 - 0.6) + (0.8 - 0.7)) / 2 = 0.2
    assert metrics.forgetting(r) == pytest.approx(0.2)


def test_single_task_and_partially_filled():
    assert metrics.backward_transfer([[0.9]]) == 0.0
    assert metrics.forgetting([[0.9]]) == 0.0
    partial = [row[:] for row in R4[:3]] + [[None, None, None, None]]
    # last filled row is row 2: BWT = ((0.80 - 0.90) + (0.60 - 0.95)) / 2 = -0.225
    assert metrics.backward_transfer(partial) == pytest.approx(-0.225)
    # forgetting = ((0.90 - 0.80) + (0.95 - 0.60)) / 2 = 0.225
    assert metrics.forgetting(partial) == pytest.approx(0.225)
    assert len(metrics.average_accuracy(partial)) == 3
    nan_partial = np.array(metrics.to_array(R4))
    nan_partial[3] = np.nan
    assert metrics.backward_transfer(nan_partial) == pytest.approx(-0.225)


def test_summarize():
    summary = metrics.summarize(R4)
    assert set(summary) == {"average_accuracy", "final_average_accuracy", "bwt", "forgetting"}
    assert summary["final_average_accuracy"] == pytest.approx(0.7225)
    assert summary["bwt"] == pytest.approx(-0.80 / 3)
    assert summary["forgetting"] == pytest.approx(0.80 / 3)
    assert len(summary["average_accuracy"]) == 4


def test_empty_matrix_raises():
    with pytest.raises(ValueError):
        metrics.backward_transfer([[None, None]])
    assert metrics.average_accuracy([]) == []


def _check_png(path, folder):
    assert os.path.getsize(path) > 100
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    leftovers = [name for name in os.listdir(folder) if not name.endswith(".png")]
    assert leftovers == []


def test_plot_accuracy_matrix(tmp_path):
    path = tmp_path / "sub" / "matrix.png"
    plots.plot_accuracy_matrix(R4, path, title="split MNIST")
    _check_png(path, tmp_path / "sub")


def test_plot_average_accuracy(tmp_path):
    path = tmp_path / "avg.png"
    curves = {
        "BI-R": ([0.99, 0.95, 0.9, 0.88, 0.86], [0.01, 0.01, 0.02, 0.02, 0.03]),
        "None": ([0.99, 0.5, 0.33, 0.25, 0.2], None),
    }
    plots.plot_average_accuracy(curves, str(path), title="Class-IL")
    _check_png(path, tmp_path)
    # overwrite in place works too
    plots.plot_average_accuracy(curves, path)
    _check_png(path, tmp_path)


def test_plot_average_accuracy_tells_eleven_curves_apart(tmp_path, monkeypatch):
    # Fig. 3's Task-IL panel has 11 methods: the 11th must not look like the 1st
    # (once each curve was drawn in its own call, so every curve was solid)
    styles = []
    real_plot = plt.Axes.plot

    def spy(self, *args, **kwargs):
        lines = real_plot(self, *args, **kwargs)
        styles.extend((ln.get_color(), ln.get_linestyle()) for ln in lines)
        return lines

    monkeypatch.setattr(plt.Axes, "plot", spy)
    curves = {f"m{i}": ([0.9, 0.8 - 0.01 * i], None) for i in range(11)}
    plots.plot_average_accuracy(curves, tmp_path / "avg.png")
    assert len(styles) == 11 and len(set(styles)) == 11


def test_plot_sweep_log2(tmp_path):
    path = tmp_path / "sweep.png"
    xs = [1, 2, 4, 8, 16, 32, 64, 128]
    means = np.linspace(0.5, 0.9, len(xs))
    curves = {"GR": (means, np.full(len(xs), 0.02)), "BI-R": (means + 0.05, None)}
    plots.plot_sweep(xs, curves, path, xlabel="replayed samples per batch", log_x=True)
    _check_png(path, tmp_path)


def test_plot_bad_curve_length_leaves_nothing(tmp_path):
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError):
        plots.plot_sweep([1, 2, 3], {"x": ([0.1, 0.2], None)}, path, xlabel="x")
    assert os.listdir(tmp_path) == []
