"""Calibration of a classifier output with signed event weights: isotonic regression and
reliability.

Isotonic regression finds the non-decreasing map ``g`` of the score minimising
``sum_i w_i (y_i - g(s_i))^2`` (labels ``y`` = 1 signal, 0 background); the talk on negative
weights found that it "improves the results a lot". With negative weights this objective is
not bounded below event by event (``scipy.optimize.isotonic_regression`` and the classic
pool-adjacent-violators algorithm need positive weights), but it only depends on the events
through per-value sums: for a block of events sharing one value ``g``,
``sum_i w_i (y_i - g)^2 = W g^2 - 2 g sum_i w_i y_i + const`` with ``W = sum_i w_i``, which is
convex in ``g`` exactly when the block's net weight ``W`` is positive. :func:`fit_isotonic`
therefore

1. groups the events into ``bins`` blocks of consecutive scores (quantiles of ``|w|``, or
   every distinct score with ``bins=None``);
2. merges a block whose net weight is not positive with its right neighbour (a tail that
   stays <= 0 with its left neighbours), until every block has ``W > 0`` (the objective is
   then bounded);
3. runs pool-adjacent-violators (``scipy.optimize.isotonic_regression``) on the block means
   ``sum w y / W`` with the positive block weights ``W``; the result is clipped to [0, 1]
   (with signed weights a block mean can leave it);
4. predicts by linear interpolation between the weighted mean scores of the blocks.

With positive weights and ``bins=None`` this is exactly weighted isotonic regression.
:func:`reliability` gives the calibration curve and the expected calibration error (ECE) on
the same signed-weight footing. Fit the calibration on held-out events (e.g. the validation
split) and evaluate it on others.

Example:
    >>> s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    >>> y = np.array([0, 1, 0, 1, 1, 1])
    >>> cal = fit_isotonic(s, y, np.ones(6), bins=None)
    >>> [round(float(v), 3) for v in cal(s)]
    [0.0, 0.5, 0.5, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression

__all__ = ["IsotonicCalibration", "fit_isotonic", "pooled_blocks", "reliability"]


def _inputs(scores, labels, weights):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64).ravel()
    if not (s.shape == y.shape == w.shape) or s.size == 0:
        raise ValueError(
            f"need matching non-empty scores, labels, weights: {s.shape}, {y.shape}, {w.shape}"
        )
    if not (np.isfinite(s).all() and np.isfinite(y).all() and np.isfinite(w).all()):
        raise ValueError("scores, labels and weights must be finite")
    if not np.sum(w) > 0:
        raise ValueError(f"the total weight must be positive, got {np.sum(w):.4g}")
    return s, y, w


def pooled_blocks(scores, weights, edges):
    """Block index of every event, after merging blocks with net weight <= 0.

    Args:
        scores: Event scores ``(n,)``.
        weights: Signed event weights ``(n,)`` with a positive total.
        edges: Increasing block boundaries (block ``k`` is ``edges[k] <= s < edges[k+1]``;
            events outside fall in the outer blocks).

    Returns:
        ``(index, nblocks)``: every event's block (0 .. nblocks - 1, in score order) such
        that every block has a positive net weight.
    """
    s, w = np.asarray(scores, np.float64), np.asarray(weights, np.float64)
    nb = len(edges) - 1
    raw = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, nb - 1)
    net = np.bincount(raw, weights=w, minlength=nb)
    # walk left to right: a block with W <= 0 is merged into the next one
    group = np.zeros(nb, dtype=int)
    g, acc = 0, 0.0
    for k in range(nb):
        group[k] = g
        acc += net[k]
        if acc > 0:
            g, acc = g + 1, 0.0
    if acc <= 0 and g > 0:  # the tail stayed <= 0: merge it backwards until positive
        gnet = np.bincount(group, weights=net, minlength=g + 1)
        j, total = g, gnet[g]
        while total <= 0 and j > 0:
            j -= 1
            total += gnet[j]
        group[group >= j] = j
    group = np.unique(group, return_inverse=True)[1]
    return group[raw], int(group.max()) + 1


@dataclass(frozen=True)
class IsotonicCalibration:
    """A fitted monotone calibration map (see :func:`fit_isotonic`).

    Attributes:
        knots: Weighted mean score of every pooled block (increasing).
        values: Calibrated value at each knot (monotone, in [0, 1]).
    """

    knots: np.ndarray
    values: np.ndarray

    def __call__(self, scores) -> np.ndarray:
        """Calibrated probabilities (linear between knots, constant outside)."""
        return np.interp(np.asarray(scores, np.float64), self.knots, self.values)


def fit_isotonic(
    scores, labels, weights=None, *, bins: int | None = 100, increasing: bool | None = True
) -> IsotonicCalibration:
    """Isotonic regression of ``labels`` on ``scores`` with signed ``weights``.

    Args:
        scores: Classifier outputs ``(n,)``.
        labels: 1 for signal, 0 for background (any value in [0, 1] works).
        weights: Signed event weights (e.g. class-balanced: each class summing to 1); the
            total must be positive.
        bins: Number of score blocks (quantiles of the ``|w|``-weighted score distribution);
            ``None``: one block per distinct score.
        increasing: Direction of the map; ``None`` takes the direction of the weighted
            correlation of score and label (an observable trained on a likelihood, e.g. CLs,
            may order signal low: the histograms do not care).

    Returns:
        The :class:`IsotonicCalibration`.
    """
    s, y, w = _inputs(scores, labels, weights)
    if bins is None:
        edges = np.append(np.unique(s), np.inf)
    else:
        order = np.argsort(s)
        cum = np.cumsum(np.abs(w[order]))
        q = np.searchsorted(cum / cum[-1], np.linspace(0, 1, int(bins) + 1)[1:-1])
        edges = np.unique(
            np.concatenate([[-np.inf], s[order][np.minimum(q, len(s) - 1)], [np.inf]])
        )
    idx, nb = pooled_blocks(s, w, edges)
    W = np.bincount(idx, weights=w, minlength=nb)
    mean_y = np.bincount(idx, weights=w * y, minlength=nb) / W
    # knot position: |w|-weighted mean score (a signed mean can leave the block)
    aw = np.abs(w)
    knots = np.bincount(idx, weights=aw * s, minlength=nb) / np.bincount(idx, aw, minlength=nb)
    if increasing is None:
        increasing = bool(np.sum(w * (s - np.sum(w * s) / np.sum(w)) * y) >= 0)
    values = isotonic_regression(mean_y, weights=W, increasing=increasing).x
    return IsotonicCalibration(knots, np.clip(values, 0.0, 1.0))


def reliability(scores, labels, weights=None, *, bins: int = 10) -> dict:
    """Calibration curve and expected calibration error with signed weights.

    The scores are cut into ``bins`` equal-width bins on [0, 1] (bins with a non-positive net
    weight merged as in :func:`pooled_blocks`); in each, the weighted mean prediction and the
    weighted fraction of signal.

    Returns:
        ``{"predicted": [...], "observed": [...], "weight": [...], "ece": float}`` with
        ``ece = sum_k W_k |observed_k - predicted_k| / sum_k W_k``.

    Example:
        >>> r = reliability([0.2, 0.2, 0.8, 0.8], [0, 1, 1, 1], bins=2)
        >>> r["observed"], round(r["ece"], 6)
        ([0.5, 1.0], 0.25)
    """
    s, y, w = _inputs(scores, labels, weights)
    idx, nb = pooled_blocks(s, w, np.linspace(0.0, 1.0, int(bins) + 1))
    W = np.bincount(idx, weights=w, minlength=nb)
    pred = np.bincount(idx, weights=w * s, minlength=nb) / W
    obs = np.bincount(idx, weights=w * y, minlength=nb) / W
    ece = float(np.sum(W * np.abs(obs - pred)) / np.sum(W))
    return {
        "predicted": [float(v) for v in pred],
        "observed": [float(v) for v in obs],
        "weight": [float(v) for v in W],
        "ece": ece,
    }
