"""Figures: learning curves per contender, weight histograms per layer, regularization paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from torchpenalty import select

from .training import RunResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(
    results: Sequence[RunResult], label: str, field: str
) -> tuple[np.ndarray, np.ndarray]:
    runs = [r for r in results if r.contender == label]
    values = np.array([[getattr(rec, field) for rec in r.history] for r in runs])
    epochs = np.array([rec.epoch for rec in runs[0].history])
    return epochs, values.mean(0)


def _positive(values: np.ndarray) -> bool:
    return bool(np.all(values > 0))


#: dash patterns and markers: with ten colors, every contender of a figure gets its own
#: combination, so curves that coincide (l2(1e-3) and weight_decay=1e-3) still read apart
DASHES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D", "x", "P", "*")


def line_styles(labels: Sequence[str], points: int) -> dict[str, dict[str, Any]]:
    """Each label's matplotlib line keywords: its own color, dash pattern and marker; markers
    every few points, offset from one label to the next so overlapping curves show each one."""
    every = max(1, points // 8)
    out = {}
    for i, label in enumerate(labels):
        out[label] = {
            "color": f"C{i % 10}",
            "linestyle": DASHES[i % len(DASHES)],
            "marker": MARKERS[i % len(MARKERS)],
            "markevery": (i * every // max(1, len(labels)) % every, every),
            "markersize": 4,
            "linewidth": 1.4,
        }
    return out


def _legend_below(fig: Any, handles: Sequence[Any], texts: Sequence[str]) -> None:
    """One legend for the whole figure, below the panels: never over the data."""
    columns = 1 if max(len(t) for t in texts) > 60 else min(len(texts), 3)
    fig.legend(handles, texts, loc="outside lower center", ncol=columns, fontsize=8)


def plot_curves(
    results: Sequence[RunResult],
    labels: Sequence[str],
    task: str,
    path: Path,
    legends: Mapping[str, str] | None = None,
) -> Any:
    """Train / test loss and test accuracy (or weight norm) per epoch, mean over seeds, one
    line style per contender and the legend (``legends``: a label's text) below the panels."""
    plt = _pyplot()
    rows = -(-len(labels) // (1 if any(len((legends or {}).get(x, x)) > 60 for x in labels) else 3))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4 + 0.22 * rows), layout="constrained")
    # for regression the test metric is the test loss (MSE): show the weight norm instead
    third = (
        ("test_metric", "test accuracy")
        if task == "classification"
        else ("weight_norm", "weight L2 norm")
    )
    panels = [
        (axes[0], "train_loss", "train data loss"),
        (axes[1], "test_loss", "test loss"),
        (axes[2], *third),
    ]
    points = max(len(_mean_curve(results, label, "train_loss")[0]) for label in labels)
    styles = line_styles(labels, points)
    handles: list[Any] = []
    for ax, field, title in panels:
        log = True
        handles = []
        for label in labels:
            epochs, values = _mean_curve(results, label, field)
            (line,) = ax.plot(epochs, values, **styles[label])
            handles.append(line)
            log = log and _positive(values) and field != "test_metric"
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _legend_below(fig, handles, [(legends or {}).get(label, label) for label in labels])
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_weight_histograms(models: Mapping[str, nn.Module], path: Path) -> Any:
    """One panel per weight tensor (the default selection), one histogram per contender (its
    own line style), one legend below with each contender's exact-zero fraction per panel.
    Panels pair the tensors by position: dropout layers shift a Sequential's names, not their
    weights."""
    plt = _pyplot()
    first = next(iter(models.values()))
    names = [n for n, _ in select(first)]
    weights = {label: [p for _, p in select(m)] for label, m in models.items()}
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(5 * cols, 3.4 * rows + 0.25 * len(models)),
        squeeze=False,
        layout="constrained",
    )
    styles = line_styles(list(models), 60)
    zero_text: dict[str, list[str]] = {label: [] for label in models}
    handles: list[Any] = []
    for index, (ax, name) in enumerate(zip(axes.flat, names, strict=False)):
        values = {
            label: tensors[index].detach().cpu().double().numpy().ravel()
            for label, tensors in weights.items()
        }
        span = max(float(np.abs(v).max()) for v in values.values()) or 1.0
        bins = np.linspace(-span, span, 61)
        handles = []
        for label, v in values.items():
            zero_text[label].append(f"{int((v == 0).sum())}/{v.size}")
            style = {k: styles[label][k] for k in ("color", "linestyle", "linewidth")}
            *_, patches = ax.hist(v, bins=bins, histtype="step", **style)
            handles.append(patches[0])
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    texts = [f"{label} (exact zeros per panel: {', '.join(zero_text[label])})" for label in models]
    _legend_below(fig, handles, texts)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_sweep(rows: Sequence[dict[str, Any]], task: str, chosen: float, path: Path) -> Any:
    """Validation / test metric, weight norm and sparsity against lambda (log axis)."""
    plt = _pyplot()
    lams = np.array([r["lam"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    metric = "accuracy" if task == "classification" else "MSE"
    styles = line_styles(["validation", "test", "chosen"], len(lams))
    handles = [
        axes[0].plot(lams, [r["val_metric"] for r in rows], **styles["validation"])[0],
        axes[0].plot(lams, [r["test_metric"] for r in rows], **styles["test"])[0],
        axes[0].axvline(chosen, color="gray", linestyle="--"),
    ]
    if task == "regression":
        axes[0].set_yscale("log")
    axes[1].plot(lams, [r["weight_norm"] for r in rows], marker="o")
    axes[1].set_title("weight L2 norm")
    axes[2].plot(lams, [r["zero_fraction"] for r in rows], marker="o")
    axes[2].set_title("fraction of exact-zero weights")
    axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xscale(
            "log" if np.all(lams > 0) else "symlog",
            **({} if np.all(lams > 0) else {"linthresh": 1e-8}),
        )
        ax.set_xlabel("lambda")
        ax.grid(alpha=0.3)
    texts = [f"validation {metric}", f"test {metric}", f"chosen on validation: {chosen:.3g}"]
    _legend_below(fig, handles, texts)
    axes[0].set_title(f"{metric} against lambda")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_lr_decay_grids(
    grids: Mapping[str, Mapping[str, np.ndarray]],
    titles: Mapping[str, str],
    lrs: Sequence[float],
    decays: Sequence[float],
    path: Path,
) -> Any:
    """Heatmaps of test loss (top) and test accuracy (bottom) over learning rate x weight decay,
    one column per optimizer, each row on one color scale; the best cell of each panel boxed."""
    plt = _pyplot()
    names = list(grids)
    fig, axes = plt.subplots(2, len(names), figsize=(5.4 * len(names), 8.4), squeeze=False)
    for row, (field, title, cmap, best) in enumerate(
        [
            ("test_loss", "test loss", "viridis_r", np.nanargmin),
            ("test_metric", "test accuracy", "viridis", np.nanargmax),
        ]
    ):
        low = min(float(np.nanmin(grids[n][field])) for n in names)
        high = max(float(np.nanmax(grids[n][field])) for n in names)
        for col, name in enumerate(names):
            ax, grid = axes[row][col], grids[name][field]
            image = ax.imshow(grid, cmap=cmap, vmin=low, vmax=high, aspect="auto")
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    value = grid[i, j]
                    text = f"{value:.0%}" if field == "test_metric" else f"{value:.2f}"
                    shade = (value - low) / ((high - low) or 1.0)  # viridis: light at the top
                    light = shade > 0.5 if cmap == "viridis" else shade < 0.5
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if light else "white",
                    )
            top, left = (int(k) for k in np.unravel_index(best(grid), grid.shape))
            ax.add_patch(
                plt.Rectangle((left - 0.5, top - 0.5), 1, 1, fill=False, color="red", lw=2)
            )
            ax.set_xticks(range(len(decays)), [f"{d:g}" for d in decays], fontsize=8)
            ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=8)
            ax.set_xlabel("weight decay")
            ax.set_ylabel("learning rate")
            ax.set_title(f"{titles[name]}: {title} (box: best cell)")
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
