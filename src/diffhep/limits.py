"""Upper limits on the POI at a given CL, observed and expected band.

A vectorised scan of the CLs curve (one ``vmap``-ed hypotest over all scan points) brackets
each crossing of the level; Brent's method then refines every crossing to ``rtol``. With an
explicit ``scan``, the limits are linearly interpolated on the grid, exactly as pyhf's
``linear_grid_scan`` does.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.workspace.example_spec())
    >>> model = ws.model()
    >>> obs, exp = diffhep.limits.upper_limit(model, ws.data(model))
    >>> round(obs, 3)
    1.012
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from .errors import FitError
from .hypotest import hypotest
from .model import Model

__all__ = ["UpperLimit", "cls_scan", "upper_limit"]


class UpperLimit(NamedTuple):
    observed: float
    expected: list  # five values, in pyhf's order of the expected band


@eqx.filter_jit
def _cls_many(pois, model, data, test_stat):
    res = jax.vmap(lambda mu: hypotest(mu, model, data, test_stat=test_stat))(pois)
    return jnp.concatenate([res.cls_obs[:, None], res.cls_exp], axis=1), res.converged


def cls_scan(model: Model, data, pois, test_stat: str = "qtilde"):
    """CLs observed and expected (columns: obs, exp[0..4]) at every POI value in ``pois``."""
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    vals, conv = _cls_many(jnp.asarray(pois, dtype=data.dtype), model, data, test_stat)
    return np.asarray(vals), np.asarray(conv)


def upper_limit(
    model: Model,
    data,
    scan=None,
    level: float = 0.05,
    *,
    test_stat: str = "qtilde",
    rtol: float = 1e-6,
    npoints: int = 21,
) -> UpperLimit:
    """Upper limit on the POI at CL = 1 - ``level``.

    Args:
        model, data: The model and the observed data.
        scan: Optional POI grid; if given, interpolate linearly on it (pyhf's
            ``linear_grid_scan``). Otherwise scan the POI's bounds and refine by root finding.
        level: CLs level (0.05 for 95% CL).
        rtol: Relative tolerance of the refined limits.
        npoints: Number of points of the automatic scan.
    """
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    if scan is not None:
        scan = np.asarray(scan, dtype=float)
        vals, _ = cls_scan(model, data, scan, test_stat)
        limits = [float(np.interp(level, vals[::-1, i], scan[::-1])) for i in range(6)]
        return UpperLimit(limits[0], limits[1:])
    lo, hi = model.config.bounds[model.config.poi_index]
    lo = max(lo, 0.0)
    grid = np.linspace(lo, hi, npoints)
    for _ in range(6):  # widen the scan if a band has not crossed the level yet
        vals, _ = cls_scan(model, data, grid, test_stat)
        if np.all(vals[-1] < level):
            break
        grid = np.linspace(lo, grid[-1] * 4, npoints)
    else:
        raise FitError(
            "CLs does not fall below the level within the scanned POI range",
            fix="check the model: the signal may be too small to be excluded",
        )
    one = eqx.filter_jit(lambda mu, m, d: hypotest(mu, m, d, test_stat=test_stat))

    def crossing(col):
        below = np.nonzero(vals[:, col] < level)[0]
        j = int(below[0])
        if j == 0:
            return float(grid[0])
        a, b = float(grid[j - 1]), float(grid[j])

        def f(mu):
            r = one(jnp.asarray(mu, dtype=data.dtype), model, data)
            v = r.cls_obs if col == 0 else r.cls_exp[col - 1]
            return float(v) - level

        return float(brentq(f, a, b, rtol=rtol, xtol=1e-12))

    limits = [crossing(i) for i in range(6)]
    return UpperLimit(limits[0], limits[1:])
