"""Toys with negative event weights whose local mean weight E[w | x] is known exactly.

NLO generators produce events with weights of both signs; what every distribution (and every
learned weight) must reproduce is the *local mean weight* ``E[w | x]``. These generators give
it in closed form, so a learned ``E[w | x]`` (:mod:`diffhep.weights.reweight`) can be checked
against
the truth:

- :func:`gaussian_toy`: weight +1 for events from N(0, 1), -1 for events from N(0, 0.5), 25%
  negative; features ``x`` (the physics), ``z = x + N(0, 0.5)`` (a spectator, independent of
  the weight given ``x``) and ``u`` (N(0, 1) for positive, N(1, 1) for negative weights: it
  carries information about the weight that ``x`` does not);
- :func:`step_toy`: ``x`` uniform on [0, 10], the probability of a negative weight a step
  and ramp function of ``x`` and the weight magnitude ``1 + x / 10``, so that ``E[w | x]`` and
  ``E[w^2 | x]`` both vary;
- :func:`negweight_2d`: a signal/background toy; the background has 20% negative weights,
  all in one region that overlaps the signal, where positive- and negative-weight events
  nearly cancel (``E[w | x]`` down to 0.05, never below 0: the net density is physical).

Example:
    >>> x, w = gaussian_toy(8000, seed=0)
    >>> x.shape, float(np.mean(w < 0))
    ((8000, 3), 0.25)
    >>> round(float(gaussian_mean_weight(np.array([0.0]))[0]), 6)  # (3 * 0.3989 - 0.7979) / ...
    0.2
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NEG2D_REGION",
    "gaussian_mean_weight",
    "gaussian_toy",
    "negweight_2d",
    "negweight_2d_densities",
    "negweight_2d_mean_weight",
    "step_mean_weight",
    "step_toy",
]

GAUSSIAN_NEG_FRACTION = 0.25
GAUSSIAN_NEG_SIGMA = 0.5


def _normal(x, mu, sigma):
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))


def gaussian_toy(n: int = 100_000, seed: int = 0):
    """``n`` events: 75% with w = +1 from N(0, 1), 25% with w = -1 from N(0, 0.5).

    Returns ``(x, w)``: features ``(n, 3)`` float32 (``x``, ``z``, ``u``; see the module
    docstring) and weights ``(n,)`` float64, in random order.
    """
    rng = np.random.default_rng([seed, 61])
    n_neg = round(GAUSSIAN_NEG_FRACTION * n)
    neg = np.zeros(n, dtype=bool)
    neg[rng.permutation(n)[:n_neg]] = True
    x = np.where(neg, rng.normal(0.0, GAUSSIAN_NEG_SIGMA, n), rng.normal(0.0, 1.0, n))
    z = x + rng.normal(0.0, 0.5, n)
    u = rng.normal(np.where(neg, 1.0, 0.0), 1.0)
    return np.column_stack([x, z, u]).astype(np.float32), np.where(neg, -1.0, 1.0)


def gaussian_mean_weight(x):
    """Exact ``E[w | x]`` of :func:`gaussian_toy` (positive everywhere, 0.2 at x = 0)."""
    x = np.asarray(x, dtype=np.float64)
    pos = (1 - GAUSSIAN_NEG_FRACTION) * _normal(x, 0.0, 1.0)
    neg = GAUSSIAN_NEG_FRACTION * _normal(x, 0.0, GAUSSIAN_NEG_SIGMA)
    return (pos - neg) / (pos + neg)


def _step_neg_probability(x):
    x = np.asarray(x, dtype=np.float64)
    ramp = 0.1 + 0.3 * (x - 3.0) / 4.0
    return np.where(x < 3.0, 0.05, np.where(x < 7.0, ramp, 0.25))


def step_toy(n: int = 100_000, seed: int = 0):
    """``x ~ U(0, 10)``; a weight is negative with probability 0.05 (x < 3), a ramp from 0.1 to
    0.4 (3 <= x < 7), 0.25 (x >= 7); its magnitude is ``1 + x / 10``.

    Returns ``(x, w)`` with ``x`` of shape ``(n, 1)`` (float32).
    """
    rng = np.random.default_rng([seed, 67])
    x = rng.uniform(0.0, 10.0, n)
    neg = rng.uniform(size=n) < _step_neg_probability(x)
    w = np.where(neg, -1.0, 1.0) * (1.0 + x / 10.0)
    return x[:, None].astype(np.float32), w


def step_mean_weight(x, power: int = 1):
    """Exact ``E[w^power | x]`` of :func:`step_toy` (power 1 or 2)."""
    x = np.asarray(x, dtype=np.float64)
    mag = 1.0 + x / 10.0
    if power == 2:
        return mag**2
    return mag * (1.0 - 2.0 * _step_neg_probability(x))


# ------------------------------------------------------------------ 2-D signal/background
NEG2D_SIGNAL_MEAN = (1.5, 2.0)
NEG2D_SIGNAL_COV = ((0.5, 0.2), (0.2, 0.5))
NEG2D_BROAD_SIGMA = 3.0  # isotropic broad background N(0, 9 I)
#: Centre of the region that holds every negative weight (on the signal's flank).
NEG2D_REGION = (1.0, 1.5)
NEG2D_POS_SIGMA = 0.6  # positive-weight events of the region, N(region, 0.36 I)
NEG2D_NEG_SIGMA = 0.474  # negative-weight events, N(region, 0.2247 I): nearly cancel at the centre
#: Fractions of the background events: broad, positive in the region, negative in the region.
NEG2D_FRACTIONS = (0.48, 0.32, 0.20)
#: Weight magnitude of the events of the region (the broad background has |w| = 1).
NEG2D_REGION_WEIGHT = 0.5


def _normal2(x, mean, cov):
    x = np.asarray(x, dtype=np.float64) - np.asarray(mean)
    cov = np.asarray(cov, dtype=np.float64)
    inv = np.linalg.inv(cov)
    q = np.einsum("ni,ij,nj->n", x, inv, x)
    return np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def _iso(s):
    return ((s * s, 0.0), (0.0, s * s))


def negweight_2d(n: int = 10_000, seed: int = 0) -> dict:
    """``n`` signal events (w = 1) and ``n`` background events, 20% of them with negative
    weights (see the module docstring; :func:`negweight_2d_densities` has the densities).

    Returns ``{"signal": (x, w), "background": (x, w)}`` with features ``(n, 2)`` float32
    (``x1``, ``x2``), like :func:`diffhep.problems.toys.cuts_2d`.
    """
    rng = np.random.default_rng([seed, 71])
    sig = rng.multivariate_normal(NEG2D_SIGNAL_MEAN, NEG2D_SIGNAL_COV, n)
    counts = np.floor(np.asarray(NEG2D_FRACTIONS) * n).astype(int)
    counts[0] += n - counts.sum()
    parts = [
        (rng.normal(0.0, NEG2D_BROAD_SIGMA, (counts[0], 2)), 1.0),
        (rng.normal(NEG2D_REGION, NEG2D_POS_SIGMA, (counts[1], 2)), NEG2D_REGION_WEIGHT),
        (rng.normal(NEG2D_REGION, NEG2D_NEG_SIGMA, (counts[2], 2)), -NEG2D_REGION_WEIGHT),
    ]
    xb = np.concatenate([p for p, _ in parts])
    wb = np.concatenate([np.full(len(p), w) for p, w in parts])
    order = rng.permutation(n)
    return {
        "signal": (sig.astype(np.float32), np.ones(n)),
        "background": (xb[order].astype(np.float32), wb[order]),
    }


def negweight_2d_densities(x) -> dict:
    """Densities of :func:`negweight_2d` at ``x (n, 2)``: ``signal`` and the background's
    ``positive`` and ``negative`` parts (event densities per background event, weights not
    included), ``net_background`` (the density of sum w, normalised to 1) and ``posterior``,
    the class-balanced ``p_s / (p_s + p_net)`` that a perfect classifier trained with equal
    class weights outputs."""
    f_broad, f_pos, f_neg = NEG2D_FRACTIONS
    a = NEG2D_REGION_WEIGHT
    ps = _normal2(x, NEG2D_SIGNAL_MEAN, NEG2D_SIGNAL_COV)
    broad, pos_r, neg_r = _background_parts(x)
    net = (broad + a * pos_r - a * neg_r) / (f_broad + a * (f_pos - f_neg))
    return {
        "signal": ps,
        "positive": broad + pos_r,
        "negative": neg_r,
        "net_background": net,
        "posterior": ps / (ps + net),
    }


def _background_parts(x):
    """Event densities (per background event) of the broad part and of the positive- and
    negative-weight parts of the region."""
    f_broad, f_pos, f_neg = NEG2D_FRACTIONS
    broad = f_broad * _normal2(x, (0.0, 0.0), _iso(NEG2D_BROAD_SIGMA))
    pos_r = f_pos * _normal2(x, NEG2D_REGION, _iso(NEG2D_POS_SIGMA))
    neg_r = f_neg * _normal2(x, NEG2D_REGION, _iso(NEG2D_NEG_SIGMA))
    return broad, pos_r, neg_r


def negweight_2d_mean_weight(x):
    """Exact ``E[w | x]`` of the background of :func:`negweight_2d` (> 0 everywhere)."""
    broad, pos_r, neg_r = _background_parts(x)
    a = NEG2D_REGION_WEIGHT
    return (broad + a * pos_r - a * neg_r) / (broad + pos_r + neg_r)
