"""Plots of the artefacts of a training run: learning curves, stacked histograms with an
uncertainty band and a ratio panel, ROC, cut flow, the observable against its inputs.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, no
backend switching: ``savefig`` renders with Agg), written to ``path`` (parent directories are
created, the format follows the suffix) and cleared afterwards, so repeated calls do not leak.
matplotlib is imported lazily: :func:`roc_curve` works without it.

Every ``plot_*`` function takes ``style=``: ``"plain"`` (default) or an experiment's style
(``"ATLAS"``, ``"CMS"``, ``"LHCb"``) from mplhep, applied as a context for that one figure
(matplotlib's global ``rcParams`` are left as they were) with the experiment's label.

Example:
    >>> import numpy as np
    >>> from diffhep.plotting.runs import roc_curve
    >>> eff_b, eff_s, auc = roc_curve(np.array([0.9, 0.4]), None, np.array([0.1, 0.4]), None)
    >>> [float(v) for v in eff_b], [float(v) for v in eff_s], auc
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0], 0.875)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

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
#: Plot styles: plain matplotlib, or an experiment's mplhep style (name of the mplhep style).
STYLES = {"plain": None, "ATLAS": "ATLAS", "CMS": "CMS", "LHCb": "LHCb2"}
_STYLE = contextvars.ContextVar("diffhep_plot_style", default="plain")


@contextlib.contextmanager
def experiment_style(style: str | None):
    """Context in which figures take ``style`` (:data:`STYLES`); restores ``rcParams``."""
    style = style or "plain"
    if style not in STYLES:
        raise ValueError(f"unknown plot style {style!r}; use one of {', '.join(STYLES)}")
    token = _STYLE.set(style)
    try:
        if STYLES[style] is None:
            yield
        else:
            import matplotlib.style
            import mplhep

            with matplotlib.style.context(getattr(mplhep.style, STYLES[style])):
                yield
    finally:
        _STYLE.reset(token)


def _styled(fn):
    """Run ``fn`` inside :func:`experiment_style` of its ``style`` keyword."""

    @functools.wraps(fn)
    def wrapper(*args, style=None, **kwargs):
        with experiment_style(style):
            return fn(*args, **kwargs)

    return wrapper


def _experiment_label(ax) -> None:
    """The experiment's label ("ATLAS Simulation Internal", ...) in the current style."""
    style = _STYLE.get()
    if STYLES[style] is None:
        return
    import mplhep

    module = {"ATLAS": mplhep.atlas, "CMS": mplhep.cms, "LHCb": mplhep.lhcb}[style]
    module.label(ax=ax, data=False, text="Internal", com=None, rlabel="", loc=0)


def new_figure(figsize):
    """A matplotlib ``Figure`` (constrained layout) not tied to pyplot's global state."""
    from matplotlib.figure import Figure  # lazy: plotting is an optional extra

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig, path) -> None:
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


@_styled
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
    panel = 2.4 if STYLES[_STYLE.get()] is None else 3.4
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
    _experiment_label(axes[0])
    save_figure(fig, path)


@_styled
def plot_stacked(
    edges,
    samples,
    signal,
    path,
    variations=None,
    data=None,
    title=None,
    band=None,
    xlabel="observable",
    signal_overlay: float | str | None = "auto",
    logy: bool = False,
) -> None:
    """Stacked, step-filled histogram of the sample yields with the signal on top, an
    uncertainty band on the total, and a lower panel: data / total with data, S/B without
    (a ratio to the total would be 1 by construction).

    Args:
        edges: Bin edges, shape ``(n + 1,)``.
        samples: ``{name: per-bin yields}``; backgrounds are stacked in the given order.
        signal: Name of the signal sample in ``samples``, stacked last.
        path: Output file.
        variations: Optional ``{label: per-bin yields}`` drawn as step lines over the stack
            (e.g. the total yields of the up and down variations of a systematic), and with
            data their ratio to the total in the lower panel.
        data: Optional observed per-bin counts, drawn as points with ``sqrt(n)`` error bars.
        title: Optional axes title.
        band: Optional ``(low, high)`` per-bin totals (e.g. :func:`uncertainty_band`), drawn
            hatched around the stack (and, with data, relative to it in the lower panel).
        xlabel: Label of the x axis.
        signal_overlay: The signal also drawn unstacked, scaled by this factor (a line
            labelled ``signal xK``); ``"auto"``: a power of ten bringing its largest bin to
            the background's when it is below a fifth of it (none otherwise); None: no
            overlay.
        logy: A logarithmic y axis (for a small signal under a large background).

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
    fig = new_figure((6.4, 6.4))
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    import mplhep

    yields = [_yields(name, samples[name]) for name in order]
    drawn_stack = mplhep.histplot(yields, edges, stack=True, histtype="fill", label=order,
                                  alpha=0.8, zorder=1, ax=ax)  # fmt: skip
    # mplhep returns the stack top first; bottom-up here: the backgrounds, then the signal
    stack = [a.stairs for a in reversed(drawn_stack)]
    total = np.sum(yields, axis=0)
    sig = _yields(signal, samples[signal])
    bkg = total - sig
    safe = np.where(total > 0, total, np.nan)  # no ratio where nothing is expected
    above = []  # drawn over the stack, in legend order after it
    drawn = [total]
    if band is not None:
        lo, hi = _yields("band low", band[0]), _yields("band high", band[1])
        hatch = {"fill": False, "hatch": "////", "color": "0.3", "lw": 0}
        above.append(ax.stairs(hi, edges, baseline=lo, label="uncertainty", zorder=4, **hatch))
        if data is not None:
            rax.stairs(hi / safe, edges, baseline=lo / safe, **hatch)
    for i, (label, values) in enumerate((variations or {}).items()):
        values = _yields(label, values)
        kw = {"color": f"C{len(order) + i}", "ls": "--", "lw": 1.5}
        above.append(ax.stairs(values, edges, label=label, zorder=5, **kw))
        drawn.append(values)
        if data is not None:
            rax.stairs(values / safe, edges, baseline=None, **kw)  # no edges down to 0
    k = _overlay_factor(signal_overlay, sig, bkg)
    if k is not None:
        kw = {"color": stack[-1].get_facecolor(), "lw": 2, "zorder": 6}
        label = f"{signal} x{k:g}" if k != 1 else f"{signal} (unstacked)"
        above.append(ax.stairs(k * sig, edges, label=label, **kw))
        drawn.append(k * sig)
    centres = 0.5 * (edges[1:] + edges[:-1])
    if data is not None:
        counts = _yields("data", data)
        err = np.sqrt(np.clip(counts, 0, None))
        above.append(ax.errorbar(centres, counts, yerr=err, fmt="ko", label="data", zorder=7))
        drawn.append(counts)
        rax.errorbar(centres, counts / safe, yerr=err / safe, fmt="ko")
        rax.axhline(1.0, color="grey", lw=1)
        rax.set_ylabel("data / total")
    else:
        sb = np.where(bkg > 0, sig / np.where(bkg > 0, bkg, 1.0), np.nan)
        rax.stairs(sb, edges, color=stack[-1].get_facecolor(), lw=1.5)
        rax.set_ylabel("S/B")
        rax.set_ylim(0, None)
    rax.set_xlabel(xlabel)
    ax.set_ylabel("events")
    ax.set_xlim(edges[0], edges[-1])
    if logy:
        positive = np.concatenate([np.ravel(v) for v in drawn])
        positive = positive[np.isfinite(positive) & (positive > 0)]
        ax.set_yscale("log")
        if positive.size:
            ax.set_ylim(positive.min() / 2, positive.max() * 20)
    else:
        ax.set_ylim(0, None)
    plain = STYLES[_STYLE.get()] is None
    if title is not None and plain:
        ax.set_title(title)
    handles = [*reversed(stack), *above]  # the stack's top first, as it is drawn
    ax.legend(handles, [h.get_label() for h in handles], fontsize="small",
              title=None if plain else title)  # fmt: skip  # the label takes the top
    _experiment_label(ax)
    save_figure(fig, path)


def _overlay_factor(option, sig, bkg) -> float | None:
    """The scale of the unstacked signal overlay of :func:`plot_stacked` (None: no overlay)."""
    if option is None:
        return None
    if option != "auto":
        return float(option)
    s, b = float(np.max(sig, initial=0.0)), float(np.max(bkg, initial=0.0))
    if s <= 0 or b <= 0 or s >= 0.2 * b:
        return None
    return float(10 ** math.floor(math.log10(b / s)))


def uncertainty_band(total, shifts=(), stat=None):
    """Per-bin ``(low, high)`` of ``total`` from systematic shifts added in quadrature.

    Every shift is a pair of per-bin totals ``(up, down)`` of one systematic; per bin, its
    positive deviations from ``total`` enter ``high`` and its negative ones ``low`` (the
    largest of each sign, if up and down go the same way). ``stat`` (e.g. the MC statistical
    uncertainty ``sqrt(sum w^2)``) enters both sides.

    Example:
        >>> lo, hi = uncertainty_band([10.0], [([12.0], [9.0]), ([11.0], [11.5])], stat=[0.0])
        >>> float(lo[0]), round(float(hi[0]), 6)
        (9.0, 12.5)
    """
    total = np.asarray(total, dtype=float)
    up2 = np.zeros_like(total) if stat is None else np.asarray(stat, float) ** 2
    down2 = up2.copy()
    for a, b in shifts:
        d = np.stack([np.asarray(a, float) - total, np.asarray(b, float) - total])
        up2 += np.max(np.clip(d, 0, None), axis=0) ** 2
        down2 += np.min(np.clip(d, None, 0), axis=0) ** 2
    return total - np.sqrt(down2), total + np.sqrt(up2)


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


@_styled
def plot_roc(score_signal, w_signal, score_background, w_background, path) -> float:
    """Draw the :func:`roc_curve` (with the AUC in the legend) to ``path``; returns the AUC."""
    eff_b, eff_s, auc = roc_curve(score_signal, w_signal, score_background, w_background)
    fig = new_figure((4.8, 4.8))
    ax = fig.add_subplot()
    ax.plot(eff_b, eff_s, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="random")
    ax.set_xlabel("background efficiency")
    ax.set_ylabel("signal efficiency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _experiment_label(ax)
    save_figure(fig, path)
    return auc


@_styled
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
    fig = new_figure((6.4, 5.2))
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
    _experiment_label(ax)
    save_figure(fig, path)


@_styled
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
    _experiment_label(ax)
    save_figure(fig, path)


def feature_profiles(
    score: Mapping[str, np.ndarray],
    features: Mapping[str, np.ndarray],
    feature_names: Sequence[str],
    weights: Mapping[str, np.ndarray] | None = None,
    masks: Mapping[str, str] | None = None,
    n_bins: int = 20,
):
    """The weighted mean score (and standard deviation) in quantile bins of every feature,
    per sample: the panels of :func:`plot_observable_vs_features`.

    Mask features (the values of ``masks``) are not profiled, and an object feature (a key
    of ``masks``) only over the events whose mask is set, so zero-padded objects do not
    pile up at 0. Features with a single value (over the events that count) are skipped.

    Args:
        score: ``{sample: scores (n,)}``.
        features: ``{sample: features (n, f)}``.
        feature_names: Names of the ``f`` features.
        weights: Optional ``{sample: weights (n,)}`` (absolute values are used).
        masks: Optional ``{object feature: its mask feature}`` (e.g. ``{"Jet_pt[1]":
            "num(Jet_pt) > 1"}``).
        n_bins: Feature bins per panel (quantiles of all samples together).

    Returns:
        ``(panels, skipped)``: ``panels[name] = (edges, {sample: (mean, std)})`` per bin
        (NaN where a sample has no weight) and ``skipped[name]`` the reason a feature has no
        panel (``"mask"`` or ``"constant"``).

    Raises:
        ValueError: If shapes do not match or a mask names an unknown feature.

    Example:
        >>> x = np.array([[1.0, 0.0, 0.0], [2.0, 5.0, 1.0], [3.0, 7.0, 1.0]])
        >>> panels, skipped = feature_profiles({"s": x[:, 0] / 4}, {"s": x},
        ...     ["a", "j[0]", "m"], masks={"j[0]": "m"}, n_bins=2)
        >>> sorted(panels), skipped
        (['a', 'j[0]'], {'m': 'mask'})
        >>> [float(v) for v in panels["j[0]"][0]]  # the padded 0 is not an edge
        [5.0, 6.0, 7.0]
    """
    names = list(feature_names)
    masks = dict(masks or {})
    for s, x in features.items():
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(names) or len(np.asarray(score[s])) != len(x):
            raise ValueError(f"sample {s!r}: features {x.shape}, {len(names)} names, "
                             f"{len(np.asarray(score[s]))} scores")  # fmt: skip
    unknown = sorted({m for m in masks.values() if m not in names})
    if unknown:
        raise ValueError(f"mask feature(s) {', '.join(unknown)} not among the features")
    mask_names = set(masks.values())
    panels, skipped = {}, {}
    for j, name in enumerate(names):
        if name in mask_names:
            skipped[name] = "mask"
            continue
        rows = {}
        for s, x in features.items():
            x = np.asarray(x)
            keep = np.ones(len(x), bool)
            if name in masks:
                keep = x[:, names.index(masks[name])] > 0
            w = np.ones(len(x)) if weights is None else np.abs(np.asarray(weights[s], float))
            rows[s] = (x[keep, j].astype(float), np.asarray(score[s], float)[keep], w[keep])
        column = np.concatenate([v for v, _, _ in rows.values()])
        if column.size == 0 or np.min(column) == np.max(column):
            skipped[name] = "constant"
            continue
        edges = np.unique(np.quantile(column, np.linspace(0, 1, n_bins + 1)))
        profile = {}
        for s, (v, sc, w) in rows.items():
            idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
            sw = np.bincount(idx, w, len(edges) - 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.bincount(idx, w * sc, len(edges) - 1) / sw
                var = np.bincount(idx, w * sc**2, len(edges) - 1) / sw - mean**2
            profile[s] = (mean, np.sqrt(np.clip(var, 0, None)))
        panels[name] = (edges, profile)
    return panels, skipped


@_styled
def plot_observable_vs_features(
    score: Mapping[str, np.ndarray],
    features: Mapping[str, np.ndarray],
    feature_names: Sequence[str],
    path,
    weights: Mapping[str, np.ndarray] | None = None,
    n_bins: int = 20,
    masks: Mapping[str, str] | None = None,
) -> bool:
    """The observable against each input feature: one panel per feature with the weighted
    mean score (and its spread, a band of +- one standard deviation) in quantile bins of the
    feature, for every sample (:func:`feature_profiles`: mask features and constant features
    have no panel, they are named under the figure; zero-padded objects are left out).

    Args:
        score: ``{sample: scores (n,)}``.
        features: ``{sample: features (n, f)}``.
        feature_names: Names of the ``f`` features.
        path: Output file.
        weights: Optional ``{sample: weights (n,)}`` (absolute values are used).
        n_bins: Feature bins per panel (quantiles of all samples together).
        masks: Optional ``{object feature: its mask feature}``.

    Returns:
        Whether a figure was written (not when no feature has a panel).

    Raises:
        ValueError: If shapes do not match.
    """
    panels, skipped = feature_profiles(score, features, feature_names, weights, masks, n_bins)
    if not panels:
        return False
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = new_figure((4.0 * ncol, 3.2 * nrow + 0.4))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (name, (edges, profile)) in zip(axes, panels.items(), strict=False):
        centres = 0.5 * (edges[1:] + edges[:-1])
        for i, (s, (mean, std)) in enumerate(profile.items()):
            ax.plot(centres, mean, color=f"C{i}", label=s)
            ax.fill_between(centres, mean - std, mean + std, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_xlabel(name)
        ax.set_ylabel("observable")
        ax.set_ylim(0, 1)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    notes = []
    for reason, text in (("mask", "object masks"), ("constant", "constant")):
        names = [n for n, r in skipped.items() if r == reason]
        if names:
            notes.append(f"{text}: {', '.join(names)}")
    if masks:
        notes.insert(0, "objects: events that have them")
    if notes:
        fig.supxlabel("; ".join(notes), fontsize="small", color="0.3")
    _experiment_label(axes[0])
    save_figure(fig, path)
    return True
