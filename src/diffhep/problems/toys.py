"""Toy event generators with known densities.

- :func:`cuts_1d`: signal N(5, 1), background N(0, 4) in one feature ``x`` (G. Watts' talk);
- :func:`cuts_2d`: signal mean (1.5, 2.0) with covariance [[0.5, 0.2], [0.2, 0.5]],
  background mean (0, 0) with covariance diag(9, 9), features ``x1``, ``x2``;
- :func:`~diffhep.problems.inferno.inferno_3d`: the synthetic benchmark of INFERNO (defined with its
  likelihoods in :mod:`diffhep.problems.inferno`), with its background variations;
- :func:`~diffhep.problems.weight_toys.negweight_2d`: a signal/background toy whose background has
20%
  negative weights (the toys with negative weights live in :mod:`diffhep.problems.weight_toys`).

Each returns ``{"signal": (x, w), "background": (x, w)}`` with unit weights (``negweight_2d``:
signed background weights; set the yields in the analysis config) and float32 features,
deterministic in ``seed``.

Example:
    >>> ev = cuts_2d(1000, seed=1)
    >>> ev["signal"][0].shape, float(ev["background"][1].sum())
    ((1000, 2), 1000.0)
"""

from __future__ import annotations

import numpy as np

from .inferno import INFERNO_SHIFTS, inferno_3d, inferno_shift
from .weight_toys import negweight_2d

__all__ = [
    "GENERATORS",
    "INFERNO_SHIFTS",
    "cuts_1d",
    "cuts_2d",
    "inferno_3d",
    "inferno_shift",
    "negweight_2d",
]

SIGNAL_2D_MEAN = (1.5, 2.0)
SIGNAL_2D_COV = ((0.5, 0.2), (0.2, 0.5))
BACKGROUND_2D_COV = ((9.0, 0.0), (0.0, 9.0))


def _pack(x):
    x = np.asarray(x, dtype=np.float32)
    return x, np.ones(len(x), dtype=np.float64)


def cuts_1d(n: int = 10_000, seed: int = 0) -> dict:
    """``n`` signal events from N(5, 1) and ``n`` background events from N(0, 4)."""
    rng = np.random.default_rng(seed)
    return {
        "signal": _pack(rng.normal(5.0, 1.0, (n, 1))),
        "background": _pack(rng.normal(0.0, 4.0, (n, 1))),
    }


def cuts_2d(n: int = 10_000, seed: int = 0) -> dict:
    """``n`` signal and ``n`` background events of the talk's two-feature toy."""
    rng = np.random.default_rng(seed)
    return {
        "signal": _pack(rng.multivariate_normal(SIGNAL_2D_MEAN, SIGNAL_2D_COV, n)),
        "background": _pack(rng.multivariate_normal((0.0, 0.0), BACKGROUND_2D_COV, n)),
    }


#: Generators by config name, with their feature names.
GENERATORS = {
    "cuts_1d": (cuts_1d, ("x",)),
    "cuts_2d": (cuts_2d, ("x1", "x2")),
    "inferno": (inferno_3d, ("x0", "x1", "x2")),
    "negweight_2d": (negweight_2d, ("x1", "x2")),
}
