"""Problems 1b and 1c of ``diffhep study black-box``: bin edges of the neos blobs (2, 4, 6 edges).

The observable is fixed: the projection ``u = (x2 - x1) / sqrt(2)`` of the plane on the line
through the signal and background means. With unit covariances the likelihood ratio s/(s+b)
is a monotone function of ``u``, so bins of ``u`` are bins of the likelihood ratio
(:func:`diffhep.problems.blobs.likelihood_ratio`). The parameters are the ``d`` interior bin
edges (``d + 1`` bins, the outer ones open), searched in [-3, 4] and sorted.

The **exact** objective is the median expected CLs (mu = 1, qtilde, background-only Asimov
data; :func:`diffhep.problems.blobs.expected_cls`'s hypothesis test with its exact fits) of
the *true* expected yields in those bins: every blob projects on ``u`` to a unit normal, so a
bin's yield is a difference of normal CDFs (a hard histogram of infinitely many events).

Methods, each counted in exact evaluations and wall time:

- gradient: Adam on the edges through a soft histogram (:func:`~diffhep.analysis.histograms.
  soft_histogram`, bandwidth 0.3 of the mean bin width) of 2000 simulated events per blob
  (``blobs.generate(seed=seed)``), loss log CLs of the soft yields (the same hypothesis test,
  differentiated); the exact CLs of the current edges after every step is one evaluation;
- TPE (Optuna, multivariate), uniform random search, and a grid (cell centres of
  ``floor(budget^(1/d))`` values per parameter, visited in a seeded order) on the exact CLs;
- L-GSO (:func:`diffhep.surrogate.lgso.lgso`) with the hard histogram as the black box:
  ``psi`` = the edges, ``F(x; psi)`` = an event's cumulative indicators ``[u > e_(j)]``
  (:func:`hard_histogram`), a Bernoulli surrogate ``p(u > e_(j) | u, psi)``, the rest of the
  chain (yields, hypothesis test) differentiated exactly; counted in black-box histograms.

The optimum: Nelder-Mead on the exact objective from several starts (evenly spaced edges,
5 random ones and the best point any method found), and for d = 2 also a dense grid.

The second metric (``metric="z0"``): the median expected discovery significance Z0 on the
signal-plus-background Asimov data (:func:`exact_z0`), maximised by the same methods.
"""

from __future__ import annotations

import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..problems import blobs
from .common import proposals

__all__ = [
    "BOX",
    "HistogramRisk",
    "blobs_problem",
    "exact_cls",
    "exact_z0",
    "hard_histogram",
    "projected_yields",
]

BOX = (-3.0, 4.0)  # search range of every edge, in u
DIMS = (2, 4, 6)
SQRT2 = np.sqrt(2.0)
#: Mean of each blob's projection u = (x2 - x1) / sqrt(2) (unit variance).
U_MEANS = {s: (m[1] - m[0]) / SQRT2 for s, m in blobs.MEANS.items()}


def projected_yields(edges) -> np.ndarray:
    """Exact expected yields ``(4, d + 1)`` (``blobs.SAMPLES`` order) in bins of u with
    interior edges ``edges`` (sorted here; the outer bins extend to -inf / +inf)."""
    e = np.concatenate([[-np.inf], np.sort(np.asarray(edges, dtype=float)), [np.inf]])
    return np.stack([
        blobs.YIELDS[s] * blobs._interval(e[:-1] - U_MEANS[s], e[1:] - U_MEANS[s])
        for s in blobs.SAMPLES
    ])  # fmt: skip


def exact_cls(edges) -> float:
    """The exact objective: expected CLs at these interior edges (NaN if a fit fails)."""
    cls, ok = blobs._cls_value(projected_yields(edges))
    return cls if ok and np.isfinite(cls) and cls > 0 else float("nan")


@eqx.filter_jit
def _z0(model, yields):
    """Median expected discovery significance Z0 = sqrt(q0) on the mu = 1 Asimov data
    (:func:`diffhep.analysis.losses.profile_fit` with the POI fixed at 0; exact fit) and
    whether the fit converged, for yields in ``blobs.SAMPLES`` order."""
    from ..analysis.losses import profile_fit
    from ..stats.numerics import safe_sqrt

    s, b, up, down = yields
    by_name = {"signal": s, "background": b}
    model = model.with_yields(nominal=jnp.stack([by_name[n] for n in model.config.samples]),
                              histosys_lo=down[None], histosys_hi=up[None])  # fmt: skip
    q, res = profile_fit(model, 1.0, 0.0)
    return safe_sqrt(q), res.converged


def exact_z0(edges) -> float:
    """The second exact objective: the median expected Z0 at these interior edges (NaN if
    the fit fails); no edges: one counting bin."""
    y = projected_yields(edges)
    z, ok = _z0(blobs._model(y.shape[1]), jnp.asarray(y))
    return float(z) if bool(ok) and np.isfinite(float(z)) else float("nan")


#: Per metric: the exact objective, whether larger is better, and the loss a search
#: minimises (log CLs; -Z0).
METRICS = {"cls": (exact_cls, False, np.log), "z0": (exact_z0, True, np.negative)}


def gap(values, opt: float, metric: str) -> np.ndarray:
    """Distance to the optimum, >= 0: CLs / optimum - 1, or 1 - Z0 / optimum (non-finite
    values: +inf)."""
    v = np.asarray(values, dtype=float) / opt
    v = 1 - v if METRICS[metric][1] else v - 1
    return np.where(np.isfinite(v), v, np.inf)


def _better(a: float, b: float, metric: str) -> bool:
    """Whether value ``a`` is better than ``b`` (NaN never is)."""
    if not np.isfinite(a):
        return False
    return not np.isfinite(b) or (a > b if METRICS[metric][1] else a < b)


def _optimum(d: int, extra_starts, seed: int = 0, dense: int = 0, metric: str = "cls") -> dict:
    from scipy.optimize import minimize

    value, larger, _ = METRICS[metric]

    def f(z):
        v = value(z)
        if not (np.isfinite(v) and v > 0):
            return np.inf
        return -np.log(v) if larger else np.log(v)

    rng = np.random.default_rng(seed)
    lo, hi = BOX
    starts = [np.linspace(lo, hi, d + 2)[1:-1]]
    starts += [np.sort(rng.uniform(lo, hi, d)) for _ in range(5)]
    starts += [np.sort(np.asarray(s, dtype=float)) for s in extra_starts]
    best = None
    how = "Nelder-Mead from evenly spaced edges, 5 random starts and the best point found"
    for z0 in starts:
        res = minimize(f, z0, method="Nelder-Mead",
                       options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 4000 * d})  # fmt: skip
        if best is None or res.fun < best[0]:
            best = (float(res.fun), np.sort(res.x))
    v = float(np.exp(-best[0] if larger else best[0]))
    out = {"value": v, "edges": best[1].tolist(), "how": how, "starts": len(starts)}
    if dense and d == 2:
        axis = np.linspace(lo, hi, dense)
        pts = [(value([a, b]), a, b) for a in axis for b in axis if a < b]
        pts = [p for p in pts if np.isfinite(p[0])]
        grid_best = (max if larger else min)(pts)
        out["dense_grid"] = {"points": f"{dense} x {dense}", "value": float(grid_best[0]),
                             "edges": [float(grid_best[1]), float(grid_best[2])]}  # fmt: skip
    return out


def _search(method: str, d: int, budget: int, seed: int, metric: str = "cls") -> dict:
    value, _, loss = METRICS[metric]
    t0 = time.perf_counter()
    values, stamps, points = [], [], []
    for z, tell in proposals(method, d, budget, seed, *BOX, "e"):
        v = value(z)
        tell(float(loss(v)) if np.isfinite(v) and v > 0 else None)
        values.append(v)
        points.append(sorted(z))
        stamps.append(time.perf_counter() - t0)
    i = int(np.argmin(gap(values, 1.0, metric)))
    return {"seed": seed, "values": values, "stamps": stamps, "edges": points[i],
            "value": float(values[i]), "seconds": time.perf_counter() - t0}  # fmt: skip


def _metric_of(model, y, metric: str):
    """log CLs or -Z0 of yields ``y`` (JAX: the losses the gradient methods minimise)."""
    if metric == "cls":
        return jnp.log(blobs._cls(model, y)[0])
    return -_z0(model, y)[0]


@functools.lru_cache(maxsize=8)
def _step_function(d: int, metric: str = "cls"):
    """The jitted value and gradient of log CLs (or -Z0) of soft yields in the edges."""
    import jax

    from ..analysis.histograms import relative_bandwidth, soft_histogram

    lo, hi = BOX
    model = blobs._model(d + 1)

    def loss(z, us, ws):
        edges = jnp.concatenate([jnp.array([lo]), jnp.sort(z), jnp.array([hi])])
        h = relative_bandwidth(edges, 0.3)
        y = jnp.stack([soft_histogram(u, edges, h, w)[0] for u, w in zip(us, ws, strict=True)])
        return _metric_of(model, y, metric)

    return jax.jit(jax.value_and_grad(loss))


def _gradient(d: int, steps: int, seed: int, learning_rate: float = 0.05,
              metric: str = "cls") -> dict:  # fmt: skip
    import optax

    lo, hi = BOX
    value = METRICS[metric][0]
    data = blobs.generate(n_per_blob=2000, seed=seed)
    us = [jnp.asarray((x[:, 1] - x[:, 0]) / SQRT2, dtype=jnp.float64) for x, _ in
          (data[s] for s in blobs.SAMPLES)]  # fmt: skip
    ws = [jnp.asarray(data[s][1]) for s in blobs.SAMPLES]
    step_fn = _step_function(d, metric)
    opt = optax.adam(learning_rate)
    z = jnp.asarray(np.linspace(lo, hi, d + 2)[1:-1])
    state = opt.init(z)
    step_fn(z, us, ws)[0].block_until_ready()  # compiled outside the timing
    t0 = time.perf_counter()
    values, stamps, skipped = [], [], 0
    for _ in range(steps):
        _, g = step_fn(z, us, ws)
        if not bool(jnp.all(jnp.isfinite(g))):
            skipped += 1
        else:
            upd, state = opt.update(g, state)
            z = jnp.clip(optax.apply_updates(z, upd), lo, hi)
        values.append(value(np.asarray(z)))
        stamps.append(time.perf_counter() - t0)
    return {"seed": seed, "values": values, "stamps": stamps,
            "edges": sorted(np.asarray(z).tolist()), "value": float(values[-1]),
            "seconds": time.perf_counter() - t0, "skipped_steps": skipped}  # fmt: skip


def blobs_events(rng, n: int) -> np.ndarray:
    """``n`` events of the blobs for L-GSO's black box: columns ``(u, one-hot of the
    sample)``, the sample uniform over ``blobs.SAMPLES``, ``u ~ N(U_MEANS[sample], 1)``."""
    k = rng.integers(0, len(blobs.SAMPLES), size=n)
    means = np.array([U_MEANS[s] for s in blobs.SAMPLES])
    return np.column_stack([means[k] + rng.normal(size=n), np.eye(len(blobs.SAMPLES))[k]])


def hard_histogram(x, psi, rng=None) -> np.ndarray:
    """L-GSO's black box: the hard binning of each event's ``u`` (``x[:, 0]``) by the
    interior edges ``psi`` (sorted), as cumulative indicators ``y_j = [u > e_(j)]``
    (``(n, d)`` of 0/1; the event is in bin ``sum_j y_j``)."""
    return (np.asarray(x)[:, :1] > np.sort(np.asarray(psi, dtype=float))[None, :]).astype(float)


def histogram_yields(y, x):
    """Yields ``(4, d + 1)`` of a batch from its (expected) cumulative indicators ``y`` (JAX):
    bin k holds ``y_(k-1) - y_k``; every sample normalised to its total yield; at least
    1e-6 per bin (a surrogate's cumulative probabilities need not be monotone)."""
    n = y.shape[0]
    y = jnp.concatenate([jnp.ones((n, 1)), y, jnp.zeros((n, 1))], axis=1)
    member = y[:, :-1] - y[:, 1:]  # (n, d + 1)
    onehot = x[:, 1:]
    totals = jnp.asarray([blobs.YIELDS[s] for s in blobs.SAMPLES])
    counts = onehot.T @ member / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]
    return jnp.maximum(totals[:, None] * counts, 1e-6)


class HistogramRisk(eqx.Module):
    """L-GSO's risk on the blobs: log CLs (or -Z0) of the yields of a batch's (expected)
    cumulative indicators (:func:`histogram_yields`), ``nbins`` bins. A Module with static
    fields: equal for equal settings, so every seed's run reuses lgso's compiled code."""

    nbins: int = eqx.field(static=True)
    metric: str = eqx.field(static=True)

    def __call__(self, y, x):
        with jax.ensure_compile_time_eval():  # concrete (cached) arrays: constants in a trace
            model = blobs._model(self.nbins)
        return _metric_of(model, histogram_yields(y, x), self.metric)


def _lgso(d: int, seed: int, iterations: int = 60, metric: str = "cls", **extra) -> dict:
    """L-GSO on the edges with the hard histogram as the black box, its default settings
    except the surrogate's family (Bernoulli: the outputs are 0/1) and the columns it sees
    (u only; the sample's one-hot is for the risk); the risk is log CLs (or -Z0) of the
    batch's yields. Evaluations: black-box histograms (N per iteration, M events each).
    ``extra``: other settings (e.g. ``tolerance=0.0``: no early stop)."""
    from ..surrogate.lgso import Settings, lgso

    value = METRICS[metric][0]
    risk = HistogramRisk(d + 1, metric)
    settings = Settings(
        seed=seed, surrogate="bernoulli", columns=(0,), max_iterations=iterations, **extra
    )
    t0, stamps = time.perf_counter(), []
    res = lgso(hard_histogram, blobs_events, risk, np.linspace(*BOX, d + 2)[1:-1].tolist(),
               bounds=[BOX] * d, settings=settings,
               callback=lambda r: stamps.append(time.perf_counter() - t0))  # fmt: skip
    seconds = time.perf_counter() - t0
    values = [value(p) for p in res.path[1:]]
    final = value(res.psi)
    last = res.records[-1]
    return {"seed": seed, "values": values, "stamps": stamps, "seconds": seconds,
            "evaluations": [settings.n_psi * (k + 1) for k in range(len(values))],
            "events": int(res.calls), "edges": sorted(res.psi.tolist()), "value": float(final),
            "converged": bool(res.converged), "iterations": len(res.records),
            "val_risk_error": last.get("val_risk_error"),
            "objective_surrogate": last.get("objective_surrogate")}  # fmt: skip


def blobs_problem(seeds: int = 3, budget: int = 60, dims=DIMS, dense: int = 141,
                  metric: str = "cls", lgso_iterations: int = 60,
                  lgso_long: bool = False) -> dict:  # fmt: skip
    """Every method at every number of edges; ``{str(d): {"optimum": ..., "methods":
    {name: [row per seed]}}}`` with each row's exact CLs (``metric="z0"``: Z0) per
    evaluation, seconds after each, and its answer (a search's best trial, the gradient's
    last iterate, L-GSO's mean of its last iterates). ``lgso_long``: also L-GSO without its
    early stop (``tolerance=0``: all ``lgso_iterations`` iterations), method ``lgso_long``."""
    value = METRICS[metric][0]
    out = {}
    for d in dims:
        value(np.linspace(*BOX, d + 2)[1:-1])  # compile this number of bins once
        methods = {"gradient": [_gradient(d, budget, s, metric=metric) for s in range(seeds)]}
        methods["lgso"] = [_lgso(d, s, lgso_iterations, metric) for s in range(seeds)]
        if lgso_long:
            methods["lgso_long"] = [_lgso(d, s, lgso_iterations, metric, tolerance=0.0)
                                    for s in range(seeds)]  # fmt: skip
        for m in ("tpe", "random", "grid"):
            methods[m] = [_search(m, d, budget, s, metric) for s in range(seeds)]
        found = None
        for r in (r for rs in methods.values() for r in rs):
            if found is None or _better(r["value"], found["value"], metric):
                found = r
        opt = _optimum(d, [found["edges"]], dense=dense, metric=metric)
        out[str(d)] = {"optimum": opt, "methods": methods}
    return out
