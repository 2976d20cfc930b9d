"""Post-fit covariance, correlations, pulls, grouped impacts and yields
(diffhep.stats.covariance, diffhep.stats.diagnostics.pulls) against references: pyhf's best
fit with the exact Hessian of pyhf's own likelihood, cabinetry 0.6.0's ``asimov_parameters``,
``prefit_uncertainties``, ``yield_stdev`` and ``prediction``, and refits with a group fixed.
"""

from __future__ import annotations

import equinox as eqx
import numpy as np
import pytest

import diffhep
from diagnostics_refs import model50, pyhf_reference, sbottom, small, small_reference
from diffhep.stats import covariance as cv
from diffhep.stats import diagnostics as dg
from diffhep.stats.fit import fit
from oracle import pyhf_numpy

REL = 1e-4  # uncertainties, correlations, yields vs references (relative)


# =========================================================================== post-fit, pulls
def _check_postfit(dmodel, ddata, make, cached=None):
    post, ref = cached if cached is not None else (None, None)
    post = post if post is not None else cv.postfit(dmodel, ddata)
    b, _, unc, corr = ref if ref is not None else pyhf_reference(make, post)
    free = ~post.fixed
    np.testing.assert_allclose(post.bestfit, b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(post.uncertainty[free], unc[free], rtol=REL)
    np.testing.assert_allclose(post.correlation, corr, rtol=0, atol=REL)
    # pulls and constraints from cabinetry's nominal values and pre-fit widths
    import cabinetry

    with pyhf_numpy():
        pmodel, _ = make()
        nominal = cabinetry.model_utils.asimov_parameters(pmodel)
        width = cabinetry.model_utils.prefit_uncertainties(pmodel)
    out = dg.pulls(dmodel, post)
    names = list(dmodel.config.par_names)
    assert out["parameters"], "a model with constrained parameters"
    for p in out["parameters"]:
        k = names.index(p["name"])
        np.testing.assert_allclose(p["pull"], (b[k] - nominal[k]) / width[k], atol=1e-4)
        np.testing.assert_allclose(p["constraint"], unc[k] / width[k], rtol=REL)
    shown = {p["name"] for p in out["parameters"] + out["normfactors"]}
    assert shown == {n for n, f in zip(names, post.fixed, strict=True) if not f}
    assert {p["name"] for p in out["normfactors"]} == {
        n for k, n in enumerate(names) if width[k] == 0 and not post.fixed[k]
    }
    return post


def test_postfit_pulls_correlations_small_model_match_pyhf():
    _check_postfit(*small("combined"), cached=small_reference("combined"))


@pytest.mark.slow
def test_postfit_pulls_correlations_50_bins_match_pyhf():
    _check_postfit(*model50())


@pytest.mark.slow
@pytest.mark.parametrize("region,point", [("RegionA", "sbottom_1000_205_60"),
                                          ("RegionC", "sbottom_1300_850_60")])  # fmt: skip
def test_postfit_pulls_correlations_sbottom_match_pyhf(sbottom_dir, region, point):
    _check_postfit(*sbottom(sbottom_dir, region, point))


def test_correlations_threshold_keeps_correlated_parameters():
    dmodel, ddata, _ = small("combined")
    post = cv.postfit(dmodel, ddata)
    full = cv.correlations(post)
    assert len(full["parameters"]) == int((~post.fixed).sum())
    some = cv.correlations(post, threshold=0.3)
    c = np.abs(np.asarray(full["correlation"]))
    np.fill_diagonal(c, 0)
    expect = [n for n, row in zip(full["parameters"], c, strict=True) if row.max() >= 0.3]
    assert some["parameters"] == expect and 0 < len(expect) < len(full["parameters"])


@pytest.mark.slow
def test_grouped_impacts_are_refits_with_the_group_fixed():
    dmodel, ddata, _ = small("combined")
    post = cv.postfit(dmodel, ddata)
    poi = dmodel.config.poi_index
    groups = cv.parameter_groups(dmodel, {"jes+theory": ["jes", "sig_*"]}, by_modifier=True)
    assert {"jes+theory", "staterror", "histosys", "normsys", "lumi", "shapesys"} <= set(groups)
    out = {g["group"]: g["impact"] for g in cv.grouped_impacts(dmodel, post, groups)}
    refit = eqx.filter_jit(fit)  # one compilation for every group's mask
    for name, idx in groups.items():
        fixed = post.fixed.copy()
        fixed[idx] = True  # a refit with the group held at its best fit
        r = refit(dmodel, ddata, init=post.bestfit, fixed=fixed)
        assert bool(r.converged)
        np.testing.assert_allclose(r.bestfit[poi], post.bestfit[poi], atol=1e-6)
        expect = np.sqrt(post.uncertainty[poi] ** 2 - float(r.uncertainty[poi]) ** 2)
        np.testing.assert_allclose(out[name], expect, rtol=1e-6, err_msg=name)
    with pytest.raises(diffhep.DiffhepError, match="matches no parameter"):
        cv.parameter_groups(dmodel, {"x": "nothing*"})


# =========================================================================== yields
def _check_yields(dmodel, ddata, make):
    import cabinetry

    post = cv.postfit(dmodel, ddata)
    with pyhf_numpy():
        pmodel, _ = make()
        per_bin, per_chan = cabinetry.model_utils.yield_stdev(
            pmodel, post.bestfit, post.uncertainty, post.correlation
        )
        pre = cabinetry.model_utils.prediction(pmodel)
    got_post = cv.postfit_yields(dmodel, ddata, post)
    got_pre = cv.prefit_yields(dmodel, ddata)
    samples = list(pmodel.config.samples)
    for c_i, c in enumerate(pmodel.config.channels):
        g = got_post[c]
        for s_i, s in enumerate(samples):
            np.testing.assert_allclose(g["samples"][s]["stdev"], per_bin[c_i][s_i], rtol=REL)
            np.testing.assert_allclose(g["samples"][s]["sum_stdev"], per_chan[c_i][s_i],
                                       rtol=REL)  # fmt: skip
        np.testing.assert_allclose(g["total"]["stdev"], per_bin[c_i][-1], rtol=REL)
        np.testing.assert_allclose(g["total"]["sum_stdev"], per_chan[c_i][-1], rtol=REL)
        p = got_pre[c]
        for s_i, s in enumerate(samples):
            np.testing.assert_allclose(p["samples"][s]["yields"], pre.model_yields[c_i][s_i],
                                       rtol=1e-10)  # fmt: skip
            np.testing.assert_allclose(p["samples"][s]["stdev"],
                                       pre.total_stdev_model_bins[c_i][s_i], rtol=REL)  # fmt: skip
        np.testing.assert_allclose(p["total"]["stdev"], pre.total_stdev_model_bins[c_i][-1],
                                   rtol=REL)  # fmt: skip
        np.testing.assert_allclose(p["total"]["sum_stdev"],
                                   pre.total_stdev_model_channels[c_i][-1], rtol=REL)  # fmt: skip
        nb = len(p["data"])
        assert p["data"] == list(ddata[dmodel.config.channel_slices[c]]) and nb == len(
            p["total"]["yields"]
        )


def test_yields_small_model_match_cabinetry():
    _check_yields(*small("combined"))


@pytest.mark.slow
def test_yields_sbottom_match_cabinetry(sbottom_dir):
    _check_yields(*sbottom(sbottom_dir, "RegionC", "sbottom_1300_850_60"))
