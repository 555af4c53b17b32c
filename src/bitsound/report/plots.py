"""The report's figures, drawn with matplotlib and returned as PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global backend
state), so making a report never opens a window and is safe in threads and tests. Every figure
carries its own title, axis labels with units and a legend, so that it reads without the JSON.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitsound.errors import ConfigError

DPI = 110


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("bitsound report draws with matplotlib: pip install 'bitsound[report]'") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def training_curves(histories: Sequence[tuple[str, list[dict]]]) -> bytes | None:
    """Loss, accuracy, learning rate (and binary sign flips) per epoch, one line per fold.

    Parameters
    ----------
    histories : list of (name, records)
        ``log.jsonl`` records of each trained model (one for train, one per fold for cv).
    """
    histories = [(name, rows) for name, rows in histories if rows]
    if not histories:
        return None
    has_flips = any("sign_flip_fraction" in r for _, rows in histories for r in rows)
    has_val = any("val_accuracy" in r for _, rows in histories for r in rows)
    panels = 3 + has_flips
    fig = _figure(3.4 * panels, 3.0)
    axes = fig.subplots(1, panels)
    colors = [f"C{i}" for i in range(10)]
    for i, (name, rows) in enumerate(histories):
        color = colors[i % len(colors)]
        epochs = [r["epoch"] for r in rows]
        label = name if len(histories) > 1 else None

        def series(key, rows=rows):
            return [r.get(key, np.nan) for r in rows]

        axes[0].plot(epochs, series("train_loss"), color=color, label=f"{label or ''} train".strip())
        if any("val_log_loss" in r for r in rows):
            axes[0].plot(epochs, series("val_log_loss"), color=color, ls="--",
                         label=f"{label or ''} held-out".strip())
        if has_val:
            axes[1].plot(epochs, 100 * np.array(series("val_accuracy"), dtype=float), color=color,
                         label=f"{label or ''} accuracy".strip())
            if any("val_balanced_accuracy" in r for r in rows) and len(histories) == 1:
                axes[1].plot(epochs, 100 * np.array(series("val_balanced_accuracy"), dtype=float),
                             color=color, ls=":", label="balanced accuracy")
        axes[2].plot(epochs, series("lr"), color=color, label=label)
        if has_flips:
            axes[3].plot(epochs, 100 * np.array(series("sign_flip_fraction"), dtype=float), color=color,
                         label=label)
    axes[0].set(title="loss per epoch", xlabel="epoch", ylabel="cross-entropy")
    axes[1].set(title="held-out accuracy per epoch", xlabel="epoch", ylabel="%")
    if not has_val:
        axes[1].text(0.5, 0.5, "nothing held out\n(split kind none)", ha="center", va="center",
                     transform=axes[1].transAxes, color="0.4")
    axes[2].set(title="learning rate", xlabel="epoch", ylabel="lr")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if has_flips:
        axes[3].set(title="binary weights: signs flipped", xlabel="epoch", ylabel="% of latent weights")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and any(ax.get_legend_handles_labels()[1]):
            ax.legend(fontsize=7)
    return _png(fig)


def confusion(matrix: np.ndarray, labels: list[str]) -> bytes:
    """Confusion matrix: rows true label, columns predicted, cells counts shaded by row share."""
    matrix = np.asarray(matrix)
    n = len(labels)
    size = min(7.0, 2.5 + 0.4 * n)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros(matrix.shape, dtype=float), where=support > 0)
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7 if n > 12 else 9,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=60 if n > 6 else 0, ha="right" if n > 6 else "center",
                  fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set(xlabel="predicted label", ylabel="true label",
           title=f"confusion matrix ({int(matrix.sum())} held-out examples)")
    return _png(fig)


def bars(names: list[str], values: list[float], counts: list[int], *, title: str, xlabel: str) -> bytes:
    """Horizontal bars of percentages (per class recall, per group accuracy) with n per bar."""
    fig = _figure(6.0, 0.8 + 0.28 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))
    shown = [0.0 if v is None or np.isnan(v) else 100 * v for v in values]
    ax.barh(y, shown, color="C0")
    for i, (value, n) in enumerate(zip(values, counts, strict=True)):
        text = "no examples" if value is None or np.isnan(value) else f"{100 * value:.1f} %  (n={n})"
        ax.text(min(shown[i], 100) + 1, i, text, va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 125), xlabel=xlabel, title=title)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


@dataclass
class Point:
    """One model on a Pareto plot: accuracy (fraction) and a cost (> 0)."""

    name: str
    accuracy: float
    cost: float
    binary: bool = False
    data: str = ""  # fronts are drawn per data set: accuracies on other data do not compete


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats: none has a cost <= and an accuracy >= with one strict.

    Returned by increasing cost (then the front's accuracy increases too).
    """
    front = []
    for p in points:
        dominated = any(q.cost <= p.cost and q.accuracy >= p.accuracy
                        and (q.cost < p.cost or q.accuracy > p.accuracy) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.cost, p.accuracy))


def pareto(ours: Sequence[Point], published: Sequence[tuple[str, str, Point]], *, xlabel: str,
           title: str) -> bytes:
    """Accuracy against a cost (log axis): our runs, their Pareto front, published points.

    Parameters
    ----------
    ours : list of Point
        This report's runs (held-out accuracy); one front per data set (``Point.data``).
    published : list of (system, data, Point)
        Seed papers' points, drawn hollow with their data set in the legend: they were measured
        on other data, so they are context, not part of our front.
    """
    fig = _figure(7.5, 4.6)
    ax = fig.subplots()
    front: list[Point] = []
    for data in sorted({p.data for p in ours}):
        part = pareto_front([p for p in ours if p.data == data])
        front += part
        xs = [p.cost for p in part]
        ys = [100 * p.accuracy for p in part]
        ax.plot(xs, ys, color="C3", lw=1.5, ls="--", alpha=0.8, zorder=2)
        ax.scatter(xs, ys, s=200, facecolor="none", edgecolor="C3", linewidth=1.5, zorder=4,
                   label=None if len(front) > len(part) else "Pareto front of our runs, per data set (*)")
    for group, marker, color in ((False, "o", "C0"), (True, "s", "C2")):
        chosen = [p for p in ours if p.binary == group]
        if chosen:
            ax.scatter([p.cost for p in chosen], [100 * p.accuracy for p in chosen], marker=marker,
                       s=60, color=color, zorder=3, edgecolor="black", linewidth=0.6,
                       label="our runs, binary" if group else "our runs, float")
    on_front = {id(p) for p in front}
    for p in ours:
        ax.annotate(p.name + (" *" if id(p) in on_front else ""), (p.cost, 100 * p.accuracy),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    markers = "^vD<>ph"
    systems = sorted({system for system, _, _ in published})
    for k, system in enumerate(systems):
        pts = [(data, p) for s, data, p in published if s == system]
        ax.scatter([p.cost for _, p in pts], [100 * p.accuracy for _, p in pts], marker=markers[k % 7],
                   s=55, facecolor="none", edgecolor=f"C{4 + k}", linewidth=1.4, zorder=2,
                   label=f"published {system} ({pts[0][0]})")
        for _, p in pts:
            ax.annotate(p.name, (p.cost, 100 * p.accuracy), textcoords="offset points", xytext=(5, -10),
                        fontsize=7, color=f"C{4 + k}")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the names beside the markers
    ax.set(xlabel=xlabel, ylabel="held-out accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


__all__ = ["Point", "bars", "confusion", "pareto", "pareto_front", "training_curves"]
