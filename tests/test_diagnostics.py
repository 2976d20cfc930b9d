"""Refit diagnostics (diffhep.stats.diagnostics: ranking, scans, significance, goodness of
fit) against references: cabinetry 0.6.0's ``fit.ranking`` and ``_goodness_of_fit``, pyhf's
asymptotic q0 test and fixed-POI fits, and closed forms on counting models.
"""

from __future__ import annotations

import copy

import numpy as np
import pyhf
import pytest
from scipy import optimize, stats

import diffhep
import specs
from diagnostics_refs import (
    cabinetry_ranking,
    counting,
    pyhf_impacts,
    sbottom,
    small,
    small_cabinetry_ranking,
    small_reference,
)
from diffhep.stats import covariance as cv
from diffhep.stats import diagnostics as dg
from oracle import pyhf_numpy

RANK_RTOL = 1e-3  # impacts vs cabinetry (relative)


# =========================================================================== ranking
def _check_ranking(dmodel, ddata, make, post=None, ref=None):
    post = post if post is not None else cv.postfit(dmodel, ddata)
    got = dg.ranking(dmodel, ddata, post)
    bounds = [tuple(map(float, b)) for b in post.bounds]
    ref = ref if ref is not None else cabinetry_ranking(make, post, bounds)
    assert got.labels == list(ref.labels)
    scale = post.uncertainty[dmodel.config.poi_index]
    for field in ("prefit_up", "prefit_down", "postfit_up", "postfit_down"):
        np.testing.assert_allclose(
            getattr(got, field), getattr(ref, field), rtol=RANK_RTOL, atol=1e-4 * scale,
            err_msg=field,
        )  # fmt: skip
    assert np.abs(got.postfit_up).max() > 1e-2 * scale  # impacts that mean something
    # the covariance approximation: first order of the same shifts
    lin = dg.ranking(dmodel, ddata, post, method="covariance")
    np.testing.assert_allclose(lin.postfit_up, -lin.postfit_down)
    big = np.abs(got.postfit_up) > 0.1 * np.abs(got.postfit_up).max()
    np.testing.assert_allclose(lin.postfit_up[big], got.postfit_up[big], rtol=0.3)
    return got


def test_ranking_small_model_matches_cabinetry():
    post, _ = small_reference("combined")
    ref = small_cabinetry_ranking("combined")
    got = _check_ranking(*small("combined"), post=post, ref=ref)
    listed = got.to_list()
    assert set(listed[0]) == {"parameter", "prefit_up", "prefit_down", "postfit_up",
                              "postfit_down"}  # fmt: skip
    size = [max(abs(r["postfit_up"]), abs(r["postfit_down"])) for r in listed]
    assert size == sorted(size, reverse=True)


def _check_ranking_published(dmodel, ddata, make, fields, top=8):
    """The largest impacts of a published likelihood against pyhf refits with cabinetry's
    definition (cabinetry's own ranking fails there: see diagnostics_refs.pyhf_impacts)."""
    post = cv.postfit(dmodel, ddata)
    got = dg.ranking(dmodel, ddata, post)
    labels = [got.labels[i] for i in got.order()[:top]]
    ref = pyhf_impacts(make, post, labels, fields)
    scale = post.uncertainty[dmodel.config.poi_index]
    for label in labels:
        i = got.labels.index(label)
        for field, value in ref[label].items():
            np.testing.assert_allclose(getattr(got, field)[i], value, rtol=RANK_RTOL,
                                       atol=1e-4 * scale, err_msg=f"{label} {field}")  # fmt: skip
    assert np.abs(got.postfit_up).max() > 1e-2 * scale


@pytest.mark.slow
def test_ranking_sbottom_postfit_impacts_match_pyhf_refits(sbottom_dir):
    _check_ranking_published(*sbottom(sbottom_dir, "RegionA", "sbottom_1000_205_60"),
                             fields=("postfit_up", "postfit_down"))  # fmt: skip


@pytest.mark.slow
def test_ranking_sbottom_prefit_impacts_match_pyhf_refits(sbottom_dir):
    # with ttbar_PS fixed at best fit + 1 (pre-fit sigma) on sbottom RegionA (1000_205_60)
    # the likelihood has two minima, JET_JvtEfficiency at +0.555 (-2logL 102.8477) and at
    # -0.568 (102.8315, pyhf's): the refit went to the first (a strict xfail until the
    # restarts for several minima of issue 20 found the second: it passed unnoticed since,
    # the slow tests out of CI, and failed as XPASS(strict))
    _check_ranking_published(*sbottom(sbottom_dir, "RegionA", "sbottom_1000_205_60"),
                             fields=("prefit_up", "prefit_down"))  # fmt: skip


# =========================================================================== gof, Z, scans
def test_gof_counting_model_closed_form():
    s, b, n = np.array([10.0, 5.0]), np.array([50.0, 30.0]), np.array([65.0, 28.0])
    model, data = counting(s, b, n)
    out = dg.gof(model, data)

    def chi2(mu):
        lam = mu * s + b
        return 2 * np.sum(lam - n + n * np.log(n / lam))

    best = optimize.minimize_scalar(chi2, bounds=(0, 10), method="bounded",
                                    options={"xatol": 1e-10})  # fmt: skip
    assert out["ndf"] == 1
    np.testing.assert_allclose(out["chi2"], best.fun, rtol=1e-6)
    np.testing.assert_allclose(out["p_value"], stats.chi2.sf(best.fun, 1), rtol=1e-5)


def test_gof_with_constraints_matches_cabinetry():
    import cabinetry

    dmodel, ddata, make = small("combined")
    out = dg.gof(dmodel, ddata, small_reference("combined")[0])
    with pyhf_numpy():
        pmodel, pdata = make()
        ref = cabinetry.fit._goodness_of_fit(pmodel, pdata, out["twice_nll"])
    np.testing.assert_allclose(out["p_value"], ref, rtol=1e-8)
    assert out["ndf"] == 5 - 4  # bins minus mu, mu_ttbar, wjets_cr_sf[0], wjets_cr_sf[1]


def test_significance_counting_model_closed_form():
    s, b, n = 10.0, 50.0, 65.0
    model, data = counting([s], [b], [n])
    out = dg.significance(model, data)
    z_obs = np.sqrt(2 * (n * np.log(n / b) - (n - b)))
    z_exp = np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s))
    np.testing.assert_allclose(out["Z_obs"], z_obs, rtol=1e-6)
    np.testing.assert_allclose(out["p0_obs"], stats.norm.sf(z_obs), rtol=1e-5)
    np.testing.assert_allclose(out["Z_exp"], z_exp, rtol=1e-6)
    np.testing.assert_allclose(out["p0_exp"], stats.norm.sf(z_exp), rtol=1e-5)


@pytest.mark.slow
def test_significance_matches_pyhf_q0():
    dmodel, ddata, make = small("combined")
    out = dg.significance(dmodel, ddata)
    with pyhf_numpy():
        pmodel, pdata = make()
        obs, exp = pyhf.infer.hypotest(0.0, pdata, pmodel, test_stat="q0", return_expected=True)
    np.testing.assert_allclose(out["p0_obs"], float(obs), rtol=1e-4)
    np.testing.assert_allclose(out["p0_exp"], float(exp), rtol=1e-4)


def test_scan_counting_model_closed_form():
    s, b, n = 10.0, 50.0, 65.0
    model, data = counting([s], [b], [n])
    mus = np.linspace(0.0, 3.0, 7)
    out = dg.scan(model, data, ["mu"], mus)
    lam = mus * s + b
    expect = 2 * ((lam - n) - n * np.log(lam / n))  # minimum at lam = n (mu = 1.5)
    np.testing.assert_allclose(out["delta_twice_nll"], expect, atol=1e-8)
    np.testing.assert_allclose(out["bestfit"], [1.5], atol=1e-6)


def test_scan_and_impacts_take_refits_at_the_noise_floor_as_converged(monkeypatch):
    """Status NOISE_FLOOR is a success (solver.is_success): a refit that stopped there was
    reported as not converged by scan and by the ranking's impact fits."""
    from diffhep.stats import solver

    s, b, n = 10.0, 50.0, 65.0
    model, data = counting([s], [b], [n])
    fixed_fits = dg.fixed_fits

    def at_noise_floor(*args, **kwargs):
        best, tn, status = fixed_fits(*args, **kwargs)
        assert np.all(status == solver.CONVERGED)
        return best, tn, np.full_like(status, solver.NOISE_FLOOR)

    monkeypatch.setattr(dg, "fixed_fits", at_noise_floor)
    mus = np.array([0.5, 1.5, 2.5])
    out = dg.scan(model, data, ["mu"], mus)
    lam = mus * s + b
    np.testing.assert_allclose(out["delta_twice_nll"], 2 * ((lam - n) - n * np.log(lam / n)),
                               atol=1e-8)  # fmt: skip
    spec = {"channels": [{"name": "SR", "samples": [
        {"name": "signal", "data": [10.0], "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "bkg", "data": [50.0], "modifiers": [
            {"name": "norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]},
    ]}]}  # fmt: skip
    model = diffhep.Model.from_spec(spec)
    data = np.array([65.0, 0.0])
    monkeypatch.setattr(dg, "fixed_fits", fixed_fits)
    expected = dg.ranking(model, data).to_list()
    monkeypatch.setattr(dg, "fixed_fits", at_noise_floor)
    assert dg.ranking(model, data).to_list() == expected


@pytest.mark.slow
def test_scan_2d_closed_form_and_profiled_parameter():
    # mu and a background normalisation k, two bins: at fixed (mu, k) nothing is profiled
    spec = {
        "channels": [{"name": "SR", "samples": [
            {"name": "signal", "data": [10.0, 2.0],
             "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "bkg", "data": [50.0, 100.0],
             "modifiers": [{"name": "k", "type": "normfactor", "data": None}]},
        ]}]
    }  # fmt: skip
    model = diffhep.Model.from_spec(spec)
    n = np.array([62.0, 105.0])
    grid = np.array([[m, k] for m in (0.5, 1.0, 2.0) for k in (0.9, 1.0, 1.1)])
    out = dg.scan(model, n, ["mu", "k"], grid)
    lam = grid[:, :1] * np.array([10.0, 2.0]) + grid[:, 1:] * np.array([50.0, 100.0])
    t = 2 * np.sum(lam - n * np.log(lam), axis=1)
    tmin = 2 * np.sum(n - n * np.log(n))  # saturated: two parameters, two bins
    np.testing.assert_allclose(out["delta_twice_nll"], t - tmin, atol=1e-7)
    # one parameter fixed, one profiled: pyhf's fixed_poi_fit at the same values
    pmodel = pyhf.Model(copy.deepcopy(spec), poi_name="mu")
    one = dg.scan(model, n, ["mu"], [0.5, 2.0])
    with pyhf_numpy():
        for mu, got in zip((0.5, 2.0), one["twice_nll"], strict=True):
            _, tn = pyhf.infer.mle.fixed_poi_fit(mu, list(n), pmodel, return_fitted_val=True)
            np.testing.assert_allclose(got, float(tn), rtol=1e-8)
    with pytest.raises(diffhep.DiffhepError, match="unknown parameter"):
        dg.scan(model, n, ["nope"], [1.0])


def _bounded(observed, mu_bounds):
    from diffhep.stats import workspace

    spec = specs.bounded_poi_workspace(observed, mu_bounds)
    ws = workspace.Workspace(spec)
    model = ws.model()
    return model, ws.data(model)


@pytest.mark.parametrize(
    ("observed", "mu_bounds", "side", "zeros"),
    [([50.0, 29.0], (0.0, 10.0), "lower", 4), ([61.0, 50.0], (0.0, 2.0), "upper", 4)],
)
def test_ranking_notes_the_poi_at_a_bound(observed, mu_bounds, side, zeros):
    """With the POI's best fit at a bound a refit cannot move it beyond: the impacts that
    would are 0, the others go away from the bound only. The result says which bound
    (poi_at_bound) and notes the truncation, with how many impacts it zeroed."""
    model, data = _bounded(observed, mu_bounds)
    r = dg.ranking(model, data)
    assert r.poi_at_bound == side
    assert r.poi_bestfit == mu_bounds[0 if side == "lower" else 1]
    impacts = np.concatenate([r.prefit_up, r.prefit_down, r.postfit_up, r.postfit_down])
    assert np.sum(impacts == 0.0) == zeros and impacts.size == 8
    assert np.all(impacts >= 0.0) if side == "lower" else np.all(impacts <= 0.0)
    (note,) = r.notes
    assert f"is at its {side} bound" in note and f"{zeros} of 8 refit impacts are 0" in note
    lin = dg.ranking(model, data, method="covariance")
    assert lin.poi_at_bound == side and "ignore the bound" in lin.notes[0]
    inside = dg.ranking(*_bounded(observed, (-10.0, 10.0)))
    assert inside.poi_at_bound is None and inside.notes == ()


def test_gof_imports_no_scipy_stats():
    """gof's p-value is chdtrc (scipy.stats.chi2.sf's own function) and its saturated
    likelihood numpy's: importing scipy.stats cost a warm `diffhep gof` ~0.3 s of ~1.2 s."""
    import subprocess
    import sys

    code = (
        "import sys, diffhep\n"
        "diffhep.enable_x64()\n"
        "from diffhep.stats import diagnostics, workspace\n"
        "ws = diffhep.Workspace(workspace.example_spec())\n"
        "m = ws.model()\n"
        "r = diagnostics.gof(m, ws.data(m))\n"
        "print(r['p_value'] is None or 0 <= r['p_value'] <= 1, 'scipy.stats' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
