"""pyhf as the test oracle, guarded against its own numerical failures.

pyhf runs on its numpy backend in float64, quiet, and its backend is restored afterwards
(:func:`pyhf_numpy`). A reference must not depend on the oracle's numerical luck: pyhf's
scipy fits at tolerance 1e-12 can raise ``FailedMinimization`` or return NaN (e.g. a CLs of
``0/0`` just above mu = 0, where its toms748 upper-limit search starts), and whether they do
depends on the machine's floating point. Every oracle call therefore goes through
:func:`reseat`: the tight reference first, then re-seated variants (another optimiser,
another start, a looser tolerance, a root-finding bracket starting above the POI's lower
bound), keeping the first finite result. :class:`ReferenceFailure` is raised, naming every
attempt and why it failed, only when all of them fail.

The wrappers (:func:`hypotest`, :func:`fit`, :func:`test_statistic`, :func:`upper_limit`)
take pyhf's own arguments in pyhf's order and return what pyhf returns. The other reference
that several files use, central finite differences of a Hessian, is :func:`fd_hessian`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pyhf

__all__ = [
    "ReferenceFailure",
    "fd_hessian",
    "finite_fits",
    "fit",
    "global_fit",
    "hypotest",
    "one_blas_thread",
    "optimizer",
    "pyhf_numpy",
    "reseat",
    "test_statistic",
    "upper_limit",
]

SCIPY_TOL = 1e-12  # the tight reference (pyhf's default tolerance moves CLs by ~1e-3)
LOOSE_SCIPY_TOL = 1e-10
MINUIT_TOL = 1e-7

# the re-seats, in order: the tight scipy reference, MINUIT, a looser scipy tolerance
DEFAULT_OPTIMIZERS = ("scipy", "minuit", "scipy-loose")


class ReferenceFailure(RuntimeError):
    """The oracle failed in every re-seated form: the test cannot be checked."""


def optimizer(name: str):
    """pyhf optimiser by name: ``scipy`` (tolerance 1e-12), ``scipy-loose`` (1e-10) or
    ``minuit`` (strategy 2, tolerance 1e-7)."""
    if name == "scipy":
        return pyhf.optimize.scipy_optimizer(tolerance=SCIPY_TOL)
    if name == "scipy-loose":
        return pyhf.optimize.scipy_optimizer(tolerance=LOOSE_SCIPY_TOL)
    if name == "minuit":
        return pyhf.optimize.minuit_optimizer(strategy=2, tolerance=MINUIT_TOL)
    raise ValueError(name)


@contextlib.contextmanager
def pyhf_numpy(opt=None, backend="numpy"):
    """pyhf on numpy/float64 with optimiser ``opt`` (default: scipy with tolerance 1e-12);
    ``backend="jax"``: pyhf's jax backend (float64), whose fits get exact gradients.

    pyhf's warnings (e.g. overflow in its numpy code) are silenced: the test suite turns
    warnings into errors, and pyhf is only the oracle here. So are its error logs: a failed
    MINUIT fit logs its whole result, correlation matrix included, which on a 222-parameter
    workspace took 10 s per fit to format (30 of a sweep draw's 214 CPU-s).
    """
    saved = pyhf.get_backend()
    opt = optimizer(opt) if isinstance(opt, str) else opt or optimizer("scipy")
    pyhf.set_backend(backend, opt, precision="64b")
    log = logging.getLogger("pyhf")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
        pyhf.set_backend(*saved)


def _openblas_thread_setters():
    """``(get, set)`` ctypes functions of every OpenBLAS loaded in this process (numpy's and
    scipy's wheels each bundle one), found as threadpoolctl finds them; empty off Linux."""
    import ctypes
    import re

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read())))
    except OSError:
        return []
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    found.append((get, put))
                    break
            else:
                continue
            break
    return found


@contextlib.contextmanager
def one_blas_thread():
    """OpenBLAS on one thread inside the block (restored after it).

    scipy's L-BFGS-B and SLSQP call BLAS on vectors of a few dozen numbers; with OpenBLAS's
    default threads on a loaded 2-core machine, each call waits for the other threads:
    measured 5.6x more CPU time for the multi-start reference of tests/test_adversarial.py
    (38.8 s instead of 6.9 s for 4 workspaces, load ~13).
    """
    setters = _openblas_thread_setters()
    saved = [get() for get, _ in setters]
    for _, put in setters:
        put(1)
    try:
        yield
    finally:
        for (_, put), n in zip(setters, saved, strict=True):
            put(n)


def _finite(obj) -> bool:
    """Every number in ``obj`` (nested tuples/lists/arrays, ``None`` ignored) is finite."""
    if obj is None or isinstance(obj, str):
        return True
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return all(_finite(v) for v in obj)
    try:
        arr = np.asarray(obj, dtype=float)
    except (TypeError, ValueError):
        return True  # e.g. a pyhf calculator object
    return bool(np.all(np.isfinite(arr)))


def reseat(
    what: str,
    attempts: Sequence[tuple[str, Callable[[], object]]],
    accept: Callable[[object], bool] = _finite,
):
    """The result of the first attempt that neither raises nor fails ``accept``.

    Args:
        what: The reference being computed (for the error message).
        attempts: ``(label, thunk)`` pairs, the tight reference first.
        accept: Whether a result is usable (default: every number in it is finite).

    Raises:
        ReferenceFailure: Every attempt raised or was rejected; the message lists them.
    """
    failures = []
    for label, thunk in attempts:
        try:
            out = thunk()
        except Exception as err:
            failures.append(f"  {label}: {type(err).__name__}: {str(err)[:200]}")
            continue
        if accept(out):
            return out
        failures.append(f"  {label}: rejected (not finite)")
    raise ReferenceFailure(
        f"the pyhf reference for {what} failed in every re-seated form:\n" + "\n".join(failures)
    )


def _tensor(data):
    return pyhf.tensorlib.astensor(np.asarray(data, dtype=float).tolist())


def finite_fits(fitted_pars) -> bool:
    """Every fitted parameter of a pyhf calculator's ``fitted_pars`` is finite."""
    return _finite(dataclasses.asdict(fitted_pars))


def _moved_init(model, init_pars=None, fixed_params=None):
    """Another start: the suggested init with the POI moved to the middle of its bounds (the
    start pyhf's fits share is the one most likely to fail again), unless it is fixed."""
    init = list(init_pars if init_pars is not None else model.config.suggested_init())
    poi = model.config.poi_index
    fixed = fixed_params if fixed_params is not None else model.config.suggested_fixed()
    if poi is not None and not fixed[poi]:
        lo, hi = model.config.suggested_bounds()[poi]
        init[poi] = 0.5 * (lo + hi) if np.isfinite(hi) else init[poi] + 1.0
    return init


def hypotest(mu, data, model, *, optimizers=DEFAULT_OPTIMIZERS, accept=_finite, **kwargs):
    """``pyhf.infer.hypotest(mu, data, model, **kwargs)``, re-seated with the other
    optimisers (and, last, another start) if it raises or is not finite."""

    def call(opt, **extra):
        def run():
            with pyhf_numpy(opt):
                return pyhf.infer.hypotest(mu, _tensor(data), model, **{**kwargs, **extra})

        return run

    attempts = [(f"hypotest({mu}) with {opt}", call(opt)) for opt in optimizers]
    if "init_pars" not in kwargs:
        attempts.append(
            (f"hypotest({mu}) with scipy from a moved start",
             call("scipy", init_pars=_moved_init(model, None, kwargs.get("fixed_params")))),
        )  # fmt: skip
    return reseat(f"hypotest at mu={mu}", attempts, accept)


def fit(data, model, *, poi_value=None, optimizers=DEFAULT_OPTIMIZERS, **kwargs):
    """``pyhf.infer.mle.fit`` (or ``fixed_poi_fit`` at ``poi_value``), re-seated: the
    optimisers in turn, then the first one from another start."""

    def call(opt, **extra):
        def run():
            kw = {**kwargs, **extra}
            with pyhf_numpy(opt):
                if poi_value is None:
                    return pyhf.infer.mle.fit(_tensor(data), model, **kw)
                return pyhf.infer.mle.fixed_poi_fit(poi_value, _tensor(data), model, **kw)

        return run

    what = "fit" if poi_value is None else f"fixed_poi_fit({poi_value})"
    attempts = [(f"{what} with {opt}", call(opt)) for opt in optimizers]
    moved = _moved_init(model, kwargs.get("init_pars"), kwargs.get("fixed_params"))
    if poi_value is None:
        attempts.append((f"{what} with {optimizers[0]} from a moved start",
                         call(optimizers[0], init_pars=moved)))  # fmt: skip
    return reseat(what, attempts)


def test_statistic(name, mu, data, model, init_pars, par_bounds, fixed_params,
                   optimizers=DEFAULT_OPTIMIZERS):  # fmt: skip
    """``pyhf.infer.test_statistics.<name>(mu, data, model, init, bounds, fixed)``,
    re-seated with the other optimisers."""
    func = getattr(pyhf.infer.test_statistics, name)

    def call(opt):
        def run():
            with pyhf_numpy(opt):
                return float(func(mu, _tensor(data), model, init_pars, par_bounds, fixed_params))

        return run

    return reseat(f"{name}({mu})", [(f"{name}({mu}) with {opt}", call(opt)) for opt in optimizers])


test_statistic.__test__ = False  # not a pytest test


def global_fit(data, model, *, poi_value=None, n_starts=20, seed=0):
    """The lowest ``-2 log L`` pyhf finds from many starts: :func:`fit` (re-seated) from the
    suggested init, then pyhf's scipy fit from ``n_starts`` random starts, each free
    parameter uniform within 0.9 x min(1, half its bound range) of its suggested init
    (starts that fail are skipped). The reference where the likelihood has several minima:
    pyhf's fit from one start can stop in the worse one (tests/test_pipeline.py's model at
    mu = 0: -2 log L 17.9428 at alpha = +0.26 instead of 17.9236 at alpha = -0.31).

    Returns:
        ``(bestfit, twice_nll)`` of the lowest fit, as a numpy array and a float.
    """
    cfg = model.config
    init = np.asarray(cfg.suggested_init(), dtype=float)
    bounds = np.asarray(cfg.suggested_bounds(), dtype=float)
    free = ~np.asarray(cfg.suggested_fixed(), dtype=bool)
    if poi_value is not None:
        init[cfg.poi_index] = poi_value
        free[cfg.poi_index] = False
    half = 0.9 * np.minimum(1.0, 0.5 * (bounds[:, 1] - bounds[:, 0]))
    rng = np.random.default_rng(seed)
    starts = [init + free * rng.uniform(-half, half) for _ in range(n_starts)]

    def one(opt, start):
        with pyhf_numpy(opt):
            kw = {"init_pars": list(start), "return_fitted_val": True}
            if poi_value is None:
                return pyhf.infer.mle.fit(_tensor(data), model, **kw)
            return pyhf.infer.mle.fixed_poi_fit(poi_value, _tensor(data), model, **kw)

    results = [fit(data, model, poi_value=poi_value, return_fitted_val=True)]
    for start in starts:
        try:
            out = one("scipy", np.clip(start, bounds[:, 0], bounds[:, 1]))
        except Exception:  # a start the optimiser cannot leave: another start covers it
            continue
        if _finite(out):
            results.append(out)
    best = min(results, key=lambda r: float(r[1]))
    return np.asarray(best[0], dtype=float), float(best[1])


def _poi_bounds(model):
    return tuple(float(b) for b in model.config.suggested_bounds()[model.config.poi_index])


def upper_limit(data, model, scan=None, level=0.05, *, optimizers=DEFAULT_OPTIMIZERS, **kwargs):
    """pyhf's ``upper_limit(data, model, scan, level)``: observed limit and the five expected.

    Without ``scan``, pyhf's toms748 search starts at the POI's lower bound, where CLs can be
    ``0/0`` (NaN) and the search raises. Re-seats: pyhf's own search with each optimiser,
    then :func:`pyhf.infer.intervals.upper_limits.toms748_scan` on a bracket starting above
    the lower bound (1% of the range; pyhf halves it while a band is below ``level``).
    With ``scan``, a grid point whose CLs is not finite is recomputed with the guarded
    :func:`hypotest` (last, 1% of a grid step further in) and the limits are interpolated
    as pyhf's ``linear_grid_scan`` does.

    Returns:
        ``(observed, [expected x 5])`` as floats.
    """
    ul = pyhf.infer.intervals.upper_limits

    def as_floats(res):
        return float(res[0]), [float(x) for x in res[1]]

    if scan is not None:
        scan = np.asarray(scan, dtype=float)

        def grid(opt):
            def run():
                with pyhf_numpy(opt):
                    res = ul.upper_limit(_tensor(data), model, scan, level,
                                         return_results=True, **kwargs)  # fmt: skip
                # a NaN CLs on the grid can still interpolate to a finite limit
                return as_floats(res) if _finite(res[2][1]) else (float("nan"), [])

            return run

        def one(mu):
            obs, exp = hypotest(mu, data, model, optimizers=optimizers,
                                return_expected_set=True, **kwargs)  # fmt: skip
            return [float(obs), *map(float, exp)]

        def pointwise():
            step = float(np.min(np.abs(np.diff(scan)))) if len(scan) > 1 else 1.0
            xs, rows = [], []
            for mu in map(float, scan):
                try:
                    rows.append(one(mu))
                except ReferenceFailure:  # last resort: the point 1% of a step further in
                    mu += 0.01 * step if mu < scan[-1] else -0.01 * step
                    rows.append(one(mu))
                xs.append(mu)
            table, xs = np.asarray(rows).T, np.asarray(xs)
            limits = [float(np.interp(level, col[::-1], xs[::-1])) for col in table]
            return limits[0], limits[1:]

        attempts = [(f"linear_grid_scan with {optimizers[0]}", grid(optimizers[0])),
                    ("linear_grid_scan with re-seated points", pointwise)]  # fmt: skip
        return reseat("upper_limit on a grid", attempts)

    lo, hi = _poi_bounds(model)

    def _checked(res):
        # toms748 does not notice a NaN at a bracket end (NaN fails every sign test) and
        # may return a finite number: every CLs the search evaluated must be finite
        _, _, (_, values) = res
        return as_floats(res) if _finite(values) else (float("nan"), [])

    def search(opt):
        def run():
            with pyhf_numpy(opt):
                res = ul.upper_limit(_tensor(data), model, level=level, return_results=True,
                                     **kwargs)  # fmt: skip
            return _checked(res)

        return run

    def bracket_above(opt):
        def run():
            with pyhf_numpy(opt):
                res = ul.toms748_scan(_tensor(data), model, lo + 0.01 * (hi - lo), hi,
                                      level=level, from_upper_limit_fn=True,
                                      **kwargs)  # fmt: skip
            return _checked(res)

        return run

    attempts = [(f"toms748 from the POI bounds with {opt}", search(opt)) for opt in optimizers]
    attempts += [
        (f"toms748 from 1% above the lower bound with {opt}", bracket_above(opt))
        for opt in optimizers
    ]
    return reseat("upper_limit", attempts)


def fd_hessian(f, x, h=1e-4):
    """Central second differences of the scalar function ``f`` at ``x``, with the step ``h``
    (one for every coordinate, or one per coordinate)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    h = np.broadcast_to(np.asarray(h, dtype=float), (n,))
    H = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            ei, ej = np.zeros(n), np.zeros(n)
            ei[i], ej[j] = h[i], h[j]
            H[i, j] = H[j, i] = (
                f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)
            ) / (4 * h[i] * h[j])
    return H
