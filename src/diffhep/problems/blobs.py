"""The neos Gaussian-blob problem (arXiv:2203.05570, section 3.1) and its reference CLs.

Four 2-D Gaussian blobs with unit covariance: the signal, the nominal background and two
background variations that play the role of a +-1 sigma systematic shift. The statistical
model has a ``signal`` sample scaled by the POI ``mu`` and a ``background`` sample with a
histosys ``bkg_shape`` whose ``hi_data``/``lo_data`` are the up/down histograms. The figure
of merit is the median expected CLs at mu = 1 (qtilde) on the background-only Asimov data.

Two references bound what any observable can reach, both from the *true* densities:

- :func:`reference_cls_lr`: the likelihood ratio s/(s+b) with optimally placed bins;
- :func:`reference_cls_2d`: a fine binning of the plane itself (no 1-D summary does better).

Example:
    >>> from diffhep.problems import blobs
    >>> data = blobs.generate(n_per_blob=100, seed=1)
    >>> x, w = data["signal"]
    >>> x.shape, x.dtype, round(float(w.sum()), 6)
    ((100, 2), dtype('float32'), 20.0)
    >>> round(float(blobs.likelihood_ratio([[0.0, 0.0]])[0]), 6)
    0.166667
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit, ndtr

from ..errors import FitError, require_x64
from ..stats.hypotest import hypotest
from ..stats.model import Model

__all__ = [
    "MEANS",
    "SAMPLES",
    "YIELDS",
    "cell_yields",
    "density",
    "expected_cls",
    "generate",
    "integration_grid",
    "likelihood_ratio",
    "lr_yields",
    "model_spec",
    "plane_yields",
    "reference_cls_2d",
    "reference_cls_lr",
]

#: Blob means (the neos reference code); every blob has the identity as covariance.
MEANS = {
    "signal": (-1.0, 1.0),
    "background": (1.0, -1.0),
    "background_up": (2.5, 2.0),
    "background_down": (-2.5, -1.5),
}
#: Expected yields (events); the variations are normalised like the nominal background.
YIELDS = {"signal": 20.0, "background": 100.0, "background_up": 100.0, "background_down": 100.0}
#: Order of the samples in every yields array of this module.
SAMPLES = ("signal", "background", "background_up", "background_down")


def generate(n_per_blob: int = 10_000, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Sample the four blobs.

    Args:
        n_per_blob: Points per blob.
        seed: Seed; each blob gets its own stream (``SeedSequence(seed).spawn``).

    Returns:
        ``{name: (x, w)}`` with features ``x`` (float32, ``(n, 2)``) and weights ``w``
        (float64, ``(n,)``) equal to ``yield / n``, so ``w.sum()`` is the expected yield.
    """
    streams = np.random.SeedSequence(seed).spawn(len(SAMPLES))
    out = {}
    for name, stream in zip(SAMPLES, streams, strict=True):
        rng = np.random.default_rng(stream)
        x = rng.standard_normal((n_per_blob, 2)) + np.asarray(MEANS[name])
        out[name] = (x.astype(np.float32), np.full(n_per_blob, YIELDS[name] / n_per_blob))
    return out


def _log_density(name: str, x) -> np.ndarray:
    d = np.asarray(x, dtype=float) - np.asarray(MEANS[name])
    return -0.5 * np.sum(d * d, axis=-1) - np.log(2.0 * np.pi)


def density(name: str, x) -> np.ndarray:
    """True probability density of blob ``name`` at points ``x`` (``(..., 2)``)."""
    return np.exp(_log_density(name, x))


def _log_ratio(x) -> np.ndarray:
    """log(s/b) of the expected densities; linear in x (equal covariances)."""
    return (
        np.log(YIELDS["signal"] / YIELDS["background"])
        + _log_density("signal", x)
        - _log_density("background", x)
    )


def likelihood_ratio(x) -> np.ndarray:
    """The optimal observable without systematics: s/(s+b) of the expected densities."""
    return expit(_log_ratio(x))


def integration_grid(n: int = 800, half_width: float = 8.0) -> tuple[np.ndarray, float]:
    """Cell centres ``(n*n, 2)`` and cell area of a grid covering every blob +- half_width."""
    m = np.asarray(list(MEANS.values()))
    lo, hi = m.min(axis=0) - half_width, m.max(axis=0) + half_width
    h = (hi - lo) / n
    xs, ys = (lo[i] + h[i] * (np.arange(n) + 0.5) for i in range(2))
    points = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    return points, float(h[0] * h[1])


@functools.lru_cache(maxsize=2)
def _lr_cumulative(n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells sorted by log(s/b), and the cumulative expected yields (4, cells + 1)."""
    points, area = integration_grid(n_grid)
    key = _log_ratio(points)
    order = np.argsort(key, kind="stable")
    yields = np.stack([YIELDS[s] * density(s, points[order]) * area for s in SAMPLES])
    cum = np.concatenate([np.zeros((len(SAMPLES), 1)), np.cumsum(yields, axis=1)], axis=1)
    return key[order], cum


def lr_yields(edges, n_grid: int = 800) -> np.ndarray:
    """Expected yields ``(4, nbins)`` (:data:`SAMPLES` order) in bins of the likelihood ratio.

    Integrates the true densities on :func:`integration_grid` (midpoint rule); a cell goes to
    the bin of the likelihood ratio at its centre. ``edges`` (increasing, in [0, 1]) include
    the outer ones: ``[0, ..., 1]`` covers everything.
    """
    edges = np.asarray(edges, dtype=float)
    key, cum = _lr_cumulative(n_grid)
    with np.errstate(divide="ignore"):
        pos = np.searchsorted(key, logit(edges), side="left")
    pos[edges >= 1.0] = len(key)  # the last bin includes s/(s+b) == 1
    return np.diff(cum[:, pos], axis=1)


def _interval(a, b):
    """Standard normal probability of [a, b], accurate in both tails."""
    return np.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def cell_yields(xedges, yedges) -> np.ndarray:
    """Exact expected yields ``(4, nx * ny)`` in the cells of a 2-D grid (x-major order).

    Unit-covariance Gaussians factorise, so each cell is a product of two normal intervals.
    Infinite outer edges make the cells cover the plane.
    """
    xe, ye = np.asarray(xedges, dtype=float), np.asarray(yedges, dtype=float)
    out = []
    for s in SAMPLES:
        mx, my = MEANS[s]
        px, py = _interval(xe[:-1] - mx, xe[1:] - mx), _interval(ye[:-1] - my, ye[1:] - my)
        out.append(YIELDS[s] * np.outer(px, py).ravel())
    return np.stack(out)


def model_spec(yields) -> dict:
    """The pyhf model spec of the blob analysis for yields ``(4, nbins)`` (:data:`SAMPLES`)."""
    s, b, up, down = (np.asarray(y, dtype=float).tolist() for y in yields)
    return {
        "channels": [
            {
                "name": "blobs",
                "samples": [
                    {
                        "name": "signal",
                        "data": s,
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "background",
                        "data": b,
                        "modifiers": [
                            {
                                "name": "bkg_shape",
                                "type": "histosys",
                                "data": {"hi_data": up, "lo_data": down},
                            }
                        ],
                    },
                ],
            }
        ],
        "parameters": [],
    }


@functools.lru_cache(maxsize=8)
def _model(nbins: int) -> Model:
    return Model.from_spec(model_spec(np.ones((len(SAMPLES), nbins))), poi_name="mu")


@eqx.filter_jit
def _cls(model: Model, yields):
    """Median expected CLs (mu = 1, qtilde) and convergence, for yields in SAMPLES order."""
    s, b, up, down = yields
    by_name = {"signal": s, "background": b}
    model = model.with_yields(
        nominal=jnp.stack([by_name[n] for n in model.config.samples]),
        histosys_lo=down[None],
        histosys_hi=up[None],
    )
    data = jnp.concatenate([b, model.auxdata])
    res = hypotest(1.0, model, data)
    return res.cls_exp[2], res.converged


def _cls_value(yields) -> tuple[float, bool]:
    yields = np.asarray(yields, dtype=float)
    cls, ok = _cls(_model(yields.shape[1]), jnp.asarray(yields))
    return float(cls), bool(ok)


def expected_cls(yields) -> float:
    """Median expected CLs (mu = 1, qtilde, background-only Asimov data) of binned yields.

    Args:
        yields: ``(4, nbins)`` expected yields in :data:`SAMPLES` order. One model is built
            per number of bins; its compiled hypothesis test is reused for every call.

    Raises:
        FitError: A fit did not converge.
    """
    require_x64(fix="call diffhep.enable_x64() first")
    cls, ok = _cls_value(yields)
    if not ok:
        raise FitError("a fit of the expected-CLs hypothesis test did not converge")
    return cls


def reference_cls_lr(nbins: int = 4, n_grid: int = 800) -> tuple[float, np.ndarray]:
    """Expected CLs of the likelihood ratio s/(s+b) with ``nbins`` optimally placed bins.

    The ``nbins - 1`` interior edges are optimised with Nelder-Mead on log(s/b) (sorted, so
    they stay ordered) from several starts, on the yields of :func:`lr_yields`.

    Returns:
        The lowest expected CLs and the bin edges ``[0, ..., 1]`` that give it.
    """
    require_x64(fix="call diffhep.enable_x64() first")

    def edges_of(z):
        return np.concatenate([[0.0], expit(np.sort(z)), [1.0]])

    def objective(z):
        cls, ok = _cls_value(lr_yields(edges_of(z), n_grid))
        return np.log(cls) if ok and cls > 0 else np.inf

    uniform = logit(np.linspace(0.0, 1.0, nbins + 1)[1:-1])
    starts = [uniform] + [np.linspace(a, b, nbins + 1)[1:-1] for a, b in [(-6, 6), (-4, 6)]]
    best = None
    for z0 in starts:
        res = minimize(objective, z0, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-10})
        if best is None or res.fun < best.fun:
            best = res
    edges = edges_of(best.x)
    return expected_cls(lr_yields(edges, n_grid)), edges


def plane_yields(
    nbins_per_axis: int = 160, min_density: float = 0.01, n_merged: int = 20
) -> np.ndarray:
    """Expected yields ``(4, nbins)`` of a fine 2-D binning of the plane.

    The window covering every blob +- 5 is cut into ``nbins_per_axis`` x ``nbins_per_axis``
    cells (the outer ones extend to infinity), integrated by :func:`cell_yields`. Cells whose
    largest expected yield is below ``min_density`` x cell area are merged into ``n_merged``
    bins of similar log(s/b), which keeps the model small without losing their information.
    """
    m = np.asarray(list(MEANS.values()))
    lo, hi = m.min(axis=0) - 5.0, m.max(axis=0) + 5.0
    xe, ye = (np.linspace(lo[i], hi[i], nbins_per_axis + 1) for i in range(2))
    area = (xe[1] - xe[0]) * (ye[1] - ye[0])
    xe[[0, -1]] = ye[[0, -1]] = -np.inf, np.inf
    y = cell_yields(xe, ye)
    keep = y.max(axis=0) >= min_density * area
    rest = y[:, ~keep]
    if not rest.shape[1]:
        return y
    tiny = np.finfo(float).tiny
    key = np.log(np.maximum(rest[0], tiny)) - np.log(np.maximum(rest[1], tiny))
    groups = np.array_split(np.argsort(key, kind="stable"), min(n_merged, rest.shape[1]))
    merged = np.stack([rest[:, g].sum(axis=1) for g in groups], axis=1)
    return np.concatenate([y[:, keep], merged], axis=1)


def reference_cls_2d(
    nbins_per_axis: int = 160, min_density: float = 0.01, n_merged: int = 20
) -> tuple[float, int]:
    """Expected CLs of a fine 2-D binning of the plane: a lower bound for any 1-D observable.

    Each bin of :func:`plane_yields` is one bin of a single channel. The result converges
    from above as the cells shrink (the binning error falls like the cell area).

    Fine cells where the nominal background is negligible but a variation is not get a
    negative interpolated background for any small shift of ``bkg_shape`` of one sign; the
    model floors it (:data:`diffhep.stats.model.POISSON_FLOOR`). This convention moves the result
    by about 1e-3 (relative) at 160 cells per axis.

    Returns:
        The expected CLs and the number of bins of the model.
    """
    require_x64(fix="call diffhep.enable_x64() first")
    y = plane_yields(nbins_per_axis, min_density, n_merged)
    return expected_cls(y), y.shape[1]
