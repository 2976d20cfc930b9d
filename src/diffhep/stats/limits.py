"""Upper limits on the POI at a given CL, observed and expected band.

A vectorised scan of the CLs curve (one ``vmap``-ed hypotest over all scan points) brackets
each crossing of the level; Brent's method then refines every crossing to ``rtol``. With an
explicit ``scan``, the limits are linearly interpolated on the grid, exactly as pyhf's
``linear_grid_scan`` does.

Only POI values inside the POI's bounds are tested (a fit cannot test a value its bounds
exclude: it would silently test the bound). A limit whose crossing is not inside the scanned
range is not a number: it is ``None``, with ``outside`` saying on which side of the range it
lies (``"above"``: CLs is still above the level at the upper end; ``"below"``: already below
it at the lower end). Widen the range with ``poi_bounds`` (or the measurement's bounds). Every
hypotest of the scan and of the refinement must converge, else :class:`FitError` names the
POI values.

Example:
    >>> import jax
    >>> jax.config.update("jax_enable_x64", True)
    >>> import diffhep
    >>> ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    >>> model = ws.model()
    >>> obs, exp = diffhep.stats.limits.upper_limit(model, ws.data(model))
    >>> round(obs, 3)
    1.012
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DiffhepError, FitError
from . import exported
from .hypotest import hypotest
from .model import Model

__all__ = ["UpperLimit", "check_level", "cls_scan", "poi_bounds", "upper_limit"]

LIMIT_NAMES = ("observed", "expected -2 sigma", "expected -1 sigma", "expected median",
               "expected +1 sigma", "expected +2 sigma")  # fmt: skip


@dataclass(frozen=True)
class UpperLimit:
    """Observed and expected upper limits; unpacks as ``observed, expected`` (as pyhf).

    Attributes:
        observed: The observed limit, ``None`` if it is outside the scanned range.
        expected: The five expected limits in pyhf's order (-2 sigma first), ``None`` where
            outside the scanned range.
        outside: For the observed limit and the five expected ones: ``None`` (found),
            ``"above"`` (above ``poi_range[1]``) or ``"below"`` (below ``poi_range[0]``).
        poi_range: The lowest and highest POI values tested.
        pois, cls: The scan: POI values and CLs (columns: observed, expected x 5).
    """

    observed: float | None
    expected: list
    outside: list = field(default_factory=lambda: [None] * 6)
    poi_range: tuple = (0.0, 0.0)
    pois: np.ndarray | None = None
    cls: np.ndarray | None = None

    def __iter__(self):
        yield self.observed
        yield self.expected


def _cls_many(model, pois, data, *, test_stat, bounds):
    res = jax.vmap(lambda mu: hypotest(mu, model, data, bounds=bounds, test_stat=test_stat))(pois)
    return jnp.concatenate([res.cls_obs[:, None], res.cls_exp], axis=1), res.converged


def _cls_one(model, poi, data, *, test_stat, bounds):
    res = hypotest(poi, model, data, bounds=bounds, test_stat=test_stat)
    return res.cls_obs, res.cls_exp, res.converged


def cls_scan(
    model: Model, data, pois, test_stat: str = "qtilde", bounds=None, batched: bool | None = None
):
    """CLs observed and expected (columns: obs, exp[0..4]) at every POI value in ``pois``,
    and whether every fit of each hypotest converged.

    ``batched``: the tests as one vmapped program (default on accelerators), or one after the
    other with the compiled test of a single POI value that the limit's refinement calls too
    (default on CPU, where a batched test runs a restart wherever one member needs it and
    waits for its slowest fit: sbottom RegionA's 21-point scan took 0.95 s warm in one
    program, 0.26 s one test after the other, and the program compiled for 6 s more, measured
    when every member ran every restart's set-up).
    """
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    bounds = None if bounds is None else tuple(tuple(map(float, b)) for b in bounds)
    pois = jnp.asarray(pois, dtype=data.dtype)
    if batched is None:
        batched = jax.default_backend() != "cpu"
    if batched:
        vals, conv = exported.call(_cls_many, model, pois, data, test_stat=test_stat, bounds=bounds)
        return np.asarray(vals), np.asarray(conv)
    rows, conv = [], []
    for mu in pois:
        obs, exp, ok = exported.call(_cls_one, model, mu, data, test_stat=test_stat, bounds=bounds)
        rows.append(np.concatenate([[float(obs)], np.asarray(exp)]))
        conv.append(bool(ok))
    return np.asarray(rows), np.asarray(conv)


def poi_bounds(model: Model, override=None) -> tuple[float, float]:
    """The POI's bounds: the model's, or ``override = (lo, hi)`` (checked)."""
    if override is None:
        lo, hi = model.config.bounds[model.config.poi_index]
        return float(lo), float(hi)
    try:
        lo, hi = (float(x) for x in override)
    except (TypeError, ValueError):
        raise DiffhepError(
            f"POI bounds must be two numbers, got {override!r}",
            where="poi_bounds",
            fix="give the lower and upper bound, e.g. 0,20",
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise DiffhepError(
            f"POI bounds [{lo}, {hi}] are not an interval",
            where="poi_bounds",
            fix="give finite bounds with lower < upper, e.g. 0,20",
        )
    return lo, hi


def check_level(level) -> None:
    """Raise :class:`DiffhepError` unless ``0 < level < 1``."""
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise DiffhepError(
            f"the CLs level must be between 0 and 1 (exclusive), got {level!r}",
            where="level",
            fix="use e.g. 0.05 for limits at 95% CL",
        )


def _check_converged(pois, conv):
    bad = [float(p) for p, ok in zip(np.atleast_1d(pois), np.atleast_1d(conv), strict=True)
           if not ok]  # fmt: skip
    if bad:
        listed = ", ".join(f"{p:g}" for p in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise FitError(
            f"the fits of the hypothesis test did not converge at POI value(s) {listed}",
            fix="check the model (e.g. with 'diffhep fit' and 'diffhep cls --poi-value'); "
            "parameters at bounds or empty bins are common causes",
        )


def _outside(col, level) -> str | None:
    """Where the crossing of the level lies relative to the scan (None: inside)."""
    below = col < level
    if not below.any():
        return "above"
    if below[0]:
        return "below"
    return None


def upper_limit(
    model: Model,
    data,
    scan=None,
    level: float = 0.05,
    *,
    test_stat: str = "qtilde",
    rtol: float = 1e-6,
    npoints: int = 21,
    bounds=None,
) -> UpperLimit:
    """Upper limit on the POI at CL = 1 - ``level``.

    Args:
        model, data: The model and the observed data.
        scan: Optional increasing POI grid; if given, interpolate linearly on it (pyhf's
            ``linear_grid_scan``). Otherwise scan the POI's bounds and refine by root finding.
        level: CLs level (0.05 for 95% CL), strictly between 0 and 1.
        rtol: Relative tolerance of the refined limits.
        npoints: Number of points of the automatic scan.
        bounds: ``(lo, hi)``: the POI's bounds for the scan and the fits (default: the
            model's). Every tested POI value must lie inside them.

    Raises:
        DiffhepError: A bad level, bounds or scan (e.g. a value outside the POI bounds).
        FitError: A hypotest did not converge (the message names the POI values).
    """
    check_level(level)
    data = jnp.asarray(data, dtype=model.nominal.dtype)
    poi = model.config.poi_index
    lo, hi = poi_bounds(model, bounds)
    par_bounds = [tuple(map(float, b)) for b in model.config.bounds]
    par_bounds[poi] = (lo, hi)
    par_bounds = None if bounds is None else par_bounds
    if scan is not None:
        grid = _checked_scan(scan, lo, hi, bounds is not None)
        vals, conv = cls_scan(model, data, grid, test_stat, par_bounds)
        _check_converged(grid, conv)
        outside = [_outside(vals[:, i], level) for i in range(6)]
        limits = [
            None if outside[i] else float(np.interp(level, vals[::-1, i], grid[::-1]))
            for i in range(6)
        ]
        return UpperLimit(limits[0], limits[1:], outside, (float(grid[0]), float(grid[-1])),
                          grid, vals)  # fmt: skip
    start = max(lo, 0.0)  # CLs tests mu >= 0
    grid = np.linspace(start, hi, npoints)
    vals, conv = cls_scan(model, data, grid, test_stat, par_bounds)
    _check_converged(grid, conv)
    pb = None if par_bounds is None else tuple(par_bounds)

    def crossing(col):
        j = int(np.nonzero(vals[:, col] < level)[0][0])
        a, b = float(grid[j - 1]), float(grid[j])

        def f(mu):
            mu = jnp.asarray(mu, dtype=data.dtype)
            obs, exp, converged = exported.call(
                _cls_one, model, mu, data, test_stat=test_stat, bounds=pb
            )
            _check_converged([mu], [bool(converged)])
            v = obs if col == 0 else exp[col - 1]
            return float(v) - level

        from scipy.optimize import brentq  # lazily: scipy.optimize takes ~1 s to import

        return float(brentq(f, a, b, rtol=rtol, xtol=1e-12))

    outside = [_outside(vals[:, i], level) for i in range(6)]
    limits = [None if outside[i] else crossing(i) for i in range(6)]
    return UpperLimit(limits[0], limits[1:], outside, (float(grid[0]), float(grid[-1])),
                      grid, vals)  # fmt: skip


def _checked_scan(scan, lo, hi, overridden):
    try:
        grid = np.asarray(scan, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DiffhepError("the scan must be a list of POI values", where="scan") from None
    where = "scan"
    if grid.size < 2 or not np.all(np.isfinite(grid)) or np.any(np.diff(grid) <= 0):
        raise DiffhepError(
            "the scan must hold at least two finite, increasing POI values",
            where=where,
            fix="e.g. 0,5,21 (start, stop, number of points)",
        )
    out = grid[(grid < lo) | (grid > hi)]
    if out.size:
        origin = "given" if overridden else "of the measurement"
        raise DiffhepError(
            f"POI value(s) {', '.join(f'{x:g}' for x in out[:10])} of the scan lie outside "
            f"the POI bounds [{lo:g}, {hi:g}] ({origin}); a fit cannot test them (it would "
            "test the bound instead)",
            where=where,
            fix=f"widen the bounds (e.g. --poi-bounds {min(lo, grid[0]):g},{max(hi, grid[-1]):g}) "
            "or scan inside them",
        )
    return grid
