"""The observable against its inputs: a 2-D map over two features and the profile of the
score along each feature (mean per bin, per sample)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .style import experiment_label, new_figure, save_figure, styled

__all__ = ["feature_profiles", "plot_observable_2d", "plot_observable_vs_features"]


@styled
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
    experiment_label(ax)
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


@styled
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
    experiment_label(axes[0])
    save_figure(fig, path)
    return True
