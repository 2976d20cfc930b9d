"""Plots of the artefacts of a training run: learning curves, ROC, cut flow; the stacked
histograms (:mod:`diffhep.plotting.histograms`) and the observable against its inputs
(:mod:`diffhep.plotting.features`) are re-exported here, so that one module holds every
figure of a run's report.

Figures and styles: :mod:`diffhep.plotting.style` (every ``plot_*`` function takes
``style=``, ``"plain"`` or an experiment's mplhep style). matplotlib is imported lazily:
:func:`roc_curve` works without it.

Example:
    >>> import numpy as np
    >>> from diffhep.plotting.runs import roc_curve
    >>> eff_b, eff_s, auc = roc_curve(np.array([0.9, 0.4]), None, np.array([0.1, 0.4]), None)
    >>> [float(v) for v in eff_b], [float(v) for v in eff_s], auc
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0], 0.875)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .features import feature_profiles, plot_observable_2d, plot_observable_vs_features
from .histograms import plot_stacked, uncertainty_band
from .style import (
    STYLES,
    experiment_label,
    experiment_style,
    new_figure,
    plain,
    save_figure,
    styled,
)

__all__ = [
    "STYLES",
    "experiment_style",
    "feature_profiles",
    "new_figure",
    "plot_cutflow",
    "plot_observable_2d",
    "plot_observable_vs_features",
    "plot_roc",
    "plot_stacked",
    "plot_training",
    "roc_curve",
    "save_figure",
    "uncertainty_band",
]

DEFAULT_METRICS = ("loss", "val_expected_cls", "val_sigma_mu", "val_z0")


def _number(value) -> float | None:
    """``value`` as a finite float, or ``None`` if it is missing, ``None`` or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@styled
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

    # experiment styles have larger fonts: taller panels keep the y labels inside the figure
    panel = 2.4 if plain() else 3.4
    fig = new_figure((6.4, panel * len(curves)))
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
        ax.set_ylabel(metric, fontsize="small")
        ax.grid(alpha=0.3)
        if any(label is not None for label, *_ in lines):
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("epoch")
    experiment_label(axes[0])
    save_figure(fig, path)


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


@styled
def plot_roc(score_signal, w_signal, score_background, w_background, path) -> float:
    """Draw the :func:`roc_curve` (with the AUC in the legend) to ``path``; returns the AUC.

    An observable trained on a statistical loss (CLs, Z, sigma_mu) may put the signal at
    low scores (its binning does not care which end): where the AUC of selecting high scores
    is below 0.5, the curve drawn and the AUC returned select low scores (``1 - AUC``), and
    the legend says so (a curve below the diagonal, AUC 0.02, read as worse than random)."""
    eff_b, eff_s, auc = roc_curve(score_signal, w_signal, score_background, w_background)
    low = auc < 0.5
    if low:
        minus_s, minus_b = (-np.asarray(x, dtype=float) for x in (score_signal, score_background))
        eff_b, eff_s, auc = roc_curve(minus_s, w_signal, minus_b, w_background)
    fig = new_figure((4.8, 4.8))
    ax = fig.add_subplot()
    ax.plot(eff_b, eff_s, label=f"AUC = {auc:.4f}" + (" (signal at low scores)" if low else ""))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="random")
    ax.set_xlabel("background efficiency")
    ax.set_ylabel("signal efficiency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    experiment_label(ax)
    save_figure(fig, path)
    return auc


@styled
def plot_cutflow(rows: Sequence[Mapping], path, samples: Sequence[str] | None = None) -> None:
    """Weighted yield of every sample after each successive cut (log scale), with the
    fraction of the first row kept written over the bars.

    Args:
        rows: The cut flow of :meth:`diffhep.analysis.cuts.Selection.cutflow`: ``{"cut": label,
            sample: {"events": n, "yield": y}, ...}``, the first row before any cut.
        path: Output file.
        samples: Samples to draw (default: every sample of the first row).

    Raises:
        ValueError: Without rows or samples.
    """
    if not rows:
        raise ValueError("empty cut flow")
    samples = list(samples or [k for k in rows[0] if k != "cut"])
    if not samples:
        raise ValueError("the cut flow has no samples")
    labels = [str(r["cut"]) for r in rows]
    fig = new_figure((max(6.4, 1.6 * len(rows)), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / len(samples)
    x = np.arange(len(rows))
    for i, s in enumerate(samples):
        y = np.array([float(r[s]["yield"]) for r in rows])
        pos = x - 0.4 + (i + 0.5) * width
        ax.bar(pos, np.where(y > 0, y, np.nan), width, label=s, color=f"C{i}")
        for p, v in zip(pos, y, strict=True):
            if y[0] > 0:
                ax.text(p, v if v > 0 else 1, f"{v / y[0]:.2g}", ha="center", va="bottom",
                        fontsize="x-small", rotation=90)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel("weighted yield")
    ax.legend(fontsize="small")
    experiment_label(ax)
    save_figure(fig, path)
