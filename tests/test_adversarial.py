"""Fits on adversarial workspaces (``tests/adversarial.py``) against pyhf and a multi-start
reference (issue 20).

For each generated workspace, three fits: the free fit and the fits with the POI fixed at
0 and 1. Every diffhep fit must converge, and its ``-2 ln L``, evaluated with **pyhf's own
logpdf** at diffhep's best fit, must be no higher than that of every reference, evaluated
the same way:

- pyhf's scipy fit from pyhf's suggested start (tolerance 1e-12, re-seated at 1e-10);
- pyhf's MINUIT fit (slow run; finite differences, of pyhf's jax logpdf there);
- the multi-start reference (:func:`multi_start`): scipy L-BFGS-B from the suggested start
  and 19 random ones, in curvature-scaled coordinates, by successive halving.

Where pyhf's fit is at least as good, the two therefore agree. A reference's point counts
wherever it stopped (also a failed fit's last point: every point of the domain bounds the
minimum from above), once checked to be in the domain (bounds, fixed parameters) with a
finite ``-2 ln L``. A reference that has no such point is no reference; a fit for which
every reference fails is reported as a skip (pytest counts them), never as a pass.

Tolerance: 1e-6 relative plus an absolute part for the rounding noise of pyhf's logpdf,
which adds terms of size ``aux log aux`` (~3e13 for a shapesys with tau = 1e12): 1e-6 plus
1e-14 times the sum of those terms' magnitudes.

Cost (2-core machine shared with other sessions, load ~18): this module's default run
(30 workspaces and 5 small tests) took 73.9 s user + 2.8 s sys: ~10-15 CPU-s per model
structure (diffhep's fits and the search compile once per structure, shared by its draws
through ``with_yields``) and ~1-2 CPU-s per workspace. The 20-start reference cost 58-86
CPU-s per small workspace before (raw-coordinate L-BFGS-B, OpenBLAS threads spinning) and
0.6-0.9 s now; on a 205-parameter workspace 125 s before, 22 s now (and there the old
one's best was ~2000x the minimum's -2lnL).
"""

from __future__ import annotations

import functools
import sys
import warnings
import zlib

import numpy as np
import pytest

from adversarial import features, generate
from oracle import one_blas_thread, optimizer, pyhf_numpy
from specs import YIELD_TEMPLATES

jax = pytest.importorskip("jax")
pyhf = pytest.importorskip("pyhf")

import jax.numpy as jnp  # noqa: E402

import diffhep  # noqa: E402
from diffhep.stats.fit import poi_index  # noqa: E402
from diffhep.stats.hypotest import _fits  # noqa: E402

N_DEFAULT = 30
N_SLOW = 500
MINUIT_CALLS = 20000  # pyhf's MINUIT fits of the slow sweep (finite differences)
N_STARTS = 20  # starts of the multi-start reference (suggested init + 19 random)

_diffhep_fits = jax.jit(
    lambda model, data, values, free, init, lower, upper, fixed: _fits(
        model, data, values, free, init, lower, upper, fixed, 1e-12, 200
    )
)


def _twice_nll(model, data, x) -> float:
    v = -2.0 * float(model.logpdf(pyhf.tensorlib.astensor(x), data)[0])
    return v if np.isfinite(v) else np.inf


def _feasible(x, start, bounds, fixed) -> bool:
    """``x`` is a point of the fit's domain: within the bounds, fixed parameters at their
    values (a reference point elsewhere would prove nothing about diffhep's minimum)."""
    x = np.asarray(x, float)
    if x.shape != start.shape or not np.all(np.isfinite(x)):
        return False
    slack = 1e-9 * (1.0 + np.abs(bounds))
    inside = np.all(x >= bounds[:, 0] - slack[:, 0]) and np.all(x <= bounds[:, 1] + slack[:, 1])
    return bool(inside and np.allclose(x[fixed], start[fixed], rtol=1e-12, atol=1e-12))


def _pyhf_fit_point(
    model, data, init, fixed, poi_value, name, maxiter=None, backend="numpy", do_grad=None
):
    """Where pyhf's own fit with optimiser ``name`` (``scipy``, ``scipy-loose``, ``minuit``;
    pyhf's suggested start; ``model`` and ``data`` of pyhf's ``backend``) ends: its best
    fit, or, if it raises ``FailedMinimization``, the point it stopped at (any point of the
    domain bounds the minimum from above). None if it has no point. ``do_grad``: pyhf's
    own argument (False: finite differences also on the jax backend)."""
    opt = optimizer(name)
    if maxiter is not None:
        opt.maxiter = maxiter
    with pyhf_numpy(opt, backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if poi_value is None:
                return pyhf.infer.mle.fit(
                    data, model, init_pars=init, fixed_params=fixed, do_grad=do_grad
                )
            return pyhf.infer.mle.fixed_poi_fit(
                poi_value, data, model, init_pars=init, fixed_params=fixed, do_grad=do_grad
            )
        except pyhf.exceptions.FailedMinimization as err:
            return getattr(err.result, "x", None)
        except Exception:
            return None


@jax.jit
def _search_value_and_grad(model, data, x):
    return jax.value_and_grad(lambda p: -2.0 * model.logpdf(p, data))(x)


@jax.jit
def _search_curvature(model, data, x):
    """The diagonal of the Hessian of ``-2 ln L`` at ``x`` (forward over reverse)."""
    grad = jax.grad(lambda p: -2.0 * model.logpdf(p, data))
    return jax.vmap(lambda e: jnp.vdot(e, jax.jvp(grad, (x,), (e,))[1]))(jnp.eye(x.size))


def _lbfgsb_round(model, data, x0, bounds, free, maxiter):
    """One scipy L-BFGS-B run from ``x0`` in coordinates scaled by the curvature at ``x0``
    (``x = x0 + z / sqrt(H_ii)``: a shapesys gamma with tau = 1e12 and a free normalisation
    of a 1e-6 yield become steps of the same size). Returns ``(-2 ln L, x, evaluations)``."""
    from scipy.optimize import minimize

    lo, hi = bounds[:, 0][free], bounds[:, 1][free]
    h = np.asarray(_search_curvature(model, data, jnp.asarray(x0)), float)[free]
    h = np.where(np.isfinite(h), h, 1.0)
    scale = np.minimum(1.0 / np.sqrt(np.maximum(h, 1e-12)), hi - lo)
    base = x0.copy()

    def point(z):
        x = base.copy()
        x[free] = np.clip(x0[free] + z * scale, lo, hi)
        return x

    def fun(z):
        v, g = _search_value_and_grad(model, data, jnp.asarray(point(z)))
        v, g = float(v), np.asarray(g, float)[free] * scale
        if not (np.isfinite(v) and np.all(np.isfinite(g))):
            return 1e300, np.zeros_like(z)
        return v, g

    z_bounds = list(zip((lo - x0[free]) / scale, (hi - x0[free]) / scale, strict=True))
    options = {"maxiter": maxiter, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-11}
    r = minimize(fun, np.zeros(free.sum()), jac=True, method="L-BFGS-B", bounds=z_bounds,
                 options=options)  # fmt: skip
    x = point(r.x)
    v = float(_search_value_and_grad(model, data, jnp.asarray(x))[0])
    return (v if np.isfinite(v) else np.inf), x, int(r.nfev)


def _random_start(rng, init, bounds, fixed):
    """Uniform within +-min(1, a quarter of the bound range) of the suggested init, clipped
    to the bounds (gammas kept 1e-6 above their lower bound): diffhep plays no part."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    width = np.minimum(1.0, (hi - lo) / 4.0)
    x = np.clip(init + rng.uniform(-1.0, 1.0, init.size) * width, lo + 1e-6, hi)
    return np.where(fixed, init, x)


# successive halving: (starts kept, L-BFGS-B iterations) per stage; the last stage repeats
# (re-scaled at each round's start) until a round gains less than 1e-9
STAGES = ((None, 25), (5, 50), (2, 500))
MAX_POLISH_ROUNDS = 8


def multi_start(model, data, start, bounds, fixed, rng, n_starts=N_STARTS):
    """The multi-start reference: scipy L-BFGS-B (curvature-scaled, see
    :func:`_lbfgsb_round`) from pyhf's suggested init and ``n_starts - 1`` random starts
    (:func:`_random_start`); all are run for 25 iterations, the best 5 for 50 more, the best
    2 to convergence (rounds of 500 iterations, re-scaled, until a round gains < 1e-9).

    The search minimises diffhep's ``-2 ln L`` (one compilation per model structure,
    shared by all draws; pyhf's jax backend would compile per workspace); the points it
    returns are judged with pyhf's logpdf by the caller, so the search function only guides.

    Returns:
        ``(points, evaluations)``: every start's final point (best first) and the number
        of function evaluations.
    """
    free = ~fixed
    if not free.any():
        return [start], 0
    starts = [start] + [_random_start(rng, start, bounds, fixed) for _ in range(n_starts - 1)]
    runs = [(np.inf, x) for x in starts]
    nfev = 0
    for keep, maxiter in STAGES:
        order = sorted(range(len(runs)), key=lambda i: runs[i][0])
        chosen = order if keep is None else order[:keep]
        for i in chosen:
            value, x = runs[i]
            for _ in range(1 if keep is None or maxiter < 500 else MAX_POLISH_ROUNDS):
                new, x_new, n = _lbfgsb_round(model, data, x, bounds, free, maxiter)
                nfev += n
                gain = value - new
                if new < value:
                    value, x = new, x_new
                if not gain > 1e-9 * max(1.0, abs(new)):
                    break
            runs[i] = (value, x)
    runs.sort(key=lambda r: r[0])
    return [x for _, x in runs], nfev


class Outcome:
    """What a set of draws found: ``problems`` (each a failed check, named), ``unchecked``
    (fits for which every reference form failed: counted, not passed), ``fits`` (fits
    checked), ``nfev`` (multi-start evaluations) and ``values`` (per fit: its name,
    diffhep's ``-2 ln L`` and each reference's, all from pyhf's logpdf)."""

    def __init__(self):
        self.problems, self.unchecked, self.fits, self.nfev = [], [], 0, 0
        self.values = []

    def __iadd__(self, other):
        self.values += other.values
        self.problems += other.problems
        self.unchecked += other.unchecked
        self.fits += other.fits
        self.nfev += other.nfev
        return self


@functools.cache
def _base_model(seed, small):
    """The diffhep model of draw 0 of structure ``seed``: the other draws are this model
    with their templates (``with_yields``), so they share its compiled fits and search."""
    return diffhep.Workspace(generate(seed, small, values_seed=0)).model()


def check_draw(seed, small, draw, n_starts=N_STARTS, minuit_calls=None, scipy_backend="numpy"):
    """Check diffhep's fits on draw ``draw`` of structure ``seed`` (an :class:`Outcome`).

    ``minuit_calls``: MINUIT's call limit (0: no MINUIT reference; None: pyhf's default).
    ``scipy_backend``: pyhf's backend for its scipy fit, ``"jax"`` for large models
    (exact gradients: 2-4 s for the three fits of a 223-parameter model, where numpy's
    finite differences cost minutes) and for its MINUIT fit (still finite differences, of the
    jitted logpdf); the -2lnL of every point is pyhf's numpy logpdf."""
    spec = generate(seed, small, values_seed=draw)
    fresh = diffhep.Workspace(spec).model()
    model = _base_model(seed, small).with_yields(**{t: getattr(fresh, t) for t in YIELD_TEMPLATES})
    with one_blas_thread():  # scipy's optimisers on tiny vectors (see oracle.one_blas_thread)
        return _check_one(f"seed {seed}/{draw}", spec, model, n_starts, minuit_calls, scipy_backend)


def check_workspace(seed, small, draws=1, **kwargs) -> Outcome:
    """:func:`check_draw` for draws 0 .. ``draws`` - 1 of structure ``seed``."""
    out = Outcome()
    for draw in range(draws):
        out += check_draw(seed, small, draw, **kwargs)
    return out


def _pyhf_problem(spec):
    """pyhf's model of ``spec`` (numpy backend), its data, and its suggested init, bounds
    and fixed mask (the fits' domain: every fit, reference and stored point uses these)."""
    with pyhf_numpy():
        pmodel = pyhf.Workspace(spec).model()
        pdata = pyhf.tensorlib.astensor(pyhf.Workspace(spec).data(pmodel))
    cfg = pmodel.config
    init = np.asarray(cfg.suggested_init(), float)
    bounds = np.asarray(cfg.suggested_bounds(), float)
    fixed = np.asarray(cfg.suggested_fixed(), bool)
    return pmodel, pdata, init, bounds, fixed


def _noise(cfg, data_np) -> float:
    """The rounding noise of pyhf's logpdf on these data (see the module's docstring)."""
    aux = data_np[cfg.nmaindata :]
    main = data_np[: cfg.nmaindata]
    scale = np.sum(np.abs(main) * (np.abs(np.log(np.maximum(main, 1.0))) + 1.0))
    scale += np.sum(np.abs(aux) * (np.abs(np.log(np.maximum(np.abs(aux), 1.0))) + 1.0))
    return 1e-14 * scale


def _check_one(name, spec, model, n_starts, minuit_calls, scipy_backend) -> Outcome:
    pmodel, pdata, init, bounds, fixed = _pyhf_problem(spec)
    cfg = pmodel.config
    data_np = np.asarray(pdata, float)
    with pyhf_numpy():
        at_init = _twice_nll(pmodel, pdata, init.tolist())
    assert list(model.config.par_order) == list(cfg.par_order)
    dd = jnp.asarray(data_np)
    noise = _noise(cfg, data_np)
    # the model with these templates is the spec's: same -2 ln L as pyhf's at the start
    ours_init = float(_search_value_and_grad(model, dd, jnp.asarray(init))[0])
    assert ours_init == pytest.approx(at_init, rel=1e-9, abs=1e-6 + noise), name

    poi = cfg.poi_index
    poi_values = [None, 0.0, 1.0]
    res = _diffhep_fits(
        model,
        dd,
        jnp.asarray([0.0 if v is None else v for v in poi_values]),
        jnp.asarray([v is None for v in poi_values]),
        jnp.asarray(init),
        jnp.asarray(bounds[:, 0]),
        jnp.asarray(bounds[:, 1]),
        jnp.asarray(fixed),
    )
    pyhf_models = {"numpy": (pmodel, pdata)}
    if scipy_backend != "numpy":
        with pyhf_numpy(None, scipy_backend):
            other = pyhf.Workspace(spec).model()
            pyhf_models[scipy_backend] = (other, pyhf.tensorlib.astensor(data_np.tolist()))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = Outcome()
    free_fit, fixed_poi_points = None, []  # (what, diffhep's -2lnL); (source, -2lnL, point)
    for i, mu in enumerate(poi_values):
        what = f"{name} ({cfg.npars} pars), {'free fit' if mu is None else f'mu = {mu}'}"
        out.fits += 1
        start, fx = init.copy(), fixed.copy()
        if mu is not None:
            start[poi], fx[poi] = mu, True
        x = np.asarray(res.bestfit[i], float)
        converged = bool(res.converged[i])
        if not converged:
            out.problems.append(f"{what}: diffhep did not converge (status {int(res.status[i])})")

        def pyhf_point(opt, calls=None, backend="numpy", start=start, fx=fx, mu=mu, grad=None):
            m, d = pyhf_models[backend]
            return _pyhf_fit_point(m, d, start.tolist(), fx.tolist(), mu, opt, calls, backend, grad)

        points = {"pyhf scipy": [pyhf_point("scipy", None, scipy_backend)], "pyhf minuit": []}
        if points["pyhf scipy"][0] is None:  # re-seated: the looser tolerance
            points["pyhf scipy"] = [pyhf_point("scipy-loose", None, scipy_backend)]
        if minuit_calls != 0:
            # MINUIT's finite differences, as on pyhf's numpy backend, of pyhf's jitted jax
            # logpdf when there is one (~10x cheaper per call: 65 of a 222-parameter
            # draw's 214 CPU-s were MINUIT's calls of the numpy logpdf)
            points["pyhf minuit"] = [pyhf_point("minuit", minuit_calls, scipy_backend, grad=False)]
        try:
            points["multi-start"], nfev = multi_start(model, dd, start, bounds, fx, rng, n_starts)
            out.nfev += nfev
        except Exception:  # a reference that raises is no reference (the others may be)
            points["multi-start"] = []
        with pyhf_numpy():
            ours = (
                _twice_nll(pmodel, pdata, x.tolist()) if _feasible(x, start, bounds, fx) else np.inf
            )
            refs = {}
            for ref_name, pts in points.items():
                vals = [(_twice_nll(pmodel, pdata, np.asarray(p, float).tolist()), k)
                        for k, p in enumerate(pts)
                        if p is not None and _feasible(p, start, bounds, fx)]  # fmt: skip
                vals = [v for v in vals if np.isfinite(v[0])]
                if vals:
                    best = min(vals)
                    refs[ref_name] = (best[0], np.asarray(pts[best[1]], float))
        out.values.append((what, ours, {k: v for k, (v, _) in refs.items()}))
        if mu is None:
            free_fit = (what, ours)
        else:
            fixed_poi_points += [(f"{n} at mu = {mu}", v, q) for n, (v, q) in refs.items()]
            fixed_poi_points.append((f"diffhep at mu = {mu}", ours, x))
        if not refs:
            out.unchecked.append(f"{what}: every reference failed")
            continue
        if not np.isfinite(ours):
            out.problems.append(f"{what}: diffhep's best fit is outside the domain or its "
                                "-2lnL (pyhf) is not finite")  # fmt: skip
            continue
        for ref_name, (ref, p) in refs.items():
            tol = 1e-6 * abs(ref) + 1e-6 + noise
            if not ours <= ref + tol:
                # the search ran on diffhep's logpdf: where pyhf's value is lower, diffhep's
                # logpdf must agree (else the failure is the logpdf's, say so)
                mine = float(_search_value_and_grad(model, dd, jnp.asarray(p))[0])
                note = "" if abs(mine - ref) <= tol else f" (diffhep's logpdf there: {mine:.10g})"
                out.problems.append(
                    f"{what}: diffhep -2lnL {ours:.10g} > {ref_name} {ref:.10g} "
                    f"(tol {tol:.2g}){note}"
                )
    # every fixed-POI fit's point is a point of the free fit's domain: the free fit's minimum
    # is no higher (seed 1031 draw 0 before the flips: the free fit and all its references at
    # 43073.48, the mu = 0 fit's multi-start point at 41899.07, diffhep's at 43097.80)
    if free_fit is not None and np.isfinite(free_fit[1]):
        what, ours = free_fit
        for source, value, q in fixed_poi_points:
            tol = 1e-6 * abs(value) + 1e-6 + noise
            if np.isfinite(value) and _feasible(q, init, bounds, fixed) and not ours <= value + tol:
                out.problems.append(f"{what}: diffhep -2lnL {ours:.10g} > {source} {value:.10g}")
    return out


def test_generator_covers_the_issue():
    """The generated workspaces have what the issue asks for (every modifier type, wide tau
    and yields, 10-300 parameters)."""
    from adversarial import _npars

    types, npars, taus, yields = set(), [], [], []
    for seed in range(60):
        spec = generate(seed)
        npars.append(_npars(spec))
        for ch in spec["channels"]:
            for s in ch["samples"]:
                yields += s["data"]
                for m in s["modifiers"]:
                    types.add(m["type"])
                    if m["type"] == "shapesys":
                        taus += list((np.asarray(s["data"]) / np.asarray(m["data"])) ** 2)
    assert types == {"normfactor", "normsys", "histosys", "shapesys", "staterror", "shapefactor",
                     "lumi"}  # fmt: skip
    assert 10 <= min(npars) and max(npars) <= 300 and max(npars) > 150
    assert min(taus) < 0.1 and max(taus) > 1e10
    assert min(yields) < 1e-5 and max(yields) > 1e5


#: The default run: draws 0-9 of three small structures (1-3 channels, 1-6 bins, 2-4
#: samples, 13-14 parameters: the cheap end of the generator), chosen for what they hold
#: between them (test_default_run_covers_the_issue checks it): every modifier type,
#: shapesys tau from 1e-2 to 1e11 and more, staterror on bins with near-zero MC,
#: symmetrised histosys and same-side normsys coupled across samples (bimodal profiles).
DEFAULT_STRUCTURES = (31, 27, 57)
DEFAULT_DRAWS = 10

#: Draws of the default run on which diffhep's fits are known to be worse than the
#: reference: strict xfails, so a fix shows up as XPASS. (Was: (31, 4), two minima, the fits
#: in the worse one; found since the restart from the reflection through the start, issue 20.)
KNOWN_FAILURES: dict = {}

#: Draws outside the default structures on which diffhep's fits were worse than the
#: reference (issue 20), checked like the default run: small structure 0 draw 1, whose mu = 0
#: fit ended at -2lnL 2692.51 against the multi-start's 2470.43 (several minima with hs0, hs1,
#: ns0 at their bounds: found from the reflection through the start (2631.37), then the
#: probe/mirror restart from there).
REGRESSIONS = ((0, 1),)


def _default_cases():
    for seed in DEFAULT_STRUCTURES:
        for draw in range(DEFAULT_DRAWS):
            reason = KNOWN_FAILURES.get((seed, draw))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(seed, draw, id=f"s{seed}-d{draw}", marks=marks)
    for seed, draw in REGRESSIONS:
        yield pytest.param(seed, draw, id=f"s{seed}-d{draw}")


def _assert_holds(out: Outcome):
    assert not out.problems, "\n".join(out.problems)
    if out.unchecked:  # counted as skips in pytest's summary, never passed silently
        pytest.skip(f"{len(out.unchecked)} of {out.fits} fits unchecked: "
                    + "; ".join(out.unchecked))  # fmt: skip


def test_default_run_covers_the_issue():
    """The default run's workspaces hold every kind of difficulty the generator draws."""
    feats = [features(generate(s, True, values_seed=d))
             for s in DEFAULT_STRUCTURES for d in range(DEFAULT_DRAWS)]  # fmt: skip
    assert len(feats) >= 30
    types = {"normfactor", "normsys", "histosys", "shapesys", "staterror", "shapefactor", "lumi"}
    assert set().union(*(f["types"] for f in feats)) == types
    taus = [t for f in feats for t in f["taus"]]
    assert min(taus) < 0.1 and max(taus) > 1e11
    for kind in ("near_zero_staterror", "symmetrised_histosys", "same_side_normsys", "coupled"):
        assert sum(f[kind] for f in feats) >= 10, kind


@pytest.mark.parametrize(("seed", "draw"), list(_default_cases()))
def test_adversarial_fits(seed, draw):
    """The free, mu = 0 and mu = 1 fits of one small adversarial workspace converge and
    are no worse than pyhf's scipy fit or the 20-start reference (module docstring)."""
    _assert_holds(check_draw(seed, True, draw, minuit_calls=0))


def test_the_oracle_catches_a_point_that_is_not_a_minimum(monkeypatch):
    """The check can fail: diffhep's fits replaced by the start point (claimed converged)
    are found worse than the references, for each of the three fits."""
    real = _diffhep_fits

    def at_start(model, data, values, free, init, *rest):
        res = real(model, data, values, free, init, *rest)
        poi = poi_index(model)
        start = [jnp.where(f, init, init.at[poi].set(v)) for v, f in zip(values, free, strict=True)]
        return res._replace(bestfit=jnp.stack(start))

    monkeypatch.setattr(sys.modules[__name__], "_diffhep_fits", at_start)
    out = check_draw(DEFAULT_STRUCTURES[0], True, 0, minuit_calls=0)
    assert out.fits == 3 and not out.unchecked
    assert {p.split(":")[0] for p in out.problems} == {v[0] for v in out.values}


def test_failing_references_are_counted_skips_not_passes(monkeypatch):
    """Every reference form failing (pyhf's fits without a point, the multi-start raising)
    leaves the fits unchecked: reported, and a skip in the test, never a pass."""

    def broken(*args, **kwargs):
        raise FloatingPointError("simulated reference failure")

    monkeypatch.setattr(sys.modules[__name__], "_pyhf_fit_point", lambda *a, **k: None)
    monkeypatch.setattr(sys.modules[__name__], "multi_start", broken)
    out = check_draw(DEFAULT_STRUCTURES[0], True, 0, minuit_calls=0)
    assert out.fits == 3 and len(out.unchecked) == 3 and not out.problems
    with pytest.raises(pytest.skip.Exception, match="3 of 3 fits unchecked"):
        _assert_holds(out)


def test_one_blas_thread_restores_the_thread_count():
    from oracle import _openblas_thread_setters

    setters = _openblas_thread_setters()
    before = [get() for get, _ in setters]
    with one_blas_thread():
        assert all(get() == 1 for get, _ in setters)
    assert [get() for get, _ in setters] == before


def test_the_oracle_keeps_pyhf_quiet_and_restores_its_log_level(caplog):
    """pyhf logs a failed MINUIT fit's whole result (30 of a 222-parameter sweep draw's 214
    CPU-s went into formatting it): inside ``pyhf_numpy`` its logs are off, after it the
    level is the one before."""
    import logging

    log = logging.getLogger("pyhf.optimize.mixins")
    before = logging.getLogger("pyhf").level
    with caplog.at_level(logging.DEBUG):
        with pyhf_numpy():
            log.error("inside")
        log.error("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]
    assert logging.getLogger("pyhf").level == before


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1000, 1000 + N_SLOW // 5))
def test_adversarial_fits_sweep(seed):
    """500 full-size adversarial workspaces (1-8 channels, up to 300 parameters): 100
    structures x 5 draws, with pyhf's MINUIT fit as a third reference. Select a sample
    with ``-k``, e.g. ``-m slow -k "sweep and (1000 or 1001)"``.

    Seed 1017 draw 0 (223 parameters) failed on main a093d25: its mu = 0 fit needed ~400-700
    Newton steps (limit 200) in a narrow valley of stat_5[5] and ss_5_4[5] (status 1); with
    the solver's log-coordinate candidate it converges in 114 (issue 20). There diffhep's
    point was 267 below the multi-start's best: at this size the references are far from
    exhaustive.

    Cost: 77 CPU-s for that draw (multi-start 34 s, pyhf 28 s, diffhep 7 s; with pyhf's
    numpy scipy fits and uncapped MINUIT it was 265 s). MINUIT capped at 20000 calls stops
    far from the minimum on such models (-2lnL +68560 there; uncapped: +0.2, ~200 s).
    Seed 1014 draw 4 (222 parameters, 2026-12-06, one core): 214 CPU-s with MINUIT's finite
    differences on pyhf's numpy logpdf (65 s) and pyhf's error log of each failed MINUIT
    fit formatted (30 s); 96 s with MINUIT on pyhf's jitted jax logpdf (the same finite
    differences and the same three MINUIT values to all digits) and the log silenced, of
    which 18 s compile diffhep's fits (once per structure when its draws run together)."""
    try:
        out = check_workspace(seed, False, draws=5, minuit_calls=MINUIT_CALLS, scipy_backend="jax")
    finally:  # pyhf's jax fits compile per model and keep it (static argument)
        jax.clear_caches()
    _assert_holds(out)


#: Slow-sweep draws (structure seed, draw 0, full size) whose mu = 0 fit ended in a worse
#: minimum than the multi-start reference before the flip restarts of ``fit_bounded`` (issue
#: 20): 1001 at -2lnL 20554.91 (ns1 = -5) against 20485.38 (ns1 = +3.59), 1014 at 14189.90
#: (hs1 = +0.80, shapesys gammas at their bound 10) against 12876.69 (hs1 = -5); 1031 (after
#: the first, single flip, of the farthest parameter, hs2 at its bound -5) at 43097.80
#: (ns1 = +0.69) against 41899.07 (ns1 = -1.42). The
#: reference points (tests/data/adversarial_minima.json) are the multi-start's best points
#: (:func:`multi_start`, scipy L-BFGS-B from 20 starts), judged here with pyhf's logpdf.
MINIMA_FILE = "adversarial_minima.json"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1001, 1014, 1031])
def test_sweep_minima_found(seed):
    """diffhep's mu = 0 fit of these draws is no worse than the stored multi-start point,
    both evaluated with pyhf's logpdf (without re-running the 20-start search: ~20 s each)."""
    import json
    from pathlib import Path

    ref = json.loads((Path(__file__).parent / "data" / MINIMA_FILE).read_text())[str(seed)]
    pmodel, pdata, init, bounds, fixed = _pyhf_problem(generate(seed, False, values_seed=0))
    start, fx = init.copy(), fixed.copy()
    start[pmodel.config.poi_index], fx[pmodel.config.poi_index] = ref["mu"], True
    point = np.asarray(ref["point"], float)
    assert _feasible(point, start, bounds, fx)
    with pyhf_numpy():
        at_ref = _twice_nll(pmodel, pdata, point.tolist())
    assert at_ref == pytest.approx(ref["twice_nll"], rel=1e-9)  # the reference is what it was
    model = _base_model(seed, False)
    res = _diffhep_fits(
        model,
        jnp.asarray(np.asarray(pdata, float)),
        jnp.asarray([ref["mu"]]),
        jnp.asarray([False]),
        jnp.asarray(init),
        jnp.asarray(bounds[:, 0]),
        jnp.asarray(bounds[:, 1]),
        jnp.asarray(fixed),
    )
    assert bool(res.converged[0]), int(res.status[0])
    x = np.asarray(res.bestfit[0], float)
    with pyhf_numpy():
        assert _feasible(x, start, bounds, fx)
        ours = _twice_nll(pmodel, pdata, x.tolist())
    assert ours <= at_ref + 1e-6 * abs(at_ref), (ours, at_ref)


#: Slow-sweep draws that failed (issue 20), with the multi-start reference's -2lnL (pyhf's
#: logpdf at its best point, tests/oracle: 20 starts) of the free, mu = 0 and mu = 1 fits.
#:
#: - 1035/4 (201 parameters): products of free factors (shapefactor sf_0 x the gammas of its
#:   bins x normsys ns1) make -log L indefinite, the x-space Newton steps were cut 2^-3 to
#:   2^-15 and all three fits hit the 200-step limit (free fit at 2567.95); the
#:   log-coordinate candidate, tried at every step size near a minimum, converges
#:   (solver._run).
#: - 1040/4 (210 parameters), mu = 1: the fit from the start follows a long valley in which
#:   the free normalisation k_bkg falls from 7.8 to 2.0 while the gammas of many bins
#:   (ss_0_7[2], stat_0[2], ss_2_5[4], ...) compensate: the Hessian's lowest scaled
#:   eigenvalue along it is 1e-6 to 1e-5 of the largest, sometimes negative, and Newton's
#:   progress is linear (~0.01-0.2 per step); it needs ~240 steps and stopped at the limit
#:   (status 1, 3346.37). Neither Levenberg-Marquardt damping of the held step nor
#:   extrapolated (2x, 4x) steps converged within 200 steps (3346.34, 3346.23); the search
#:   now continues a best fit that ran out of steps from where it stopped
#:   (restarts._CONTINUATIONS): converged, 3346.207 (reference 3346.211).
#: - 1048/0 (277 parameters), mu = 1: two minima in the normsys ns2 (-2.11 and +2.46, with
#:   ns0 -1.24 / -0.31 and ns1 0.63 / 0.35 following); the fit from the start ends at -2.11
#:   (3647.13), the probe/mirror and reflection restarts at 3956-4216. The best fit is not
#:   strained (deviance 907 on 298 data, gate 1192), so no flip ran; the flip of ns2 alone
#:   reaches 3642.38 (the multi-start: 3642.75; the free fit 3642.20). Flips now also run
#:   for histosys/normsys parameters farther than 1 from the start that may have a mirror
#:   minimum (ns2's response is even) (restarts._restarts).
#: - 1015/1 (mu = 1) and 1059/1 (free fit): a second minimum on the other side of a
#:   parameter near its start whose response is strongly even (ns0: hi and lo below 1 in
#:   several samples; hs1: both variations below the nominal), the fits ended at ns0 = -0.67
#:   (2313.653 against 2312.362 at +0.84) and hs1 = +0.245 (2223.781 against 2222.510 at
#:   -0.342): within +-1 of the start and not strained, so no flip ran. Such a parameter is
#:   now flipped in every fit (multimodal.even_size).
#: - 1078/4 (mu = 0): the same, hs1 (even size 449) at +0.327 (5001.909); its flip to -1
#:   returns there; the flip to its mirror image through the vertex of its response
#:   (multimodal.even_vertex: -0.035), -0.397, reaches -0.438 (4993.986, reference 4993.983).
#: - 1077/3 (mu = 0): shapefactors of several samples in the same bins (degenerate) jump
#:   between their bounds 0 and 10; the fit needs ~940 Newton steps and stopped after its two
#:   continuations (status 1, 4633.62); every restart stopped too. The search now continues
#:   a fit while its continuations gain (restarts._MAX_CONTINUATIONS): converged, 4627.39.
#: - 1098/2 (mu = 1, strained: deviance 1287 on 154 data): the normfactor k_bkg ends at its
#:   bound 0 (2435.31), where no histosys/normsys flip nor random restart moves it; its flip
#:   to 2 reaches k_bkg = 10 (2409.04): normfactors are now flipped while the fit is strained.
#:
#: Within tolerance but not the lowest minimum until 2026-12-06: 1034/4's fits ended 0.45-0.81
#: above the multi-start (tolerance 1.11); real, not rounding: at mu = 0 the noise-free
#: objective differed by the same 0.81 (126.637 vs 125.827). A second minimum in the histosys
#: hs0 (-0.60 vs +0.54, a barrier of ~5500 between them on the straight line; hs0 alone moved
#: costs +242), both within +-1 of the start and the fit not strained. hs0's response is
#: strongly even (even size 148, vertex -0.047: the mirror image of +0.54 is -0.63), and with
#: the flips of such parameters the fits now end at 2456.097 (free; multi-start 2456.092),
#: 2571.711 and 2456.578 (mu = 0 and 1; multi-start 2571.713 and 2456.581).
#:
#: The free fit's reference is the lowest of the three (a fixed-POI point is in its domain).
SWEEP_REFERENCES = {
    (1035, 4): (2546.132857, 2546.152590, 2546.153977),
    (1040, 4): (3342.475695, 3434.233453, 3346.211466),
    (1048, 0): (3646.870126, 4216.303310, 3642.747588),
    (1015, 1): (2311.416340, 2412.478667, 2312.362035),
    (1059, 1): (2222.509824, 2309.311631, 2241.393915),
    (1078, 4): (2836.098851, 4993.982756, 2837.333330),
    (1077, 3): (2604.470204, 4667.601450, 2604.486038),
    (1098, 2): (2404.740699, 2436.891834, 2409.037468),
}


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "draw"), list(SWEEP_REFERENCES))
def test_sweep_draw_fits_reach_the_reference(seed, draw):
    """The three fits converge and are no higher than the multi-start reference (both from
    pyhf's logpdf; without re-running the 20-start search). Cost ~15-25 CPU-s (compile).
    Each draw failed before its fix (see :data:`SWEEP_REFERENCES`)."""
    spec = generate(seed, False, values_seed=draw)
    pmodel, pdata, init, bounds, fixed = _pyhf_problem(spec)
    fresh = diffhep.Workspace(spec).model()
    model = _base_model(seed, False).with_yields(**{t: getattr(fresh, t) for t in YIELD_TEMPLATES})
    res = _diffhep_fits(
        model,
        jnp.asarray(np.asarray(pdata, float)),
        jnp.asarray([0.0, 0.0, 1.0]),
        jnp.asarray([True, False, False]),
        jnp.asarray(init),
        jnp.asarray(bounds[:, 0]),
        jnp.asarray(bounds[:, 1]),
        jnp.asarray(fixed),
    )
    noise = _noise(pmodel.config, np.asarray(pdata, float))  # the sweep's tolerance
    refs = SWEEP_REFERENCES[(seed, draw)]
    for k, ref in enumerate((min(refs), *refs[1:])):
        assert bool(res.converged[k]), (k, int(res.status[k]), int(res.n_steps[k]))
        with pyhf_numpy():
            ours = _twice_nll(pmodel, pdata, np.asarray(res.bestfit[k], float).tolist())
        assert ours <= ref + 1e-6 * abs(ref) + 1e-6 + noise, (k, ours, ref, noise)


#: The slow sweep's references, stored: per draw ``"seed/draw"`` and fit (``free fit``,
#: ``mu = 0.0``, ``mu = 1.0``), the ``-2 ln L`` (pyhf's numpy logpdf) of the best point of each
#: reference (pyhf scipy, pyhf MINUIT, the 20-start search), as :func:`check_draw` found them.
#: They do not depend on diffhep, so a solver change is re-checked on all stored draws at
#: the cost of diffhep's own fits (~1-10 CPU-s per draw instead of 30-80 with the oracle).
#: Written by ``tests/sweep_references.py`` (which also logs diffhep's values at the time).
SWEEP_STORE = "adversarial_sweep_references.json"


def _stored_references() -> dict:
    import json
    from pathlib import Path

    path = Path(__file__).parent / "data" / SWEEP_STORE
    return json.loads(path.read_text())["draws"] if path.exists() else {}


def check_against_stored(seed: int, draw: int, refs: dict, small: bool = False) -> Outcome:
    """diffhep's three fits of sweep draw ``seed/draw`` against the stored references
    ``refs`` (``{fit: {reference: -2lnL}}``), with :func:`_check_one`'s tolerance and
    checks: converged, in the domain, no higher than any reference, and the free fit no
    higher than any fixed-POI value (mu = 0 and 1 lie inside the POI's bounds)."""
    spec = generate(seed, small, values_seed=draw)
    pmodel, pdata, init, bounds, fixed = _pyhf_problem(spec)
    fresh = diffhep.Workspace(spec).model()
    model = _base_model(seed, small).with_yields(**{t: getattr(fresh, t) for t in YIELD_TEMPLATES})
    data_np = np.asarray(pdata, float)
    noise = _noise(pmodel.config, data_np)
    poi = pmodel.config.poi_index
    res = _diffhep_fits(
        model,
        jnp.asarray(data_np),
        jnp.asarray([0.0, 0.0, 1.0]),
        jnp.asarray([True, False, False]),
        jnp.asarray(init),
        jnp.asarray(bounds[:, 0]),
        jnp.asarray(bounds[:, 1]),
        jnp.asarray(fixed),
    )
    out, values = Outcome(), {}
    for i, (fit, mu) in enumerate([("free fit", None), ("mu = 0.0", 0.0), ("mu = 1.0", 1.0)]):
        what = f"seed {seed}/{draw} ({pmodel.config.npars} pars), {fit}"
        out.fits += 1
        start, fx = init.copy(), fixed.copy()
        if mu is not None:
            assert bounds[poi, 0] <= mu <= bounds[poi, 1]
            start[poi], fx[poi] = mu, True
        x = np.asarray(res.bestfit[i], float)
        if not bool(res.converged[i]):
            out.problems.append(f"{what}: diffhep did not converge (status {int(res.status[i])})")
        with pyhf_numpy():
            ours = (
                _twice_nll(pmodel, pdata, x.tolist()) if _feasible(x, start, bounds, fx) else np.inf
            )
        values[fit] = ours
        stored = {k: v for k, v in refs.get(fit, {}).items() if np.isfinite(v)}
        out.values.append((what, ours, stored))
        if not stored:
            out.unchecked.append(f"{what}: no stored reference")
            continue
        if not np.isfinite(ours):
            out.problems.append(f"{what}: diffhep's best fit is outside the domain")
            continue
        for ref_name, ref in stored.items():
            tol = 1e-6 * abs(ref) + 1e-6 + noise
            if not ours <= ref + tol:
                out.problems.append(f"{what}: diffhep -2lnL {ours:.10g} > {ref_name} {ref:.10g}")
    lowest_fixed = min(
        [values[f] for f in ("mu = 0.0", "mu = 1.0")]
        + [v for f in ("mu = 0.0", "mu = 1.0") for v in refs.get(f, {}).values()]
    )
    if np.isfinite(values["free fit"]) and np.isfinite(lowest_fixed):
        tol = 1e-6 * abs(lowest_fixed) + 1e-6 + noise
        if not values["free fit"] <= lowest_fixed + tol:
            out.problems.append(
                f"seed {seed}/{draw}: free fit {values['free fit']:.10g} > a fixed-POI "
                f"value {lowest_fixed:.10g}"
            )
    return out


def _stored_seeds():
    return sorted({int(k.split("/")[0]) for k in _stored_references()})


@pytest.mark.slow
@pytest.mark.parametrize("seed", _stored_seeds())
def test_adversarial_fits_against_stored_references(seed):
    """The slow sweep (:func:`test_adversarial_fits_sweep`) re-checked from its stored
    references (:data:`SWEEP_STORE`): every stored draw of structure ``seed``. Select with
    ``-m slow -k stored_references``; ~1 CPU-hour for 500 draws (the full sweep: ~6)."""
    refs = _stored_references()
    out = Outcome()
    try:
        for key in sorted(k for k in refs if int(k.split("/")[0]) == seed):
            out += check_against_stored(seed, int(key.split("/")[1]), refs[key])
    finally:
        jax.clear_caches()
    _assert_holds(out)


@pytest.mark.slow
def test_stored_references_catch_a_fit_above_them():
    """The stored-reference check passes references at diffhep's own values and fails one
    just below them (a small default-run structure; its fits compile in ~10 s)."""
    seed = DEFAULT_STRUCTURES[0]
    first = check_against_stored(seed, 0, {}, small=True)
    assert len(first.unchecked) == 3 and not first.problems
    ours = {what.rsplit(", ", 1)[1]: value for what, value, _ in first.values}
    same = check_against_stored(seed, 0, {f: {"ref": v} for f, v in ours.items()}, small=True)
    assert not same.problems and not same.unchecked
    lower = {f: {"ref": v - 1e-3 * abs(v) - 1.0} for f, v in ours.items()}
    problems = check_against_stored(seed, 0, lower, small=True).problems
    assert sum("diffhep -2lnL" in p for p in problems) == 3, problems
