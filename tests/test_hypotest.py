"""Asymptotic hypothesis tests, test statistics and upper limits against pyhf 0.7.6.

pyhf runs on numpy/float64 with scipy's SLSQP at ``tolerance=1e-12`` (its default tolerance
moves CLs by up to 2.5e-3 on the real likelihoods). CLs observed and expected must agree to
1e-5 absolute. The model cases, pyhf helpers and the background pyhf worker for the real
sbottom likelihoods live in ``test_fit.py``.
"""

from __future__ import annotations

import copy
import itertools
from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest
from scipy.stats import norm

import diffhep
import oracle
from diffhep.stats.fit import DEFAULT_MAX_STEPS, DEFAULT_TOL, fit_defaults
from diffhep.stats.hypotest import _fits
from diffhep.stats.toys import _setup as _toys_setup
from diffhep.stats.toys import _toy_statistic, aux_centre
from diffhep.stats.workspace import builtin_example
from specs import histosys, normsys
from test_fit import (
    CASES,
    DEFAULT_CASES,
    REGIONS,
    SBOTTOM_POINTS,
    SWEEP_POINTS,
    TIGHTER_SLACK,
    WORKER,
    _restore_pyhf_backend,  # noqa: F401  (autouse fixture: restore pyhf's backend)
    channel,
    fit_jit,
    fit_with,
    hypotest_task,
    model_spec,
    normfactor,
    prefetch_pyhf_references,
    pyhf_backend,
    pyhf_hypotest,
    pyhf_tasks,
    sample,
    sbottom_models,
    small_models,
)

CLS_ATOL = 1e-5
hypotest_jit = eqx.filter_jit(diffhep.stats.hypotest.hypotest)
discovery_jit = eqx.filter_jit(diffhep.stats.hypotest.discovery)
stat_value_jit = eqx.filter_jit(diffhep.stats.hypotest.test_statistic)


# test statistics without the "tilde" need a POI that may go negative
WIDE_POI = (-5.0, 10.0)


@pytest.fixture(scope="module", autouse=True)
def _prefetch(request):
    prefetch_pyhf_references(request)


def _wide_bounds(model):
    b = [tuple(x) for x in model.config.bounds]
    b[model.config.poi_index] = WIDE_POI
    return b


def asymptotic_cls(q, qA, test_stat):
    """pyhf's asymptotic CLs (observed, expected band) from q and q_A."""
    sq, sqA = np.sqrt(max(q, 0.0)), np.sqrt(max(qA, 0.0))
    if test_stat == "qtilde" and sq > sqA:
        stat = (q - qA) / (2.0 * sqA)
    else:
        stat = sq - sqA
    nsigma = np.array([2.0, 1.0, 0.0, -1.0, -2.0])
    cls_obs = norm.cdf(-(stat + sqA)) / norm.cdf(-stat)
    return cls_obs, norm.cdf(-(nsigma + sqA)) / norm.cdf(-nsigma)


def _pyhf_twice_nll(pmodel, pars, data):
    with pyhf_backend("scipy"):
        return float(pyhf.infer.mle.twice_nll(np.asarray(pars), np.asarray(data), pmodel)[0])


MULTIMODAL_NLL = 1e-6  # distinct local minima: twice_nll apart by more than this ...
MULTIMODAL_PARS = 1e-2  # ... and parameters apart by more than this


def _spread_of_minima(dmodel, data, value, starts, bounds=None):
    """diffhep fits of one kind (POI fixed at ``value``, or free if ``None``) from several
    starting points: the spread of the converged twice_nll and the largest distance between
    the best-fit points. Both large = the likelihood has several local minima."""
    poi = dmodel.config.poi_index
    found = []
    for x0 in starts:
        init = np.array(x0, dtype=float)
        fixed = np.array(dmodel.config.fixed, dtype=bool)
        if value is not None:
            init[poi], fixed[poi] = value, True
        r = fit_jit(
            dmodel, jnp.asarray(data), init=jnp.asarray(init), fixed=jnp.asarray(fixed),
            bounds=bounds, uncertainties=False,
        )  # fmt: skip
        if bool(r.converged):
            found.append((float(r.twice_nll), np.asarray(r.bestfit)))
    if len(found) < 2:
        return 0.0, 0.0
    nll = [t for t, _ in found]
    dist = max(np.max(np.abs(a - b)) for (_, a), (_, b) in itertools.combinations(found, 2))
    return max(nll) - min(nll), dist


def likelihood_is_multimodal(res, ref, models, mu, bounds=None):
    """The four fits of the test statistics, on the observed data and on both Asimov datasets
    (pyhf's and diffhep's), started from pyhf's suggested init, from pyhf's solution and from
    diffhep's background-only fit (where diffhep's hypotest starts its Asimov fits): if one
    kind of fit converges to distinct local minima, the test statistics depend on the
    optimiser's path and pyhf's and diffhep's CLb may legitimately differ."""
    dmodel, ddata, _, pdata = models
    origin = fit_with(dmodel, ddata, poi_value=0.0, uncertainties=False).bestfit
    own_asimov = dmodel.expected_data(origin)
    init = dmodel.config.suggested_init()
    for name, data, value in [
        ("free_fit_to_data", pdata, None),
        ("fixed_poi_fit_to_data", pdata, mu),
        ("free_fit_to_asimov", ref["asimov_data"], None),
        ("fixed_poi_fit_to_asimov", ref["asimov_data"], mu),
        ("free_fit_to_asimov", own_asimov, None),
        ("fixed_poi_fit_to_asimov", own_asimov, mu),
    ]:
        starts = (init, ref["fits"][name], origin)
        dnll, dpar = _spread_of_minima(dmodel, data, value, starts, bounds)
        if dnll > MULTIMODAL_NLL and dpar > MULTIMODAL_PARS:
            return f"{name}: local minima {dnll:.2e} apart in twice_nll, {dpar:.2f} in parameters"
    return None


def _pyhf_twice_nll_or_inf(pmodel, pars, data):
    """pyhf's twice_nll, +inf where pyhf's likelihood is not finite (it fails there)."""
    t = _pyhf_twice_nll(pmodel, pars, data)
    return t if np.isfinite(t) else np.inf


def check_diffhep_minima_at_least_as_good(label, res, ref, models, mu, test_stat="qtilde",
                                          bounds=None):  # fmt: skip
    """When CLs differ from pyhf's (or pyhf's are NaN), diffhep's must rest on better fits.

    Every fit of the hypotest is compared through pyhf's own likelihood: diffhep's fits on
    the observed data, its background-only fit (which makes the Asimov data) and its fits on
    pyhf's Asimov data reach a twice_nll at most pyhf's (+1e-8; +inf where pyhf's likelihood
    is NaN), at least one strictly lower (unless pyhf's CLs are NaN). Then the test
    statistics are rebuilt from pyhf's twice_nll at diffhep's best-fit points (on the
    observed data and on diffhep's Asimov data) and must give diffhep's CLs: the numbers are
    pyhf's likelihood at better minima. Returns the largest gain in twice_nll."""
    dmodel, _, pmodel, pdata = models
    poi = dmodel.config.poi_index
    asimov = ref["asimov_data"]
    comparisons = [("asimov_pars", pdata, 0.0), ("free_fit_to_data", pdata, None),
                   ("fixed_poi_fit_to_data", pdata, mu), ("free_fit_to_asimov", asimov, None),
                   ("fixed_poi_fit_to_asimov", asimov, mu)]  # fmt: skip
    gain, fits = [], {}
    for name, data, value in comparisons:
        mine = fit_with(dmodel, data, poi_value=value, uncertainties=False, bounds=bounds)
        assert bool(mine.converged), (label, name, mine.message)
        fits[name] = mine
        theirs = _pyhf_twice_nll_or_inf(pmodel, ref["fits"][name], data)
        assert float(mine.twice_nll) <= theirs + TIGHTER_SLACK, (label, name)
        gain.append(theirs - float(mine.twice_nll))
    pyhf_failed = not np.all(np.isfinite([ref["cls_obs"], *ref["cls_exp"]]))
    if not pyhf_failed:  # (pyhf's CLs can be NaN with finite fits: sqrt of a negative q)
        assert max(gain) > 1e-9, (label, "pyhf and diffhep disagree but pyhf's fits are as good")

    bkg = fits["asimov_pars"]  # diffhep's background-only fit: its Asimov data
    own_asimov = np.asarray(dmodel.expected_data(bkg.bestfit))
    tn = {}
    origin = np.asarray(bkg.bestfit)  # diffhep starts its Asimov fits there
    rebuilt = [("free_fit_to_data", pdata, None, None),
               ("fixed_poi_fit_to_data", pdata, mu, None),
               ("free_fit_to_asimov", own_asimov, None, origin),
               ("fixed_poi_fit_to_asimov", own_asimov, mu, origin)]  # fmt: skip
    for name, data, value, start in rebuilt:
        if start is None:  # the fits on the observed data: done above
            mine = fits[name]
        else:
            mine = fit_with(dmodel, data, poi_value=value, uncertainties=False, bounds=bounds,
                            init=start)  # fmt: skip
            assert bool(mine.converged), (label, name, mine.message)
        t = _pyhf_twice_nll(pmodel, np.asarray(mine.bestfit), data)
        assert np.isfinite(t), (label, name, "pyhf's likelihood is not finite at diffhep's fit")
        np.testing.assert_allclose(float(mine.twice_nll), t, rtol=1e-9, err_msg=f"{label} {name}")
        tn[name] = (t, float(mine.bestfit[poi]))

    def stat(free, fixed):
        t = max(tn[fixed][0] - tn[free][0], 0.0)
        return 0.0 if tn[free][1] > mu else t

    cls_obs, cls_exp = asymptotic_cls(
        stat("free_fit_to_data", "fixed_poi_fit_to_data"),
        stat("free_fit_to_asimov", "fixed_poi_fit_to_asimov"),
        test_stat,
    )
    np.testing.assert_allclose(float(res.cls_obs), cls_obs, rtol=0, atol=CLS_ATOL)
    np.testing.assert_allclose(np.asarray(res.cls_exp), cls_exp, rtol=0, atol=CLS_ATOL)
    return max(gain)


def assert_hypotest_matches(label, res, ref, atol=CLS_ATOL, models=None, mu=1.0,
                            test_stat="qtilde", bounds=None):  # fmt: skip
    """CLs (observed, expected band, CLsb, CLb) within ``atol`` of pyhf's; if given the
    ``models`` (diffhep model, data, pyhf model, data), a disagreement is accepted when
    :func:`check_diffhep_minima_at_least_as_good` shows that diffhep's fits are better."""
    assert bool(res.converged), label
    assert int(res.n_clipped) == 0, label
    got = np.array([float(res.cls_obs), *np.asarray(res.cls_exp), float(res.clsb_obs),
                    float(res.clb_obs)])  # fmt: skip
    want = np.array([ref["cls_obs"], *ref["cls_exp"], ref["clsb_obs"], ref["clb_obs"]])
    differs = not np.all(np.abs(got - want) <= atol)  # NaN (pyhf failed) differs too
    if models is not None and differs:
        if np.all(np.abs(got[:6] - want[:6]) <= atol):
            why = likelihood_is_multimodal(res, ref, models, mu, bounds)
            if why is not None:
                # the quantities of the acceptance (CLs observed and expected) agree; CLsb
                # and CLb follow the local minimum each optimiser's path reaches
                diff = np.max(np.abs(got - want))
                print(f"{label}: CLsb/CLb differ from pyhf's by {diff:.2e}; {why}")
                return
        gain = check_diffhep_minima_at_least_as_good(label, res, ref, models, mu, test_stat,
                                                     bounds)  # fmt: skip
        # visible with -rP / -s
        print(
            f"{label}: CLs differ from pyhf's by {np.nanmax(np.abs(got - want)):.2e} "
            f"(pyhf NaN: {bool(np.isnan(want).any())}); diffhep's fits are lower by up to "
            f"{gain:.2e} in twice_nll, and pyhf's likelihood at them gives diffhep's CLs"
        )
        return
    np.testing.assert_allclose(
        float(res.cls_obs), ref["cls_obs"], rtol=0, atol=atol, err_msg=f"{label}: CLs obs"
    )
    np.testing.assert_allclose(
        np.asarray(res.cls_exp), ref["cls_exp"], rtol=0, atol=atol, err_msg=f"{label}: CLs exp"
    )
    np.testing.assert_allclose(
        float(res.clsb_obs), ref["clsb_obs"], rtol=0, atol=atol, err_msg=f"{label}: CLsb"
    )
    np.testing.assert_allclose(
        float(res.clb_obs), ref["clb_obs"], rtol=0, atol=atol, err_msg=f"{label}: CLb"
    )


# =========================================================================== small models
# each model's hypotest compiles for seconds: the larger models and the variants of
# modifiers already covered (code1/code0 interpolation, a bare normfactor) run in the slow run
HYPOTEST_SLOW = (
    "combined", "multichannel", "combined_code1_code0", "normfactor", "normsys_code1",
    "histosys_code0",
)  # fmt: skip
HYPOTEST_DEFAULT = tuple(c for c in DEFAULT_CASES if c not in HYPOTEST_SLOW)


@pytest.mark.parametrize("name", HYPOTEST_DEFAULT)
def test_hypotest_qtilde_matches_pyhf(name):
    _check_qtilde(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", HYPOTEST_SLOW)
def test_hypotest_qtilde_matches_pyhf_larger_models(name):
    _check_qtilde(name)


def _check_qtilde(name):
    dmodel, ddata, pmodel, pdata = small_models(name)
    res = hypotest_jit(jnp.asarray(1.0), dmodel, ddata)
    assert_hypotest_matches(
        name, res, pyhf_hypotest(pmodel, pdata, 1.0, "qtilde"),
        models=(dmodel, ddata, pmodel, pdata),
    )  # fmt: skip
    # internal consistency
    np.testing.assert_allclose(float(res.cls_obs), float(res.clsb_obs / res.clb_obs), rtol=1e-12)
    assert np.all(np.diff(np.asarray(res.cls_exp)) > 0)  # pyhf's order: -2 sigma first


@pytest.mark.parametrize("name", ["uncorrelated"])
def test_hypotest_q_matches_pyhf(name):
    dmodel, ddata, pmodel, pdata = small_models(name)
    bounds = _wide_bounds(dmodel)
    res = hypotest_jit(jnp.asarray(1.0), dmodel, ddata, bounds=bounds, test_stat="q")
    ref = pyhf_hypotest(pmodel, pdata, 1.0, "q", par_bounds=bounds)
    assert_hypotest_matches(
        f"{name} q", res, ref, models=(dmodel, ddata, pmodel, pdata), test_stat="q",
        bounds=bounds,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["uncorrelated"])
def test_discovery_q0_matches_pyhf(name):
    dmodel, ddata, pmodel, pdata = small_models(name)
    res = discovery_jit(dmodel, ddata)
    ref = pyhf_hypotest(pmodel, pdata, 0.0, "q0")
    assert bool(res.converged)
    # pyhf returns p0 (as CLsb, in its "CLs" fields) and the expected p0 band for q0
    np.testing.assert_allclose(float(res.p0), ref["cls_obs"], rtol=0, atol=CLS_ATOL)
    np.testing.assert_allclose(np.asarray(res.p0_exp), ref["cls_exp"], rtol=0, atol=CLS_ATOL)
    p0 = float(res.p0)
    assert 1e-4 < p0 < 0.5  # the data have an excess
    # Z0 = sqrt(q0) = Phi^-1(1 - p0); expected Z from the Asimov q0
    assert float(res.significance) == pytest.approx(float(np.sqrt(res.teststat)), rel=1e-12)
    assert float(res.significance) == pytest.approx(norm.isf(ref["cls_obs"]), rel=1e-5)
    assert float(res.expected_significance) == pytest.approx(norm.isf(ref["cls_exp"][2]), rel=1e-5)


@pytest.mark.parametrize(
    ("stat", "pyhf_name", "tilde"),
    [
        ("qtilde", "qmu_tilde", True),
        ("q", "qmu", False),
        ("tmu", "tmu", False),
        ("tmu_tilde", "tmu_tilde", True),
        ("q0", "q0", True),
    ],
)
def test_test_statistics_match_pyhf(stat, pyhf_name, tilde):
    dmodel, ddata, pmodel, pdata = small_models("uncorrelated")
    bounds = [tuple(b) for b in dmodel.config.bounds] if tilde else _wide_bounds(dmodel)
    init = pmodel.config.suggested_init()
    fixed = pmodel.config.suggested_fixed()
    values = []
    # mu_hat is about 0.73: below it q/qtilde vanish, above them all are positive
    for mu in (0.0,) if stat == "q0" else (0.5, 1.0, 2.0):
        got = float(stat_value_jit(stat, jnp.asarray(mu), dmodel, ddata, bounds=bounds))
        ref = oracle.test_statistic(pyhf_name, mu, pdata, pmodel, init, bounds, fixed)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7, err_msg=f"{stat} mu={mu}")
        values.append(got)
    if stat in ("q", "qtilde"):
        assert values[0] == 0.0 and values[1] > 0
    elif stat != "q0":
        assert min(values) > 0
    else:
        assert values[0] > 0.5


# =========================================================================== upper limits
def _limit_models():
    """pyhf's documented example: uncorrelated background, observed [51, 48]."""
    dmodel, _, pmodel, _ = small_models("uncorrelated")
    obs = [51.0, 48.0]
    return (
        dmodel,
        jnp.asarray(obs + list(dmodel.config.auxdata)),
        pmodel,
        obs + pmodel.config.auxdata,
    )


def test_upper_limit_scan_matches_pyhf():
    dmodel, ddata, pmodel, pdata = _limit_models()
    scan = np.linspace(0, 5, 21)
    got = diffhep.stats.limits.upper_limit(dmodel, ddata, scan=scan)
    obs, exp = oracle.upper_limit(pdata, pmodel, scan=scan)
    # both interpolate the same CLs values linearly on the same grid
    assert got.observed == pytest.approx(obs, rel=0, abs=1e-6)
    np.testing.assert_allclose(got.expected, exp, rtol=0, atol=1e-6)
    # (pyhf's documented 1.01764089 uses its default, looser optimizer)


def test_upper_limit_root_finding_matches_pyhf():
    dmodel, ddata, pmodel, pdata = _limit_models()
    got = diffhep.stats.limits.upper_limit(dmodel, ddata)
    obs, exp = oracle.upper_limit(pdata, pmodel)
    # pyhf's toms748 stops at rtol 1e-4
    assert got.observed == pytest.approx(obs, rel=1e-3)
    np.testing.assert_allclose(got.expected, exp, rtol=1e-3)
    # diffhep's limits are crossings of the CLs curve to its own rtol (1e-6)
    for limit, col in zip([got.observed, *got.expected], range(6), strict=True):
        r = hypotest_jit(jnp.asarray(limit), dmodel, ddata)
        value = float(r.cls_obs) if col == 0 else float(r.cls_exp[col - 1])
        assert value == pytest.approx(0.05, abs=1e-6), col


def _nan_at_zero(monkeypatch, everywhere=False):
    """pyhf's hypotest as on the machines where it fails: CLs 0/0 = NaN at mu = 0 (its
    toms748 search starts there), or at every mu (``everywhere``)."""
    real = pyhf.infer.hypotest

    def broken(poi, *args, **kwargs):
        out = real(poi, *args, **kwargs)
        if everywhere or float(poi) == 0.0:
            out = (np.asarray(np.nan), *out[1:])
        return out

    monkeypatch.setattr(pyhf.infer, "hypotest", broken)
    monkeypatch.setattr(pyhf.infer.intervals.upper_limits, "hypotest", broken)


def test_oracle_upper_limit_reseats_a_nan_at_the_lower_bound(monkeypatch):
    """The failure of issue 18: pyhf's upper_limit (tight scipy) got NaN at mu = 0 and
    raised. The guarded oracle re-seats its search above the lower bound and gives the
    limits pyhf gives where it does not fail; it raises ReferenceFailure only when every
    re-seat fails."""
    _, _, pmodel, pdata = _limit_models()
    want_obs, want_exp = oracle.upper_limit(pdata, pmodel)
    want_grid = oracle.upper_limit(pdata, pmodel, scan=np.linspace(0, 5, 21))
    _nan_at_zero(monkeypatch)
    # unguarded, pyhf fails or returns a limit computed from a NaN
    with oracle.pyhf_numpy():
        try:
            raw = pyhf.infer.intervals.upper_limits.upper_limit(
                pyhf.tensorlib.astensor(pdata), pmodel, return_results=True
            )
        except Exception:
            raw = None
    assert raw is None or not np.all(np.isfinite(np.asarray(raw[2][1][0][0], dtype=float)))
    obs, exp = oracle.upper_limit(pdata, pmodel)
    assert obs == pytest.approx(want_obs, rel=1e-3)
    np.testing.assert_allclose(exp, want_exp, rtol=1e-3)
    # on a grid starting at 0, the NaN point is re-seated 1% of a step further in
    obs, exp = oracle.upper_limit(pdata, pmodel, scan=np.linspace(0, 5, 21))
    assert obs == pytest.approx(want_grid[0], abs=1e-6)
    np.testing.assert_allclose(exp, want_grid[1], atol=1e-6)
    _nan_at_zero(monkeypatch, everywhere=True)
    with pytest.raises(oracle.ReferenceFailure, match="failed in every re-seated form"):
        oracle.upper_limit(pdata, pmodel)


# =========================================================================== closed form
def _counting_model(s, b):
    spec = model_spec(
        channel("SR", sample("signal", [s], normfactor("mu")), sample("background", [b]))
    )
    return diffhep.Model.from_spec(spec)


@pytest.mark.parametrize(("s", "b"), [(5.0, 10.0), (3.0, 50.0), (20.0, 2.0)])
def test_counting_experiment_closed_forms(s, b):
    """One bin, no systematics: Asimov formulas of arXiv:1007.1727."""
    model = _counting_model(s, b)
    # q0 on the Asimov data of mu = 1 (n = s + b)
    res = discovery_jit(model, jnp.asarray([s + b]))
    q0 = 2.0 * ((s + b) * np.log(1.0 + s / b) - s)
    assert float(res.teststat) == pytest.approx(q0, rel=0, abs=1e-8)
    assert float(res.teststat_asimov) == pytest.approx(q0, rel=0, abs=1e-8)
    assert float(res.expected_significance) == pytest.approx(np.sqrt(q0), abs=1e-8)
    assert float(res.p0) == pytest.approx(norm.sf(np.sqrt(q0)), rel=1e-8)
    # CLs on the background-only Asimov data (n = b): observed equals expected median
    for mu in (0.5, 1.0, 2.0):
        r = hypotest_jit(jnp.asarray(mu), model, jnp.asarray([b]))
        qA = 2.0 * (mu * s - b * np.log(1.0 + mu * s / b))
        assert float(r.teststat_asimov) == pytest.approx(qA, rel=0, abs=1e-8)
        median = 2.0 * norm.cdf(-np.sqrt(qA))
        assert float(r.cls_exp[2]) == pytest.approx(median, rel=1e-8, abs=1e-12)
        assert float(r.cls_obs) == pytest.approx(median, rel=1e-7, abs=1e-12)
        nsigma = np.array([2.0, 1.0, 0.0, -1.0, -2.0])
        band = norm.cdf(-(nsigma + np.sqrt(qA))) / norm.cdf(-nsigma)
        np.testing.assert_allclose(np.asarray(r.cls_exp), band, rtol=1e-8, atol=1e-14)


def test_counting_experiment_matches_pyhf():
    model = _counting_model(5.0, 10.0)
    spec = model_spec(
        channel("SR", sample("signal", [5.0], normfactor("mu")), sample("background", [10.0]))
    )
    pmodel = pyhf.Model(copy.deepcopy(spec), poi_name="mu")
    for n in (8.0, 13.0):
        res = hypotest_jit(jnp.asarray(1.0), model, jnp.asarray([n]))
        assert_hypotest_matches(f"n={n}", res, pyhf_hypotest(pmodel, [n], 1.0, "qtilde"))


# =========================================================================== real likelihoods
def _hypotest_tasks(points):
    def tasks(root, region):
        return [hypotest_task(root, region, p) for p in points(root, region)]

    return tasks


def _default_points(root, region):
    return SBOTTOM_POINTS


def _check_sbottom(sbottom_dir, region, point):
    models = sbottom_models(sbottom_dir, region, point)
    res = hypotest_jit(jnp.asarray(1.0), models[0], models[1])
    ref = WORKER.result(hypotest_task(sbottom_dir, region, point))
    assert_hypotest_matches(f"{region}/{point}", res, ref, models=models)


@pyhf_tasks(_hypotest_tasks(_default_points))
@pytest.mark.parametrize("region", REGIONS)
def test_sbottom_hypotest_matches_pyhf(sbottom_dir, region):
    for point in SBOTTOM_POINTS:
        _check_sbottom(sbottom_dir, region, point)


MIRROR_POINTS = ("sbottom_400_205_60",)  # 550_180_50 (one NP flipped) in the slow sweep


@pyhf_tasks(lambda root: [hypotest_task(root, "RegionA", p) for p in MIRROR_POINTS])
def test_sbottom_hypotest_with_mirror_minima(sbottom_dir):
    """RegionA's symmetrised JER variations (hi == lo) make the likelihood nearly even in
    their NPs: at this point the fixed-POI fits have mirror-image minima (three NPs at
    +-0.8, 0.137 apart in twice_nll) and a fit from
    alpha = 0 reached the higher one before the mirrored restart of ``fit``: diffhep's fits
    must be at least as good as pyhf's, and its CLs pyhf's likelihood at them."""
    for point in MIRROR_POINTS:
        _check_sbottom(sbottom_dir, "RegionA", point)


@pytest.mark.slow
@pyhf_tasks(lambda root, region, point: [hypotest_task(root, region, point)])
@pytest.mark.parametrize(("region", "point"), SWEEP_POINTS)
def test_sbottom_many_points_hypotest_matches_pyhf(sbottom_dir, region, point):
    _check_sbottom(sbottom_dir, region, point)


def test_cases_cover_every_modifier_type():
    types = {
        m["type"]
        for c in CASES.values()
        for ch in c.spec["channels"]
        for s in ch["samples"]
        for m in s["modifiers"]
    }
    assert types == {
        "normfactor", "shapefactor", "lumi", "normsys", "histosys", "shapesys", "staterror"
    }  # fmt: skip


# ==================================================== the fit at the Asimov value, inherited
def test_the_fit_at_the_asimov_value_inherits_a_free_fit_that_ended_there():
    """Where mu_hat is at the Asimov value (its bound 0, as at this sbottom RegionA point at
    mu = 1), the free fit's restarts covered the fit at that value: it runs from the suggested
    values without restarts, and the free fit's minimum is kept unless that fit ends lower.
    Here both are one minimum: the free fit's best fit, bit for bit, in fewer Newton steps
    than the fit from the suggested start with its restarts (fails where it restarts: 9
    steps). Where the free fit missed its minimum, the test_a_free_fit_that_ends_above_...
    case 'ended at 0' shows the fit from the suggested values taking over."""
    spec, patch = builtin_example()
    ws = diffhep.Workspace(spec).patched(patch)
    model = ws.model()
    data = jnp.asarray(ws.data(model))
    poi = model.config.poi_index
    scan, captured = jax.lax.scan, {}

    def keep_fits(f, init, xs, **kw):  # the kernel's scan over its fits
        carry, fits = scan(f, init, xs, **kw)
        captured["fits"] = fits
        return carry, fits

    def run(m, d):
        with mock.patch.object(jax.lax, "scan", keep_fits):
            res = diffhep.stats.hypotest.hypotest(1.0, m, d)
        return res.cls_obs, captured["fits"]

    _, fits = jax.jit(run)(model, data)
    init, lower, upper, fixed = fit_defaults(model, None, None, None, data.dtype)
    cold = _fits(model, data, jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([False, True, False]),
                 init, lower, upper, fixed, DEFAULT_TOL, DEFAULT_MAX_STEPS)  # fmt: skip
    assert bool(np.all(fits.converged)) and bool(np.all(cold.converged))
    assert float(fits.bestfit[1][poi]) == 0.0  # mu_hat at its bound
    assert int(fits.n_steps[2]) < int(cold.n_steps[2])
    np.testing.assert_array_equal(np.asarray(fits.bestfit[2]), np.asarray(fits.bestfit[1]))
    assert int(fits.n_steps[1]) == int(cold.n_steps[1])  # the free fit from the start
    np.testing.assert_allclose(np.asarray(fits.twice_nll[:3]), np.asarray(cold.twice_nll),
                               rtol=1e-12, atol=1e-9)  # fmt: skip
    np.testing.assert_allclose(np.asarray(fits.bestfit[:3]), np.asarray(cold.bestfit), atol=1e-5)
    warm_steps, cold_steps = int(np.sum(fits.n_steps[1:3])), int(np.sum(cold.n_steps[1:]))
    assert warm_steps < cold_steps, (warm_steps, cold_steps)


def test_the_free_fit_starts_at_the_suggested_values_not_where_the_fixed_fit_ended():
    """A free fit started where the fixed-POI fit ended (4d4083a) stayed in that basin on this
    model of a review's random draws (histosys variations of 0.6-1.4x the nominal): -2 ln L
    37.20 at mu_hat = 1.30, above the test's own fit at mu = 0 (34.86), q = 0.342 and CLs
    0.289 instead of 2.688 and 0.065. The free fit must be no higher than the fits of the data
    with the POI fixed, and equal to the fit from the suggested start."""
    bkg = [55.066882970662164, 32.01693685601076, 42.07644093007991, 55.64419538646137]
    hs_lo = [76.3164442945352, 34.38178586276932, 48.48762749416994, 59.022522364797986]
    hs_hi = [48.66153162873744, 23.109472974532515, 28.65305639217959, 50.04747797970539]
    bkg2 = [7.335053414997102, 11.795625659289286, 12.29588843702359, 5.940953395063282]
    hs2_lo = [9.877011220993888, 10.105304685368079, 14.174930747993788, 4.587913186521908]
    hs2_hi = [5.775916419925731, 15.729329155160519, 8.539415965544832, 6.970979284520387]
    sig = [8.54626397501637, 8.581970075410343, 10.366022104308682, 8.858698428412854]
    spec = model_spec(
        channel(
            "SR",
            sample("bkg", bkg, normsys("ns", 0.9, 1.15), histosys("hs", hs_lo, hs_hi)),
            sample("bkg2", bkg2, histosys("hs2", hs2_lo, hs2_hi)),
            sample("sig", sig, normfactor("mu")),
        )
    )
    model = diffhep.Model.from_spec(spec)
    data = jnp.asarray([88.0, 53.0, 45.0, 70.0, *model.config.auxdata])
    res = hypotest_jit(jnp.asarray(2.0), model, data)
    init, lower, upper, fixed = fit_defaults(model, None, None, None, data.dtype)
    cold = _fits(model, data, jnp.asarray([2.0, 0.0, 0.0]), jnp.asarray([False, True, False]),
                 init, lower, upper, fixed, DEFAULT_TOL, DEFAULT_MAX_STEPS)  # fmt: skip
    fixed_2, free, fixed_0 = (float(t) for t in cold.twice_nll)
    assert free <= min(fixed_2, fixed_0) + 1e-9
    assert float(res.teststat) == pytest.approx(fixed_2 - free, abs=1e-7)
    assert float(res.teststat) > 2.0  # 0.342 from the fixed fit's basin
    assert float(res.cls_obs) < 0.1  # 0.289 there


#: Two of 1,600 random 4-bin models (histosys variations of 0.6-1.4x the nominal) on which the
#: free fit of the data ended above a fit of the same data with the POI fixed (at mu, at 0)
#: while every fit converged: 2.42 and 0.11 above it in -2 ln L; and one that ended at the
#: Asimov value above the fit there from the suggested values
_MISSED_FREE_FITS = {
    "above the fit at mu": dict(
        sig=[8.589416, 2.972375, 5.552294, 5.862364],
        bkg=[59.685737, 15.461179, 57.484501, 32.904243],
        hs_lo=[53.692114, 16.933527, 46.476631, 23.107768],
        hs_hi=[79.862008, 11.015684, 75.504306, 35.132211],
        bkg2=[6.571561, 25.976409, 10.220775, 13.315463],
        hs2_lo=[6.484888, 17.788519, 10.13178, 12.840162],
        hs2_hi=[8.645328, 35.173873, 12.26042, 18.0304],
        obs=[93.0, 55.0, 75.0, 39.0],
        mu=2.0,
        toy_mu=3.0,
    ),
    "above the fit at 0": dict(
        sig=[3.321728, 13.09114, 1.406644, 13.766375],
        bkg=[18.740509, 27.6635, 45.19833, 23.349493],
        hs_lo=[15.305219, 23.34873, 27.294242, 15.692581],
        hs_hi=[18.411661, 25.152638, 52.37075, 17.636457],
        bkg2=[8.284529, 22.13148, 21.48927, 19.902289],
        hs2_lo=[6.051005, 16.156831, 18.182735, 15.859305],
        hs2_hi=[10.366496, 23.792853, 29.941674, 23.120486],
        obs=[18.0, 37.0, 77.0, 60.0],
        mu=4.0,
    ),
    # the free fit ended at mu_hat = 0 (30.426, its restarts found nothing lower), and the
    # fit at 0 had inherited it: no fixed fit below it, q 3.86 instead of 4.27 (fuzz seed 7,
    # draw 2729 of 3,000)
    "ended at 0, above the fit there": dict(
        sig=[9.910481, 7.614935, 4.337765, 7.379874],
        bkg=[38.078402, 14.777082, 32.007045, 24.240674],
        hs_lo=[34.461236, 15.378461, 19.259821, 19.020092],
        hs_hi=[44.136375, 11.57205, 41.967743, 20.139534],
        bkg2=[29.421, 11.499035, 26.308918, 14.54505],
        hs2_lo=[23.656135, 14.500761, 19.682981, 10.592849],
        hs2_hi=[24.332032, 13.135643, 26.945484, 18.802071],
        obs=[57.0, 26.0, 41.0, 39.0],
        mu=1.0,
    ),
}


@eqx.filter_jit
def _free_fits_from(model, data, starts):
    """Free fits (restarts on) from each of ``starts``: a brute-force global minimum."""
    _, lower, upper, fixed = fit_defaults(model, None, None, None, data.dtype)

    def one(x0):
        return _fits(model, data, jnp.zeros(1), jnp.ones(1, bool), x0, lower, upper, fixed,
                     DEFAULT_TOL, DEFAULT_MAX_STEPS).twice_nll[0]  # fmt: skip

    return jax.lax.map(one, starts)


@pytest.mark.parametrize("case", list(_MISSED_FREE_FITS))
def test_a_free_fit_that_ends_above_a_fixed_fit_of_its_data_runs_again_from_there(case):
    """The free fit's minimum is no higher than any fit of the same data with the POI fixed
    within its bounds; on these models it ended above one (q clipped to 0, or 34.19 instead
    of 34.31), converged. It now runs again from that fit's best fit and reaches the lowest
    minimum that free fits from 40 random starts find (brute force)."""
    d = _MISSED_FREE_FITS[case]
    spec = model_spec(
        channel(
            "SR",
            sample(
                "bkg", d["bkg"], normsys("ns", 0.9, 1.15), histosys("hs", d["hs_lo"], d["hs_hi"])
            ),
            sample("bkg2", d["bkg2"], histosys("hs2", d["hs2_lo"], d["hs2_hi"])),
            sample("sig", d["sig"], normfactor("mu")),
        )
    )
    model = diffhep.Model.from_spec(spec)
    data = jnp.asarray([*d["obs"], *model.config.auxdata])
    res = hypotest_jit(jnp.asarray(d["mu"]), model, data)
    init, lower, upper, fixed = fit_defaults(model, None, None, None, data.dtype)
    rng = np.random.default_rng(0)
    lo, hi = np.asarray(lower), np.asarray(upper)
    starts = np.clip(
        np.asarray(init) + rng.uniform(-3, 3, (40, init.size)) * np.minimum(1, (hi - lo) / 4),
        lo,
        hi,
    )
    brute = float(jnp.min(_free_fits_from(model, data, jnp.asarray(starts))))
    fixed_mu = _fits(model, data, jnp.asarray([d["mu"]]), jnp.zeros(1, bool), init, lower,
                     upper, fixed, DEFAULT_TOL, DEFAULT_MAX_STEPS).twice_nll[0]  # fmt: skip
    assert bool(res.converged)
    free = float(model.twice_nll(res.bestfit, data))
    assert free == pytest.approx(brute, abs=1e-6)
    poi = model.config.poi_index
    expected_q = 0.0 if float(res.bestfit[poi]) > d["mu"] else float(fixed_mu) - brute
    assert float(res.teststat) == pytest.approx(expected_q, abs=1e-5)
    # the same repair in the test statistic alone and in the toys' observed statistic
    alone = diffhep.stats.hypotest.test_statistic("qtilde", d["mu"], model, data)
    assert float(alone) == pytest.approx(expected_q, abs=1e-5)
    mu, zero = jnp.asarray(d["mu"]), jnp.asarray(0.0)
    q_obs, ok, _, _ = _toys_setup(model, data, mu, zero, init, lower, upper, fixed, DEFAULT_TOL,
                                  DEFAULT_MAX_STEPS, "qtilde")  # fmt: skip
    assert bool(ok)
    assert float(q_obs) == pytest.approx(expected_q, abs=1e-5)
    # and in a toy's (the data as a toy generated at the suggested values), whose fits are
    # the free one and the one at mu only: at mu = 3 the first draw's fit there is below
    # the free fit, which ended in the basin of mu ~ 0.1 (q was 0; the minimum is at ~2.45)
    if "toy_mu" in d:
        toy_mu = jnp.asarray(d["toy_mu"])
        at_mu = _fits(model, data, toy_mu[None], jnp.zeros(1, bool), init, lower, upper, fixed,
                      DEFAULT_TOL, DEFAULT_MAX_STEPS).twice_nll[0]  # fmt: skip
        assert float(res.bestfit[poi]) < d["toy_mu"]
        centre = aux_centre(model, init, data, lower, upper, fixed)
        toy = eqx.filter_jit(_toy_statistic)
        q_toy, ok = toy(model, init, data, centre, toy_mu, lower, upper, fixed, DEFAULT_TOL,
                        DEFAULT_MAX_STEPS, "qtilde")  # fmt: skip
        assert bool(ok)
        assert float(q_toy) == pytest.approx(float(at_mu) - brute, abs=1e-5)
        assert float(q_toy) > 0.1
