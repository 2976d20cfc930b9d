"""Fits where expected yields reach zero, and fits of bad data.

The model that breaks pyhf: a background bin whose nominal yield is 1e-8 and whose histosys
template moves it to 0.04 (up) and 0 (down). With pyhf's default code4p interpolation the
yield of that bin is negative for -1 < alpha < 0 (the polynomial undershoots) and below zero
for alpha < -1 (linear extrapolation of the 1e-8 down-shift). The signal hypothesis pulls
alpha far below -1, so the fixed-POI fit must cross that region. diffhep clips the Poisson
mean to ``POISSON_FLOOR`` there and reports it in ``n_clipped``; its results are checked
against an independent numpy/scipy implementation of the same likelihood (same floor, same
tangent continuation of ``n log(lam)`` below it), profiled from several starting points.
The observed counts are integers and the 1e-8 bin is empty, as in real data; pyhf's failure
is documented on the background-only Asimov data (1e-8 in that bin).
"""

from __future__ import annotations

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest
from scipy.optimize import minimize
from scipy.special import gammaln
from scipy.stats import norm

import diffhep
from diffhep.stats.model import POISSON_FLOOR
from test_fit import (
    _restore_pyhf_backend,  # noqa: F401  (autouse fixture: restore pyhf's backend)
    channel,
    fit_with,
    histosys,
    model_spec,
    normfactor,
    pyhf_backend,
    sample,
)

SIGNAL = np.array([15.0, 0.0, 8.0])
BKG = np.array([20.0, 1e-8, 10.0])
BKG_HI = np.array([23.0, 0.04, 11.5])
BKG_LO = np.array([17.0, 0.0, 8.5])
OBSERVED = [20.0, 0.0, 10.0, 0.0]  # observed counts (the 1e-8 bin is empty) + auxdatum
PYHF_ASIMOV = [*BKG.tolist(), 0.0]  # background-only Asimov data (alpha = 0): breaks pyhf

hypotest_jit = eqx.filter_jit(diffhep.stats.hypotest.hypotest)


def _spec():
    return model_spec(
        channel(
            "SR",
            sample("signal", SIGNAL, normfactor("mu")),
            sample("bkg", BKG, histosys("shape", BKG_LO, BKG_HI)),
        )
    )


@pytest.fixture(scope="module")
def model():
    m = diffhep.Model.from_spec(_spec())
    assert m.config.par_names == ["shape", "mu"]
    return m


# ------------------------------------------------------------------ independent reference
def _code4p(alpha, lo, nom, hi):
    """pyhf's code4p (additive), written out in numpy."""
    up, dn = hi - nom, nom - lo
    s, a = 0.5 * (up + dn), 0.0625 * (up - dn)
    if alpha > 1:
        return alpha * up
    if alpha < -1:
        return alpha * dn
    a2 = alpha * alpha
    return alpha * s + a2 * (a2 * (a2 * 3.0 - 10.0) + 15.0) * a


def reference_nll(alpha, mu, data):
    """-log L of the model in numpy: below POISSON_FLOOR, n log(lam) continues along its
    tangent at the floor (so the Poisson term is its own tangent there); unit Gaussian
    constraint on alpha (auxiliary datum data[-1]). A negative datum (Asimov data of a bin
    below zero) has no slope below the floor (the plain clip)."""
    lam = mu * SIGNAL + BKG + _code4p(alpha, BKG_LO, BKG, BKG_HI)
    n = np.asarray(data[:3], dtype=float)
    f = POISSON_FLOOR
    below = n * np.log(f) + np.maximum(n, 0) * (lam - f) / f
    log_term = np.where(lam > f, n * np.log(np.maximum(lam, f)), below)
    main = np.sum(lam - log_term + gammaln(n + 1.0))
    aux = data[-1]
    return main + 0.5 * (aux - alpha) ** 2 + 0.5 * np.log(2 * np.pi)


def reference_profile(data, mu=None):
    """Minimum of reference_nll over alpha in [-5, 5] (and mu in [0, 10] if ``mu`` is None),
    from several starting points, then polished; returns (nll, alpha, mu)."""
    best = None
    starts = [-4.0, -2.5, -1.5, -0.8, -0.3, 0.0, 0.4, 1.5, 3.0]
    for a0 in starts:
        for m0 in [0.0, 0.5, 2.0] if mu is None else [mu]:
            if mu is None:
                fun = lambda x: reference_nll(x[0], x[1], data)  # noqa: E731
                x0, bounds = [a0, m0], [(-5.0, 5.0), (0.0, 10.0)]
            else:
                fun = lambda x: reference_nll(x[0], mu, data)  # noqa: E731
                x0, bounds = [a0], [(-5.0, 5.0)]
            res = minimize(fun, x0, method="Nelder-Mead", bounds=bounds,
                           options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})  # fmt: skip
            res = minimize(fun, res.x, method="L-BFGS-B", bounds=bounds,
                           options={"ftol": 1e-15, "gtol": 1e-10})  # fmt: skip
            if best is None or res.fun < best.fun:
                best = res
    alpha = float(best.x[0])
    return float(best.fun), alpha, float(best.x[1]) if mu is None else mu


# ------------------------------------------------------------------ tests
def test_model_goes_negative_where_the_fit_has_to_pass(model):
    pmodel = pyhf.Model(_spec(), poi_name="mu")
    for alpha in (-1.5, -0.5, -0.2):
        lam = np.asarray(model.expected_actualdata(jnp.asarray([alpha, 0.0])))
        assert lam[1] < 0
        np.testing.assert_allclose(lam, pmodel.expected_actualdata([alpha, 0.0]), rtol=1e-12)
        assert int(model.n_clipped(jnp.asarray([alpha, 0.0]))) == 1
    assert int(model.n_clipped(jnp.asarray([0.0, 0.0]))) == 0


def test_fits_are_finite_converged_and_report_clipping(model):
    data = jnp.asarray(OBSERVED)
    free = fit_with(model, data)
    assert bool(free.converged), free.message
    assert np.all(np.isfinite(np.asarray(free.bestfit)))
    assert np.all(np.isfinite(np.asarray(free.uncertainty)))
    assert int(free.n_clipped) == int(model.n_clipped(free.bestfit))
    nll0, a0, mu0 = reference_profile(OBSERVED)
    assert float(free.twice_nll) == pytest.approx(2 * nll0, rel=0, abs=1e-7)
    np.testing.assert_allclose(np.asarray(free.bestfit), [a0, mu0], rtol=0, atol=1e-4)

    fixed = fit_with(model, data, poi_value=1.0)
    assert bool(fixed.converged), fixed.message
    assert np.isfinite(float(fixed.twice_nll))
    # the signal pulls alpha below -1, where the background bin is negative: clipped
    alpha = float(fixed.bestfit[0])
    assert alpha < -1.0
    assert int(fixed.n_clipped) == 1
    assert int(fixed.n_clipped) == int(model.n_clipped(fixed.bestfit))
    nll1, a1, _ = reference_profile(OBSERVED, mu=1.0)
    assert float(fixed.twice_nll) == pytest.approx(2 * nll1, rel=0, abs=1e-7)
    assert alpha == pytest.approx(a1, abs=1e-4)


def _asymptotic_cls(q, qA):
    """pyhf's q~_mu asymptotics (Cowan et al., eq. 66) in closed form: CLs observed and the
    expected band (-2 ... +2 sigma in pyhf's order)."""
    sq, sqA = np.sqrt(q), np.sqrt(qA)
    stat = sq - sqA if sq <= sqA else (q - qA) / (2 * sqA)
    cls_obs = norm.cdf(-(stat + sqA)) / norm.cdf(-stat)
    nsigma = np.array([2.0, 1.0, 0.0, -1.0, -2.0])
    return cls_obs, norm.cdf(-(nsigma + sqA)) / norm.cdf(-nsigma)


def test_expected_cls_is_tiny_and_matches_reference(model):
    data = jnp.asarray(OBSERVED)
    res = hypotest_jit(jnp.asarray(1.0), model, data)
    assert bool(res.converged)
    assert int(res.n_clipped) >= 1
    assert np.all(np.isfinite(np.asarray(res.cls_exp)))
    # the independent computation: q~_mu on the data, and on the Asimov data of the reference's
    # background-only fit (mu = 0, alpha profiled; the auxiliary datum at its alpha)
    nll_free, _, _ = reference_profile(OBSERVED)
    nll_fixed, _, _ = reference_profile(OBSERVED, mu=1.0)
    _, alpha0, _ = reference_profile(OBSERVED, mu=0.0)
    asimov = [*(BKG + _code4p(alpha0, BKG_LO, BKG, BKG_HI)).tolist(), alpha0]
    nll_free_a, _, _ = reference_profile(asimov)
    nll_fixed_a, _, _ = reference_profile(asimov, mu=1.0)
    q = 2.0 * (nll_fixed - nll_free)
    qA = 2.0 * (nll_fixed_a - nll_free_a)
    cls_obs, cls_exp = _asymptotic_cls(q, qA)
    assert float(res.teststat) == pytest.approx(q, rel=1e-6)
    assert float(res.teststat_asimov) == pytest.approx(qA, rel=1e-6)
    np.testing.assert_allclose(np.asarray(res.cls_exp), cls_exp, rtol=1e-4)
    np.testing.assert_allclose(float(res.cls_obs), cls_obs, rtol=1e-4)
    assert float(res.cls_exp[2]) < 5e-3 and float(res.cls_exp[0]) < 1e-4


def test_below_the_floor_the_log_term_continues_along_its_tangent(model):
    """A bin driven below the floor with events observed: the log-likelihood is the numpy
    reference (tangent of n log(lam) at the floor), finite, and falls steeply with the
    overshoot, so fits are pushed back to positive yields instead of resting on a plateau."""
    data = [20.0, 3.0, 10.0, 0.0]  # 3 events in the 1e-8 bin
    for alpha in (-1.5, -0.5):
        got = -float(model.logpdf(jnp.asarray([alpha, 1.0]), jnp.asarray(data)))
        assert got == pytest.approx(reference_nll(alpha, 1.0, data), rel=1e-12)
    lam = float(model.expected_actualdata(jnp.asarray([-0.5, 0.0]))[1])
    assert lam < -1e-4
    clipped_only = 3.0 * np.log(POISSON_FLOOR)  # what a plain clip would give the bin
    assert -reference_nll(-0.5, 0.0, data) < clipped_only - 1e5
    res = fit_with(model, jnp.asarray(data), poi_value=1.0)
    assert bool(res.converged) and int(res.n_clipped) == 0
    nll1, a1, _ = reference_profile(data, mu=1.0)
    assert float(res.twice_nll) == pytest.approx(2 * nll1, rel=0, abs=1e-7)
    assert float(res.bestfit[0]) == pytest.approx(a1, abs=1e-4)


def test_pyhf_scipy_fit_is_stuck_at_its_start_on_this_model(model):
    """Documents pyhf 0.7.6 (numpy, scipy SLSQP at tolerance 1e-12): its fixed-POI fit cannot
    leave the start (every step into alpha < 0 gives a NaN likelihood), ending far above the
    minimum (on the background-only Asimov data, 1e-8 in the bin)."""
    if pyhf.__version__ != "0.7.6":
        pytest.skip("documents pyhf 0.7.6")
    pmodel = pyhf.Model(_spec(), poi_name="mu")
    logging.disable(logging.ERROR)
    try:
        with pyhf_backend("scipy"):
            pars, tn = pyhf.infer.mle.fixed_poi_fit(
                1.0, PYHF_ASIMOV, pmodel, return_fitted_val=True
            )
    finally:
        logging.disable(logging.NOTSET)
    assert abs(float(pars[0])) < 1e-3  # alpha never moved
    # the minimum beyond alpha = -1 (where the bin is only 1e-8 below zero)
    nll1, _, _ = reference_profile(PYHF_ASIMOV, mu=1.0)
    assert float(tn) > 2 * nll1 + 1.0


@eqx.filter_jit
def _cls_exp_and_grad(nominal, model, data):
    def cls(nom):
        return diffhep.stats.hypotest.hypotest(1.0, model.with_yields(nominal=nom), data).cls_exp[2]

    return jax.value_and_grad(cls)(nominal)


def test_gradient_through_clipped_bins_matches_finite_differences(model):
    """CLs_exp and its gradient with respect to the yields are finite with a clipped bin,
    and equal central finite differences (the clipped bin stays clipped)."""
    data = jnp.asarray(OBSERVED)
    nominal = np.asarray(model.nominal)
    value, grad = _cls_exp_and_grad(jnp.asarray(nominal), model, data)
    grad = np.asarray(grad)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    for idx in [(0, 0), (0, 2), (1, 0), (1, 2)]:  # signal and background, unclipped bins
        h = 1e-5 * nominal[idx]
        up, down = nominal.copy(), nominal.copy()
        up[idx] += h
        down[idx] -= h
        fd = (
            float(_cls_exp_and_grad(jnp.asarray(up), model, data)[0])
            - float(_cls_exp_and_grad(jnp.asarray(down), model, data)[0])
        ) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=1e-4), idx


# ------------------------------------------------------------------ bad data
def test_fit_of_nan_data_reports_instead_of_raising(model):
    data = np.asarray(OBSERVED)
    data[0] = np.nan
    res = fit_with(model, jnp.asarray(data))
    assert int(res.status) != 0
    assert not bool(res.converged)
    assert "not finite" in res.message
    res = hypotest_jit(jnp.asarray(1.0), model, jnp.asarray(data))
    assert not bool(res.converged)


def test_fit_of_infinite_auxdata_reports_instead_of_raising(model):
    data = np.asarray(OBSERVED)
    data[-1] = np.inf
    res = fit_with(model, jnp.asarray(data))
    assert int(res.status) != 0
    assert "not finite" in res.message
