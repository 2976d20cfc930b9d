"""A black-box detector with a known optimum: resolution against cost (L-GSO's problem 2).

A detector measures ``d`` quantities ``x ~ N(0, I_d)`` with resolutions ``psi_j`` and a
digitised read-out of step ``w`` (:data:`DIGIT`): ``y_j = w round((x_j + psi_j e_j) / w)``,
``e ~ N(0, 1)``. It is a black box: NumPy, and the rounding has zero derivative almost
everywhere (differentiating it as written gives no gradient). The objective is the mean
squared measurement error plus a cost that grows with precision (the lecture's TomOpt
trade-off of resolution against cost):

    f(psi) = E[sum_j (y_j - x_j)^2] + sum_j c_j / psi_j
           = sum_j (psi_j^2 + w^2 / 12 + c_j / psi_j)     (Sheppard's correction)

so each ``psi_j* = (c_j / 2)^(1/3)``, whatever ``w`` (the read-out adds a constant for
``psi >> w``). :func:`objective_mc` estimates ``f`` by simulation (with common random numbers
for finite differences).

Example:
    >>> optimum([0.25])
    array([0.5])
    >>> round(float(expected_objective([0.5], [0.25])), 4)
    0.7508
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "COSTS",
    "DIGIT",
    "FOCUS",
    "cost",
    "detector",
    "expected_objective",
    "focus",
    "objective_mc",
    "optimum",
    "sample_truth",
    "squared_error",
]

DIGIT = 0.1  # read-out step w
COSTS = (0.25, 0.125, 0.5, 0.3, 0.2, 0.4)  # c_j of the first parameters


def sample_truth(rng: np.random.Generator, n: int, d: int = 1) -> np.ndarray:
    """``n`` true values ``x ~ N(0, I_d)``."""
    return rng.normal(size=(n, d))


def detector(x, psi, rng: np.random.Generator, digit: float = DIGIT, noise=None) -> np.ndarray:
    """The black box: smear each ``x_j`` by ``psi_j`` and digitise (NumPy; ``noise``
    overrides the Gaussian draws, for common random numbers)."""
    x = np.asarray(x, dtype=float)
    e = rng.normal(size=x.shape) if noise is None else noise
    return digit * np.round((x + np.asarray(psi, dtype=float) * e) / digit)


FOCUS = 0.4  # the best setting of :func:`focus`


def focus(x, psi, rng: np.random.Generator, best: float = FOCUS, digit: float = DIGIT):
    """A detector that must be focused: resolution ``|psi - best|`` (the stage of
    ``diffhep train``'s black-box tests and example; ``psi`` ``(n, 1)``, a row per event, or
    ``(d,)``), then the digitised read-out. Every analysis gains from sharper features, so a
    training that steps ``psi`` with the analysis loss should move it towards ``best``."""
    x = np.asarray(x, dtype=float)
    resolution = np.abs(np.asarray(psi, dtype=float) - best)
    return digit * np.round((x + resolution * rng.normal(size=x.shape)) / digit)


def squared_error(y, x):
    """Per-event risk ``sum_j (y_j - x_j)^2`` (works on NumPy and JAX arrays)."""
    return ((y - x) ** 2).sum(axis=1)


def cost(psi, costs=None):
    """``sum_j c_j / psi_j`` (NumPy or JAX)."""
    c = np.asarray(costs if costs is not None else COSTS[: len(psi)], dtype=float)
    return (c / psi).sum()


def optimum(costs) -> np.ndarray:
    """The known optimum ``psi_j* = (c_j / 2)^(1/3)``."""
    return (np.asarray(costs, dtype=float) / 2) ** (1 / 3)


def expected_objective(psi, costs, digit: float = DIGIT) -> float:
    """The closed form of the objective."""
    psi = np.asarray(psi, dtype=float)
    return float(np.sum(psi**2 + digit**2 / 12 + np.asarray(costs) / psi))


def objective_mc(psi, costs, n: int = 200_000, seed: int = 0, digit: float = DIGIT) -> float:
    """The objective by simulation; the same ``seed`` gives the same ``x`` and ``e``."""
    rng = np.random.default_rng(seed)
    psi = np.asarray(psi, dtype=float)
    x = sample_truth(rng, n, psi.size)
    y = detector(x, psi, rng, digit)
    return float(np.mean(squared_error(y, x)) + cost(psi, costs))
