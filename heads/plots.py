"""Evaluation plots as PNG files: predicted vs true, residuals, metrics per condition.

Drawn on ``matplotlib.figure.Figure`` objects with their own canvas: pyplot's
global backend and figure list are never touched, so a notebook keeps its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache import WriteError
from embedcache.toolkit import atomic_file, writing


def plot_names(labels: list[str], metrics: dict) -> list[str]:
    """The files ``write_plots`` writes for these labels and metrics."""
    names = []
    for label in labels:
        suffix = "" if len(labels) == 1 else f"-{label}"
        names += [f"pred_vs_true{suffix}.png", f"residuals{suffix}.png"]
        names += [f"{key}{suffix}.png" for key in ("per_condition", "per_group") if key in metrics]
    return names


def write_plots(
    directory,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: list[str],
    metrics: dict,
    overwrite: bool = False,
    trained=None,
) -> list[Path]:
    """PNGs of predictions against the truth into ``directory``; existing plots of the same names are
    refused unless ``overwrite`` (before anything is drawn), and each file is written whole or not at all.
    Per condition and per group the bars are sorted by RMSE and name their rows; conditions not among
    ``trained`` (the model's training conditions) are marked as never seen."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise WriteError(f"--plots {directory} is a file; give a directory for the plots")
    existing = [n for n in plot_names(labels, metrics) if (directory / n).exists()]
    if existing and not overwrite:
        raise WriteError(f"--plots {directory}: {', '.join(existing)} exist; pass --overwrite to replace them")
    with writing(directory, "creating"):
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for j, label in enumerate(labels):
        keep = ~np.isnan(y_true[:, j])
        t, p = y_true[keep, j], y_pred[keep, j]
        m = metrics["per_label"][label]
        suffix = "" if len(labels) == 1 else f"-{label}"

        fig, ax = _figure(5, 5)
        ax.scatter(t, p, s=6, alpha=0.4)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="prediction = truth")
        ax.set(
            xlabel=f"true {label}",
            ylabel=f"predicted {label}",
            title=f"{label}: Spearman {m['spearman']:.3f}, RMSE {m['rmse']:.3f}, n={m['n']}",
        )
        ax.legend(loc="upper left")
        written.append(_save(fig, directory / f"pred_vs_true{suffix}.png"))

        fig, ax = _figure(6, 4)
        ax.hist(p - t, bins=50)
        ax.axvline(0, color="black", linewidth=1)
        ax.set(xlabel="predicted - true", ylabel="rows", title=f"{label}: residuals (MAE {m['mae']:.3f})")
        written.append(_save(fig, directory / f"residuals{suffix}.png"))

        for key, what in (("per_condition", "condition"), ("per_group", "group")):
            if key in metrics:
                names = sorted(metrics[key], key=lambda c: metrics[key][c][label]["rmse"])  # best at the top
                values = [metrics[key][c][label]["rmse"] for c in names]
                new = [key == "per_condition" and trained is not None and c not in trained for c in names]
                ticks = [
                    f"{c} (n={metrics[key][c][label]['n']})" + (" unseen" if u else "") for c, u in zip(names, new)
                ]
                fig, ax = _figure(6, 0.4 * len(names) + 1.5)
                ax.barh(ticks, values, color=["tab:orange" if u else "tab:blue" for u in new])
                ax.invert_yaxis()
                title = f"{label}: RMSE per {what}" + (" (orange: never seen in training)" if any(new) else "")
                ax.set(xlabel="RMSE", title=title)
                written.append(_save(fig, directory / f"{key}{suffix}.png"))
    return written


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")  # a Figure made this way draws with Agg by itself
    return path
