"""Plots of the artefacts of a training run: learning curves, stacked histograms, ROC, 2D scores.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no
backend switching: ``savefig`` renders with Agg), written to ``path`` (parent directories are
created, the format follows the suffix) and cleared afterwards, so repeated calls do not leak.
matplotlib is imported lazily: :func:`roc_curve` works without it.

Example:
    >>> import numpy as np
    >>> from diffhep.plotting import roc_curve
    >>> eff_b, eff_s, auc = roc_curve(np.array([0.9, 0.4]), None, np.array([0.1, 0.4]), None)
    >>> [float(v) for v in eff_b], [float(v) for v in eff_s], auc
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0], 0.875)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_observable_2d", "plot_roc", "plot_stacked", "plot_training", "roc_curve"]

DEFAULT_METRICS = ("loss", "val_expected_cls", "val_sigma_mu", "val_z0")


def _new_figure(figsize):
    from matplotlib.figure import Figure  # lazy: plotting is an optional extra

    return Figure(figsize=figsize, layout="constrained")


def _save(fig, path) -> None:
    """Write ``fig`` to ``path`` (creating parent directories) and release its artists."""
    try:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        fig.clear()


def _number(value) -> float | None:
    """``value`` as a finite float, or ``None`` if it is missing, ``None`` or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def plot_training(history, path, metrics: Sequence[str] = DEFAULT_METRICS) -> None:
    """Learning curves: one panel per metric against the epoch.

    Args:
        history: List of per-epoch dicts with key ``"epoch"`` and numeric metrics, or a dict
            ``{label: list-of-dicts}`` to overlay several runs (drawn with a legend). Missing,
            ``None`` or non-finite values are skipped. An optional ``"<metric>_std"`` entry is
            drawn as a band ``mean +- std`` (e.g. for means over seeds).
        path: Output file.
        metrics: Metrics to draw; those without any value in ``history`` are left out. Keys
            containing ``"cls"`` get a log y-axis (band lower edges that are not positive are
            clipped to a tenth of the mean there).

    Raises:
        ValueError: If none of ``metrics`` has a value in ``history``.
    """
    runs = dict(history) if isinstance(history, Mapping) else {None: history}
    curves = {}  # metric -> list of (label, epochs, mean, std)
    for metric in metrics:
        for label, entries in runs.items():
            rows = []
            for i, entry in enumerate(entries):
                mean = _number(entry.get(metric))
                if mean is not None:
                    std = _number(entry.get(f"{metric}_std"))
                    rows.append(
                        (float(entry.get("epoch", i)), mean, np.nan if std is None else std)
                    )
            if rows:
                epochs, mean, std = (np.array(c) for c in zip(*rows, strict=True))
                curves.setdefault(metric, []).append((label, epochs, mean, std))
    if not curves:
        raise ValueError(f"none of the metrics {tuple(metrics)} has a value in the history")

    fig = _new_figure((6.4, 2.4 * len(curves)))
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (metric, lines) in zip(axes, curves.items(), strict=True):
        log = "cls" in metric and any((mean > 0).any() for _, _, mean, _ in lines)
        for label, epochs, mean, std in lines:
            (line,) = ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None, label=label)
            if np.isfinite(std).any():
                lo, hi = mean - std, mean + std
                if log:
                    lo = np.where(lo > 0, lo, mean / 10)
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if any(label is not None for label, *_ in lines):
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    _save(fig, path)


def plot_stacked(edges, samples, signal, path, variations=None, data=None, title=None) -> None:
    """Stacked, step-filled histogram of the sample yields with the signal on top.

    Args:
        edges: Bin edges, shape ``(n + 1,)``.
        samples: ``{name: per-bin yields}``; backgrounds are stacked in the given order.
        signal: Name of the signal sample in ``samples``, stacked last.
        path: Output file.
        variations: Optional ``{label: per-bin yields}`` drawn as step lines (e.g. the total
            background yields of the up and down variations of a systematic).
        data: Optional observed per-bin counts, drawn as points with ``sqrt(n)`` error bars.
        title: Optional axes title.

    Raises:
        ValueError: If ``signal`` is not a sample or a yield vector does not match ``edges``.
    """
    edges = np.asarray(edges, dtype=float)
    if signal not in samples:
        raise ValueError(f"signal sample {signal!r} not in samples {list(samples)}")

    def _yields(name, values):
        values = np.asarray(values, dtype=float)
        if values.shape != (len(edges) - 1,):
            raise ValueError(f"{name!r}: {values.shape} yields for {len(edges) - 1} bins")
        return values

    order = [name for name in samples if name != signal] + [signal]
    fig = _new_figure((6.4, 4.8))
    ax = fig.add_subplot()
    bottom = np.zeros(len(edges) - 1)
    for name in order:
        top = bottom + _yields(name, samples[name])
        ax.stairs(top, edges, baseline=bottom, fill=True, alpha=0.8, label=name)
        bottom = top
    for i, (label, values) in enumerate((variations or {}).items()):
        ax.stairs(
            _yields(label, values), edges, color=f"C{len(order) + i}", ls="--", lw=1.5, label=label
        )
    if data is not None:
        counts = _yields("data", data)
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.errorbar(centres, counts, yerr=np.sqrt(np.clip(counts, 0, None)), fmt="ko", label="data")
    ax.set_xlabel("observable")
    ax.set_ylabel("events")
    ax.set_xlim(edges[0], edges[-1])
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    _save(fig, path)


def roc_curve(score_signal, w_signal, score_background, w_background):
    """Weighted ROC curve, selecting events with ``score >= threshold``.

    Thresholds run over all distinct scores of both samples, from the highest to the lowest,
    preceded by one above the highest, so the curve starts at ``(0, 0)`` and ends at
    ``(1, 1)``. Weights may be negative (e.g. NLO events); only the totals must not vanish.

    Args:
        score_signal: Signal scores, shape ``(n_s,)``.
        w_signal: Signal weights, shape ``(n_s,)``, or ``None`` for unit weights.
        score_background: Background scores, shape ``(n_b,)``.
        w_background: Background weights, shape ``(n_b,)``, or ``None`` for unit weights.

    Returns:
        ``(efficiency_background, efficiency_signal, auc)``: two arrays of length
        ``n_thresholds + 1`` (cumulative weight above threshold over total weight) and the
        area under the curve by the trapezoidal rule, which equals the weighted Mann-Whitney
        statistic ``P(s > b) + P(s = b) / 2``.

    Raises:
        ValueError: On empty inputs, shape mismatches, non-finite values or zero total weight.
    """
    scores, weights = [], []
    for kind, s, w in (
        ("signal", score_signal, w_signal),
        ("background", score_background, w_background),
    ):
        s = np.asarray(s, dtype=float).ravel()
        w = np.ones_like(s) if w is None else np.asarray(w, dtype=float).ravel()
        if s.size == 0 or w.shape != s.shape:
            raise ValueError(
                f"{kind}: need matching, non-empty scores {s.shape} and weights {w.shape}"
            )
        if not (np.isfinite(s).all() and np.isfinite(w).all()):
            raise ValueError(f"{kind}: scores and weights must be finite")
        scores.append(s)
        weights.append(w)
    thresholds = np.unique(np.concatenate(scores))[::-1]  # distinct scores, descending
    effs = []
    for s, w, kind in zip(scores, weights, ("signal", "background"), strict=True):
        per_threshold = np.bincount(
            np.searchsorted(-thresholds, -s), weights=w, minlength=len(thresholds)
        )
        cumulative = np.concatenate([[0.0], np.cumsum(per_threshold)])
        if cumulative[-1] == 0:
            raise ValueError(f"{kind}: total weight is zero")
        effs.append(cumulative / cumulative[-1])
    eff_s, eff_b = effs
    auc = float(np.sum(np.diff(eff_b) * (eff_s[1:] + eff_s[:-1])) / 2)
    return eff_b, eff_s, auc


def plot_roc(score_signal, w_signal, score_background, w_background, path) -> float:
    """Draw the :func:`roc_curve` (with the AUC in the legend) to ``path``; returns the AUC."""
    eff_b, eff_s, auc = roc_curve(score_signal, w_signal, score_background, w_background)
    fig = _new_figure((4.8, 4.8))
    ax = fig.add_subplot()
    ax.plot(eff_b, eff_s, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="random")
    ax.set_xlabel("background efficiency")
    ax.set_ylabel("signal efficiency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)
    return auc


def plot_observable_2d(
    fn: Callable[[np.ndarray], np.ndarray],
    path,
    samples: Mapping[str, np.ndarray] | None = None,
    xlim=(-5, 5),
    ylim=(-5, 5),
    feature_names=("x0", "x1"),
    n_grid: int = 200,
) -> None:
    """Colour map of a learned observable over a 2D feature plane, with sample points on top.

    Args:
        fn: Maps an ``(n, 2)`` array of features to ``(n,)`` scores (numpy or JAX output).
        path: Output file.
        samples: Optional ``{name: (n, 2) array}``; up to 300 points of each (a fixed-seed
            random subset if there are more) are overlaid as small markers with a legend.
        xlim: Range of the first feature.
        ylim: Range of the second feature.
        feature_names: Axis labels.
        n_grid: Grid points per axis.

    Raises:
        ValueError: If ``fn`` does not return one score per grid point or a sample is not
            ``(n, 2)``.
    """
    xx, yy = np.meshgrid(np.linspace(*xlim, n_grid), np.linspace(*ylim, n_grid))
    z = np.asarray(fn(np.column_stack([xx.ravel(), yy.ravel()])), dtype=float)
    if z.size != xx.size:
        raise ValueError(f"fn returned shape {z.shape} for {xx.size} points")
    fig = _new_figure((6.4, 5.2))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(xx, yy, z.reshape(xx.shape), shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="observable")
    rng = np.random.default_rng(0)
    markers = "o^sv<>Dp"
    for i, (name, points) in enumerate((samples or {}).items()):
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"sample {name!r} has shape {points.shape}, expected (n, 2)")
        if len(points) > 300:
            points = points[rng.choice(len(points), 300, replace=False)]
        ax.scatter(*points.T, s=6, marker=markers[i % len(markers)], color=f"C{i}", label=name)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(feature_names[0])
    ax.set_ylabel(feature_names[1])
    if samples:
        ax.legend(fontsize="small", loc="upper right")
    _save(fig, path)
