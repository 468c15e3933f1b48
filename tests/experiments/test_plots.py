"""Figures a person can read: every figure the CLI writes has its legend off the data, and each
contender its own line style, even where curves coincide (``l2(1e-3)`` and
``weight_decay=0.001``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

pytest.importorskip("matplotlib")

from torchpenalty.experiments import plots
from torchpenalty.experiments.training import EpochRecord, RunResult

LABELS = ["none", "l2(1e-3)", "l1(1e-4)", "weight_decay=0.001", "dropout(0.3)", "l1@proximal"]


def record(epoch: int, loss: float) -> EpochRecord:
    return EpochRecord(
        epoch, loss, 0.0, loss, 0.9, loss, 0.9 + 0.001 * epoch, 10.0, 0.0, 0, math.nan
    )


def results(epochs: int = 60) -> list[RunResult]:
    out = []
    for i, label in enumerate(LABELS):
        same = 1 if label == "weight_decay=0.001" else i  # equal to l2(1e-3)'s curves
        history = [record(e, 1.0 / (e + same)) for e in range(1, epochs + 1)]
        out.append(RunResult(label, 0, history, 1.0))
    return out


def assert_legend_off_the_data(fig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the saved figure's layout, on a new canvas
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.axison:
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def assert_own_styles(lines) -> None:
    styles = [(line.get_color(), str(line.get_linestyle()), line.get_marker()) for line in lines]
    for a, b in itertools.combinations(styles, 2):
        assert a != b


def test_curves(tmp_path):
    fig = plots.plot_curves(results(), LABELS, "classification", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert_legend_off_the_data(fig)
    for ax in fig.axes:
        assert_own_styles(ax.get_lines())
        assert ax.get_legend() is None  # no legend over any panel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == LABELS


def test_weight_histograms(tmp_path):
    models = {}
    for i, label in enumerate(LABELS[:4]):
        torch.manual_seed(i)
        models[label] = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        models["l1(1e-4)"][0].weight[:2] = 0
    fig = plots.plot_weight_histograms(models, tmp_path / "weights.png")
    assert_legend_off_the_data(fig)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[2] == "l1(1e-4) (exact zeros per panel: 16/48, 0/18)"
    for ax in fig.axes:
        if ax.axison:
            patches = ax.patches
            styles = [(p.get_edgecolor(), str(p.get_linestyle())) for p in patches]
            assert len(set(styles)) == len(styles)


def test_sweep(tmp_path):
    rows = [
        {"lam": lam, "val_metric": 0.9, "test_metric": 0.9, "weight_norm": 1.0, "zero_fraction": 0}
        for lam in (1e-5, 1e-4, 1e-3)
    ]
    fig = plots.plot_sweep(rows, "classification", 1e-4, tmp_path / "sweep.png")
    assert_legend_off_the_data(fig)
    assert_own_styles(fig.axes[0].get_lines()[:2])  # validation and test coincide here
