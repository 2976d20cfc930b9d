"""Isotonic calibration and reliability with signed weights (diffhep.weights.calibration).

References: scipy's isotonic regression on positive weights, a brute-force pooled dataset
for signed weights, and a toy with a known posterior."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import isotonic_regression

from diffhep.weights.calibration import fit_isotonic, pooled_blocks, reliability


def test_positive_weights_unbinned_equals_scipy_isotonic_regression():
    rng = np.random.default_rng(0)
    s = rng.uniform(size=300)
    y = (rng.uniform(size=300) < s**2).astype(float)
    w = rng.uniform(0.2, 2.0, 300)
    cal = fit_isotonic(s, y, w, bins=None)
    order = np.argsort(s)
    ref = isotonic_regression(y[order], weights=w[order]).x
    np.testing.assert_allclose(cal(s[order]), ref, atol=1e-12)


def test_signed_weights_equal_the_pre_cancelled_dataset():
    """Events of weight -a added at the score of events of weight +a + b change nothing but
    the net weight: the fit equals the fit of the net (positive) weights."""
    rng = np.random.default_rng(1)
    s = np.round(rng.uniform(size=200), 2)  # ties: several events per score
    y = (rng.uniform(size=200) < s).astype(float)
    w = rng.uniform(0.5, 1.5, 200)
    # split every event into a +(w + a) and a -a event with the same score and label
    a = rng.uniform(0.1, 3.0, 200)
    s2, y2 = np.concatenate([s, s]), np.concatenate([y, y])
    w2 = np.concatenate([w + a, -a])
    ref = fit_isotonic(s, y, w, bins=None)
    got = fit_isotonic(s2, y2, w2, bins=None)
    grid = np.linspace(0, 1, 101)
    np.testing.assert_allclose(got(grid), ref(grid), atol=1e-12)


def test_blocks_with_non_positive_net_weight_are_merged():
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55])
    w = np.array([1.0, -2.0, 0.5, 3.0, -1.0, -0.5])
    edges = np.linspace(0, 0.6, 7)  # one event per block
    idx, nb = pooled_blocks(s, w, edges)
    # 1 | -2 + 0.5 + 3 | -1 - 0.5: the tail is merged backwards until positive (the block
    # before it alone would net exactly 0)
    np.testing.assert_array_equal(idx, [0, 0, 0, 0, 0, 0])
    assert nb == 1
    idx, nb = pooled_blocks(s, [1.0, -2.0, 0.5, 3.0, -1.0, -0.4], edges)
    np.testing.assert_array_equal(idx, [0, 1, 1, 1, 1, 1])
    assert np.all(np.bincount(idx, weights=[1.0, -2.0, 0.5, 3.0, -1.0, -0.4]) > 0)
    # the calibration never divides by a non-positive block weight and stays in [0, 1]
    y = np.array([0, 1, 1, 0, 1, 1.0])
    cal = fit_isotonic(s, y, w, bins=None)
    assert np.all(np.isfinite(cal.values)) and np.all((cal.values >= 0) & (cal.values <= 1))


def test_calibrates_a_distorted_score_to_the_true_posterior_with_signed_weights():
    """Signal N(1, 1) with w = 1; background N(-1, 1) plus a component with w = -1 that
    cancels part of it: the posterior of the net densities is known. A distorted monotone
    score, calibrated on one sample, matches the posterior on another."""

    def sample(seed, n=60_000):
        rng = np.random.default_rng(seed)
        xs = rng.normal(1.0, 1.0, n)
        xb_pos = rng.normal(-1.0, 1.0, n)
        xb_neg = rng.normal(-1.0, 0.7, n // 4)  # w = -1: net density 1 - 0.25 N(-1, 0.7)/...
        xb = np.concatenate([xb_pos, xb_neg])
        wb = np.concatenate([np.ones(n), -np.ones(n // 4)])
        return xs, xb, wb

    def gauss(x, m, s):
        return np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))

    def posterior(x):  # class-balanced, net background density normalised to 1
        pb = (gauss(x, -1, 1) - 0.25 * gauss(x, -1, 0.7)) / 0.75
        ps = gauss(x, 1, 1)
        return ps / (ps + pb)

    def score(x):
        return 1 / (1 + np.exp(-3 * x + 1))  # monotone in x, badly calibrated

    def balanced(xs, xb, wb):
        w = np.concatenate([np.full(len(xs), 1 / len(xs)), wb / wb.sum()])
        y = np.concatenate([np.ones(len(xs)), np.zeros(len(xb))])
        return np.concatenate([xs, xb]), y, w

    x, y, w = balanced(*sample(0))
    cal = fit_isotonic(score(x), y, w, bins=60)
    xt, yt, wt = balanced(*sample(1))
    bulk = np.abs(xt) < 2
    err = np.abs(cal(score(xt)) - posterior(xt))
    assert np.average(err[bulk], weights=np.abs(wt[bulk])) < 0.02
    before = reliability(score(xt), yt, wt)["ece"]
    after = reliability(cal(score(xt)), yt, wt)["ece"]
    assert before > 0.05 and after < 0.015, (before, after)
    # an observable that orders signal low is calibrated in the other direction
    flipped = fit_isotonic(1 - score(x), y, w, bins=60, increasing=None)
    np.testing.assert_allclose(flipped(1 - score(xt)), cal(score(xt)), atol=0.03)
    assert np.all(np.diff(flipped.values) <= 0)


def test_reliability_by_hand_and_errors():
    r = reliability([0.1, 0.1, 0.9, 0.9, 0.9], [0, 1, 1, 1, 0], [1.0, 1.0, 2.0, 1.0, -1.0], bins=2)
    # bin 1: W = 2, predicted 0.1, observed 0.5; bin 2: W = 2, predicted 0.9, observed 1.5
    np.testing.assert_allclose(r["predicted"], [0.1, 0.9])
    np.testing.assert_allclose(r["observed"], [0.5, 1.5])
    np.testing.assert_allclose(r["ece"], (2 * 0.4 + 2 * 0.6) / 4)
    with pytest.raises(ValueError, match="total weight must be positive"):
        fit_isotonic([0.1, 0.2], [0, 1], [1.0, -2.0])
    with pytest.raises(ValueError, match="matching"):
        reliability([0.1], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        fit_isotonic([np.nan, 0.2], [0, 1])
