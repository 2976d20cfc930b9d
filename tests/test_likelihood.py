"""diffhep's HistFactory likelihood against pyhf 0.7.6 (numpy backend, float64) as oracle.

Every model is built twice, by ``pyhf.Model`` and by ``diffhep.Model.from_spec``, and the two
must agree on the configuration (parameter names, order, inits, bounds, fixed flags, POI,
auxiliary data) and on the numbers (log-likelihood and expected data, relative 1e-9) at many
parameter points, including the interpolation boundaries alpha = +-1 and the extrapolation
regions beyond them.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import tarfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import diffhep
import specs
from specs import (
    CODES_1,
    CODES_4,
    YIELD_TEMPLATES,
    channel,
    histosys,
    lumi,
    lumi_parameter,
    normfactor,
    normsys,
    sample,
    shapefactor,
    shapesys,
    staterror,
)
from specs import model_spec as spec

pyhf.set_backend("numpy")

RTOL = 1e-9
LUMI_CONFIG = lumi_parameter(0.017, (0.915, 1.085))
SBOTTOM_POINTS = ["sbottom_1300_850_60", "sbottom_1000_205_60"]


def _scaled(values, factor):
    return [v * factor for v in values]


# --------------------------------------------------------------------------- model specs
def _spec_normfactor():
    return specs.normfactors()


def _spec_shapefactor():
    return spec(
        channel(
            "CR",
            sample("signal", [2.0, 3.0, 1.0], normfactor("mu")),
            sample("bkg", [30.0, 20.0, 10.0], shapefactor("sf_bkg")),
        )
    )


def _spec_lumi():
    return specs.lumi_model(LUMI_CONFIG)


def _spec_normsys():
    return spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0, 2.0], normfactor("mu"), normsys("sig_acc", 1.05, 1.1)),
            sample("bkg", [40.0, 30.0, 12.0], normsys("bkg_xsec", 0.85, 1.2)),
            sample("fakes", [6.0, 4.0, 1.0], normsys("bkg_xsec", 0.7, 1.4)),
        )
    )


def _spec_histosys():
    return spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0, 2.0], normfactor("mu")),
            sample(
                "bkg",
                [40.0, 30.0, 12.0],
                histosys("jes", [36.0, 28.0, 11.5], [45.0, 31.0, 12.0]),
            ),
            sample(
                "fakes",
                [6.0, 4.0, 1.0],
                histosys("fake_shape", [5.5, 4.2, 0.9], [6.8, 3.6, 1.1]),
            ),
        )
    )


def _spec_shapesys():
    return specs.shapesys_model()


def _spec_staterror():
    return spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0, 2.0], normfactor("mu")),
            sample("bkg", [40.0, 30.0, 12.0], staterror("staterror_SR", [2.0, 3.0, 1.2])),
        )
    )


def _spec_combined():
    """Every modifier type, two channels with 3 and 2 bins."""
    return specs.combined(LUMI_CONFIG, "staterror_SR")


def _spec_correlated():
    """Same normsys/histosys names on several samples in two channels; one name shared by a
    normsys and a histosys (as ATLAS workspaces do)."""
    return spec(
        channel(
            "SR_a",
            sample(
                "signal",
                [6.0, 9.0],
                normfactor("mu"),
                normsys("JES", 0.92, 1.07),
                histosys("JES", [5.5, 9.2], [6.6, 8.7]),
            ),
            sample(
                "bkg",
                [30.0, 25.0],
                normsys("JES", 0.95, 1.03),
                histosys("JES", [28.0, 26.0], [32.5, 24.0]),
                normsys("bkg_norm", 0.8, 1.25),
                histosys("JER", [29.0, 24.0], [31.0, 26.5]),
            ),
        ),
        channel(
            "SR_b",
            sample(
                "signal",
                [3.0, 4.0, 2.5, 1.0],
                normfactor("mu"),
                normsys("JES", 0.9, 1.12),
                histosys("JES", [2.8, 4.1, 2.2, 0.9], [3.3, 3.9, 2.7, 1.2]),
            ),
            sample(
                "bkg",
                [20.0, 18.0, 9.0, 4.0],
                normsys("JES", 0.97, 1.02),
                histosys("JER", [19.0, 18.5, 8.0, 4.2], [21.5, 17.0, 9.5, 3.7]),
                normsys("bkg_norm", 0.85, 1.2),
            ),
        ),
    )


def _spec_missing_samples():
    """Three channels with 1, 2 and 4 bins; samples absent from some channels."""
    return specs.three_channels(
        ("ch_b_twobins", "ch_a_onebin", "ch_c_fourbins"), (2.0, 1.0), "staterror_a"
    )


def _spec_staterror_several_samples():
    """One staterror on three samples (combined per bin), a second one in another channel,
    and a bin whose uncertainty is zero on every sample (pyhf fixes that gamma)."""
    return spec(
        channel(
            "SR",
            sample(
                "signal",
                [5.0, 8.0, 2.0, 1.0],
                normfactor("mu"),
                staterror("staterror_SR", [1.0, 1.5, 0.0, 0.4]),
            ),
            sample(
                "bkg_a", [40.0, 30.0, 12.0, 6.0], staterror("staterror_SR", [3.0, 2.0, 0.0, 1.1])
            ),
            sample("bkg_b", [10.0, 0.0, 4.0, 2.0], staterror("staterror_SR", [1.0, 0.0, 0.0, 0.5])),
            sample("bkg_nostat", [5.0, 5.0, 5.0, 5.0]),
        ),
        channel(
            "CR",
            sample("bkg_a", [100.0, 80.0], staterror("staterror_CR", [5.0, 4.0])),
            sample("bkg_b", [30.0, 20.0], staterror("staterror_CR", [2.0, 3.0])),
        ),
    )


def _spec_shapesys_zero_nominal():
    """A shapesys bin with zero nominal and one with zero uncertainty (pyhf fixes both)."""
    return spec(
        channel(
            "SR",
            sample("signal", [5.0, 8.0, 2.0, 3.0], normfactor("mu")),
            sample("bkg", [40.0, 0.0, 12.0, 9.0], shapesys("bkg_unc", [4.0, 1.0, 1.5, 0.0])),
            sample("other", [2.0, 3.0, 1.0, 1.0], shapesys("other_unc", [0.4, 0.5, 0.1, 0.2])),
        )
    )


def _spec_user_parameters():
    """User parameter configurations: fixed, inits, bounds, sigmas, auxdata."""
    return spec(
        channel(
            "SR",
            sample(
                "signal",
                [5.0, 8.0, 2.0],
                normfactor("SigXsecOverSM"),
                lumi(),
                normsys("sig_acc", 0.9, 1.1),
            ),
            sample(
                "bkg",
                [40.0, 30.0, 12.0],
                lumi(),
                normfactor("mu_bkg"),
                normfactor("k_fixed"),
                normsys("bkg_xsec", 0.85, 1.2),
                histosys("bkg_shape", [38.0, 30.0, 13.0], [42.0, 29.5, 11.0]),
                staterror("staterror_SR", [2.0, 3.0, 1.2]),
            ),
        ),
        parameters=[
            {
                "name": "lumi",
                "auxdata": [1.0],
                "sigmas": [0.05],
                "inits": [1.02],
                "bounds": [[0.7, 1.3]],
            },
            {"name": "SigXsecOverSM", "inits": [0.5], "bounds": [[-2.0, 20.0]]},
            {"name": "mu_bkg", "bounds": [[0.5, 2.0]]},
            {"name": "k_fixed", "fixed": True, "inits": [1.3], "bounds": [[0.0, 3.0]]},
            {"name": "bkg_xsec", "fixed": True, "inits": [0.5]},
            {"name": "sig_acc", "auxdata": [0.3], "bounds": [[-4.0, 4.0]]},
            {"name": "bkg_shape", "inits": [-0.2], "auxdata": [-0.5]},
            {"name": "staterror_SR", "inits": [1.0, 1.1, 0.9], "bounds": [[0.5, 1.5]] * 3},
        ],
    )


def _spec_shapefactor_shared():
    """One shapefactor on two channels with the same number of bins (pyhf shares it)."""
    return spec(
        channel(
            "SR",
            sample("signal", [4.0, 6.0], normfactor("mu")),
            sample("bkg", [30.0, 20.0], shapefactor("sf_shared"), normsys("bkg_xsec", 0.9, 1.1)),
        ),
        channel(
            "CR",
            sample("bkg", [300.0, 220.0], shapefactor("sf_shared")),
            sample("other", [10.0, 12.0], shapefactor("sf_other")),
        ),
    )


def _spec_constraint_configs():
    """User sigmas for a staterror, user auxdata/factors for a shapesys, a staterror bin whose
    total nominal is zero, and a fixed POI."""
    return spec(
        channel(
            "SR",
            sample(
                "signal",
                [5.0, 8.0, 0.0],
                normfactor("mu"),
                staterror("staterror_SR", [0.5, 0.8, 0.0]),
            ),
            sample(
                "bkg",
                [40.0, 30.0, 0.0],
                staterror("staterror_SR", [2.0, 3.0, 0.0]),
                shapesys("bkg_shapesys", [4.0, 3.0, 0.0]),
            ),
            sample("other", [3.0, 3.0, 3.0], shapesys("other_shapesys", [0.5, 0.6, 0.3])),
        ),
        channel(
            "CR",
            sample("bkg", [100.0, 90.0], staterror("staterror_CR", [5.0, 4.0])),
        ),
        parameters=[
            {"name": "mu", "fixed": True, "inits": [1.5]},
            {"name": "staterror_CR", "sigmas": [0.08, 0.03]},
            {
                "name": "other_shapesys",
                "auxdata": [30.0, 20.0, 90.0],
                "factors": [36.0, 25.0, 100.0],
            },
        ],
    )


def _spec_no_poi():
    return spec(
        channel(
            "SR",
            sample("bkg", [40.0, 30.0], normsys("bkg_xsec", 0.85, 1.2)),
            sample("other", [10.0, 12.0], shapesys("other_unc", [1.0, 2.0])),
        )
    )


def _simplemodel_uncorrelated():
    return specs.simple_uncorrelated()


def _simplemodel_correlated():
    return specs.simple_correlated()


# case id -> (spec factory, poi_name, modifier_settings)
CASES = {
    "simplemodels_uncorrelated": (_simplemodel_uncorrelated, "mu", None),
    "simplemodels_correlated": (_simplemodel_correlated, "mu", None),
    "simplemodels_correlated_code0": (_simplemodel_correlated, "mu", CODES_1),
    "normfactor": (_spec_normfactor, "mu", None),
    "shapefactor": (_spec_shapefactor, "mu", None),
    "lumi": (_spec_lumi, "mu", None),
    "normsys_code4": (_spec_normsys, "mu", CODES_4),
    "normsys_code1": (_spec_normsys, "mu", CODES_1),
    "normsys_default": (_spec_normsys, "mu", None),
    "histosys_code4p": (_spec_histosys, "mu", CODES_4),
    "histosys_code0": (_spec_histosys, "mu", CODES_1),
    "histosys_default": (_spec_histosys, "mu", None),
    "shapesys": (_spec_shapesys, "mu", None),
    "staterror": (_spec_staterror, "mu", None),
    "combined_code4": (_spec_combined, "mu", CODES_4),
    "combined_code1": (_spec_combined, "mu", CODES_1),
    "combined_mixed_codes": (
        _spec_combined,
        "mu",
        {"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code4p"}},
    ),
    "correlated_code4": (_spec_correlated, "mu", CODES_4),
    "correlated_code1": (_spec_correlated, "mu", CODES_1),
    "missing_samples": (_spec_missing_samples, "mu", None),
    "staterror_several_samples": (_spec_staterror_several_samples, "mu", None),
    "shapesys_zero_nominal": (_spec_shapesys_zero_nominal, "mu", None),
    "user_parameters": (_spec_user_parameters, "SigXsecOverSM", None),
    "user_parameters_code1": (_spec_user_parameters, "SigXsecOverSM", CODES_1),
    "poi_other_normfactor": (_spec_combined, "mu_ttbar", None),
    "no_poi": (_spec_no_poi, None, None),
    "shapefactor_shared": (_spec_shapefactor_shared, "mu", None),
    "constraint_configs": (_spec_constraint_configs, "mu", None),
}


# --------------------------------------------------------------------------- building
def _settings_kwargs(settings):
    return {} if settings is None else {"modifier_settings": copy.deepcopy(settings)}


def build_pair(model_spec, poi_name, settings):
    """(pyhf model, diffhep model) from the same spec."""
    pmodel = pyhf.Model(copy.deepcopy(model_spec), poi_name=poi_name, **_settings_kwargs(settings))
    dmodel = diffhep.Model.from_spec(
        copy.deepcopy(model_spec), poi_name=poi_name, **_settings_kwargs(settings)
    )
    return pmodel, dmodel


@functools.cache
def case_models(case_id):
    factory, poi_name, settings = CASES[case_id]
    return build_pair(factory(), poi_name, settings)


def _modifier_types(pmodel):
    types = {}
    for name, mtype in pmodel.config.modifiers:
        types.setdefault(name, set()).add(mtype)
    return types


def _interp_slices(pmodel):
    """Parameter indices of normsys/histosys parameters (the ones that interpolate)."""
    types = _modifier_types(pmodel)
    idx = []
    for name in pmodel.config.par_order:
        if types.get(name, set()) & {"normsys", "histosys"}:
            sl = pmodel.config.par_slice(name)
            idx += list(range(sl.start, sl.stop))
    return idx


def random_points(pmodel, n, seed, alpha_range=(-3.0, 3.0), max_tries=200):
    """Random points within the suggested bounds at which pyhf's expected yields are positive.

    Interpolating parameters (normsys/histosys) are drawn from ``alpha_range`` so that the
    extrapolation regions |alpha| > 1 are probed; others from a range around their init.
    """
    rng = np.random.default_rng(seed)
    types = _modifier_types(pmodel)
    bounds = np.asarray(pmodel.config.suggested_bounds(), dtype=float)
    init = np.asarray(pmodel.config.suggested_init(), dtype=float)
    lo_r, hi_r = np.empty_like(init), np.empty_like(init)
    for name in pmodel.config.par_order:
        sl = pmodel.config.par_slice(name)
        t = types.get(name, set())
        if t & {"normsys", "histosys"}:
            lo_r[sl], hi_r[sl] = alpha_range
        elif "normfactor" in t:
            lo_r[sl], hi_r[sl] = 0.2, 3.0
        else:  # gammas, lumi, shapefactor
            lo_r[sl], hi_r[sl] = init[sl] * 0.7, init[sl] * 1.3
    lo_r = np.clip(lo_r, bounds[:, 0], bounds[:, 1])
    hi_r = np.clip(hi_r, bounds[:, 0], bounds[:, 1])
    points = []
    for _ in range(max_tries):
        p = rng.uniform(lo_r, hi_r)
        if np.all(pmodel.expected_actualdata(p) > 0):
            points.append(p)
        if len(points) == n:
            return points
    raise AssertionError("could not draw enough points with positive expected yields")


def boundary_points(pmodel):
    """All interpolating parameters set to the same value: at, inside and beyond +-1."""
    idx = _interp_slices(pmodel)
    if not idx:
        return []
    init = np.asarray(pmodel.config.suggested_init(), dtype=float)
    points = []
    for value in (-2.5, -1.0 - 1e-7, -1.0, -0.999, -0.4, 0.0, 0.25, 0.999, 1.0, 1.0 + 1e-7, 2.5):
        p = init.copy()
        p[idx] = value
        if np.all(pmodel.expected_actualdata(p) > 0):
            points.append(p)
    return points


def datasets(pmodel, seed):
    """Asimov-like data at a random point, and Poisson-fluctuated counts with pyhf's auxdata."""
    rng = np.random.default_rng(seed)
    (p_asimov,) = random_points(pmodel, 1, seed + 1000, alpha_range=(-1.5, 1.5))
    asimov = np.asarray(pmodel.expected_data(p_asimov), dtype=float)
    counts = rng.poisson(pmodel.expected_actualdata(pmodel.config.suggested_init()))
    observed = np.concatenate([counts.astype(float), np.asarray(pmodel.config.auxdata)])
    return {"asimov": asimov, "poisson": observed}


def all_points(pmodel, seed=0):
    init = np.asarray(pmodel.config.suggested_init(), dtype=float)
    return [init, *random_points(pmodel, 5, seed), *boundary_points(pmodel)]


def pyhf_logpdf(pmodel, pars, data):
    return float(pmodel.logpdf(np.asarray(pars), np.asarray(data))[0])


@eqx.filter_jit
def _jit_logpdf(model, pars, data):
    return model.logpdf(pars, data)


@eqx.filter_jit
def _jit_call(model, method, *args):
    return getattr(model, method)(*args)


@eqx.filter_jit
def _jit_auxdata(model):
    return model.auxdata


@eqx.filter_jit
def _jit_evaluate(model, pars, data_sets):
    """Expected data with and without auxdata, and the logpdf of every row of ``data_sets``."""
    logpdfs = jax.vmap(model.logpdf, in_axes=(None, 0))(pars, data_sets)
    return model.expected_data(pars), model.expected_data(pars, include_auxdata=False), logpdfs


def diffhep_logpdf(dmodel, pars, data):
    """diffhep's logpdf (compiled once per model: eager dispatch would dominate the run time)."""
    value = _jit_logpdf(dmodel, jnp.asarray(pars), jnp.asarray(data))
    assert jnp.shape(value) == ()
    return float(value)


def assert_config_matches(pmodel, dmodel):
    pc, dc = pmodel.config, dmodel.config
    assert list(dc.par_order) == list(pc.par_order)
    assert list(dc.par_names) == list(pc.par_names)
    assert dc.npars == pc.npars
    assert list(dc.channels) == list(pc.channels)
    assert list(dc.samples) == list(pc.samples)
    assert dict(dc.channel_nbins) == dict(pc.channel_nbins)
    assert sorted(map(tuple, dc.modifiers)) == sorted(map(tuple, pc.modifiers))
    assert dc.poi_index == pc.poi_index
    assert dc.poi_name == pc.poi_name
    for name in pc.par_order:
        assert dc.par_slice(name) == pc.par_slice(name), name
    np.testing.assert_allclose(dc.suggested_init(), pc.suggested_init(), rtol=RTOL, atol=0)
    np.testing.assert_allclose(
        np.asarray(dc.suggested_bounds(), dtype=float),
        np.asarray(pc.suggested_bounds(), dtype=float),
        rtol=RTOL,
        atol=0,
    )
    assert [bool(x) for x in dc.suggested_fixed()] == [bool(x) for x in pc.suggested_fixed()]
    np.testing.assert_allclose(dc.auxdata, pc.auxdata, rtol=RTOL, atol=0)
    np.testing.assert_allclose(_jit_auxdata(dmodel), pc.auxdata, rtol=RTOL, atol=0)
    assert len(dc.auxdata) == len(pc.auxdata)


def assert_numbers_match(pmodel, dmodel, points, data_sets):
    labels = list(data_sets)
    stacked = jnp.asarray(np.stack([np.asarray(data_sets[k], dtype=float) for k in labels]))
    for pars in points:
        full, main, logpdfs = _jit_evaluate(dmodel, jnp.asarray(pars), stacked)
        np.testing.assert_allclose(
            np.asarray(full),
            pmodel.expected_data(pars),
            rtol=RTOL,
            atol=0,
            err_msg=f"expected_data at {pars}",
        )
        np.testing.assert_allclose(
            np.asarray(main),
            pmodel.expected_data(pars, include_auxdata=False),
            rtol=RTOL,
            atol=0,
            err_msg=f"expected_data(include_auxdata=False) at {pars}",
        )
        for label, got in zip(labels, np.asarray(logpdfs), strict=True):
            expected = pyhf_logpdf(pmodel, pars, data_sets[label])
            assert np.isfinite(expected)
            np.testing.assert_allclose(
                got, expected, rtol=RTOL, atol=0, err_msg=f"logpdf ({label} data) at {pars}"
            )


# --------------------------------------------------------------------------- hand-built specs
@pytest.mark.parametrize("case_id", list(CASES))
def test_config_matches_pyhf(case_id):
    pmodel, dmodel = case_models(case_id)
    assert_config_matches(pmodel, dmodel)


@pytest.mark.parametrize("case_id", list(CASES))
def test_logpdf_and_expected_data_match_pyhf(case_id):
    pmodel, dmodel = case_models(case_id)
    assert_numbers_match(pmodel, dmodel, all_points(pmodel), datasets(pmodel, seed=1))


@pytest.mark.parametrize(
    "case_id", ["combined_code4", "correlated_code1", "staterror_several_samples"]
)
def test_main_and_constraint_terms_match_pyhf(case_id):
    pmodel, dmodel = case_models(case_id)
    nmain = pmodel.config.nmaindata
    data = datasets(pmodel, seed=2)["poisson"]
    main, aux = jnp.asarray(data[:nmain]), jnp.asarray(data[nmain:])
    for pars in random_points(pmodel, 3, seed=3):
        p = jnp.asarray(pars)
        np.testing.assert_allclose(
            float(_jit_call(dmodel, "mainlogpdf", main, p)),
            float(np.squeeze(pmodel.mainlogpdf(data[:nmain], pars))),
            rtol=RTOL,
        )
        np.testing.assert_allclose(
            float(_jit_call(dmodel, "constraint_logpdf", aux, p)),
            float(np.squeeze(pmodel.constraint_logpdf(data[nmain:], pars))),
            rtol=RTOL,
        )
        np.testing.assert_allclose(
            np.asarray(_jit_call(dmodel, "expected_auxdata", p)),
            pmodel.expected_auxdata(pars),
            rtol=RTOL,
        )
        np.testing.assert_allclose(
            np.asarray(_jit_call(dmodel, "expected_actualdata", p)),
            pmodel.expected_actualdata(pars),
            rtol=RTOL,
        )


def test_eager_logpdf_is_a_scalar_equal_to_pyhf():
    """Without jit: logpdf is a scalar (pyhf's has shape (1,)) with the same value."""
    pmodel, dmodel = case_models("simplemodels_uncorrelated")
    data = datasets(pmodel, seed=20)["poisson"]
    pars = np.asarray(pmodel.config.suggested_init(), dtype=float) * 1.1
    value = dmodel.logpdf(pars, data)
    assert jnp.shape(value) == ()
    assert pmodel.logpdf(pars, data).shape == (1,)
    np.testing.assert_allclose(float(value), pyhf_logpdf(pmodel, pars, data), rtol=RTOL)
    np.testing.assert_allclose(
        np.asarray(dmodel.expected_data(pars.tolist(), include_auxdata=False)),
        pmodel.expected_data(pars, include_auxdata=False),
        rtol=RTOL,
    )


@pytest.mark.parametrize("case_id", list(CASES))
def test_eager_calls_evaluate_in_numpy_and_match_pyhf(case_id, caplog):
    """Called on concrete values (no JAX transformation), the likelihood evaluates in numpy,
    compiling nothing (jax.numpy compiled one XLA program per operation and shape: ~160, ~5 s of
    CPU for the first eager logpdf of sbottom RegionA in a process), with pyhf's numbers at
    every point, the boundaries alpha = +-1 and the extrapolation regions included."""
    pmodel, dmodel = case_models(case_id)
    data = datasets(pmodel, seed=1)["poisson"]
    nmain = pmodel.config.nmaindata
    points = all_points(pmodel)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        got = [
            (dmodel.logpdf(p, data), dmodel.expected_data(p), dmodel.mainlogpdf(data[:nmain], p))
            for p in points
        ]
    compiled = [r.getMessage()[:80] for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiled, compiled
    for pars, (logpdf, expected, main) in zip(points, got, strict=True):
        assert isinstance(logpdf, np.floating) and isinstance(expected, np.ndarray)
        np.testing.assert_allclose(logpdf, pyhf_logpdf(pmodel, pars, data), rtol=RTOL)
        np.testing.assert_allclose(expected, pmodel.expected_data(pars), rtol=RTOL)
        ref = float(np.squeeze(pmodel.mainlogpdf(data[:nmain], pars)))
        np.testing.assert_allclose(main, ref, rtol=RTOL)


@pytest.mark.parametrize("mu", [1e-12, 0.0, -1e-3, 0.7])
def test_eager_equals_jitted_and_closed_form_at_the_poisson_floor(mu):
    """At and below :data:`POISSON_FLOOR` (tiny, zero and negative expected yields, which pyhf
    cannot evaluate) the eager numpy evaluation equals the jitted one and the closed form:
    ``n log(lam) - lam - log(n!)`` above the floor; below it the tangent at the floor for a bin
    with events and ``-lam`` for a bin without."""
    from scipy.special import gammaln

    floor = diffhep.stats.model.POISSON_FLOOR
    ws = diffhep.Workspace(
        {
            "channels": [
                {
                    "name": "ch",
                    "samples": [
                        {
                            "name": "sig",
                            "data": [5.0, 2.0],
                            "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                        }
                    ],
                }
            ],
            "observations": [{"name": "ch", "data": [3.0, 0.0]}],
            "measurements": [
                {
                    "name": "m",
                    "config": {"poi": "mu", "parameters": [{"name": "mu", "bounds": [[-5, 5]]}]},
                }
            ],
            "version": "1.0.0",
        }
    )
    model = ws.model()
    data = np.asarray(ws.data(model), dtype=float)
    pars = np.array([mu])
    eager = model.logpdf(pars, data)
    jitted = jax.jit(lambda m, p, d: m.logpdf(p, d))(model, jnp.asarray(pars), jnp.asarray(data))
    assert isinstance(eager, np.floating)
    expected = 0.0
    for n, lam in zip((3.0, 0.0), (5.0 * mu, 2.0 * mu), strict=True):
        if lam > floor:
            term = n * np.log(lam) - lam
        elif n > 0:
            term = n * (np.log(floor) + (lam - floor) / floor) - lam
        else:
            term = -lam
        expected += term - gammaln(n + 1.0)
    np.testing.assert_allclose(float(eager), expected, rtol=1e-12)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-12)


def test_a_model_is_a_pytree_of_float_arrays():
    """Every leaf of a model is a float array (the symmetrised-parameter mask too), so the
    JAX idioms on pytrees work: ``jax.grad`` with respect to a model (its template gradient
    equals central finite differences) and a tree map over its leaves, after which the model
    fits exactly as before (a bool leaf broke both: grad refuses bools, the fit's restart
    masks refused floats)."""
    ws = diffhep.Workspace(diffhep.stats.workspace.example_spec())
    model = ws.model()
    data = jnp.asarray(ws.data(model))
    assert all(jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)
               for leaf in jax.tree.leaves(model))  # fmt: skip
    pars = jnp.asarray(model.config.suggested_init(), jnp.float64) + 0.1
    # compiled: the gradient once, the likelihood once for the four shifted models (op by
    # op: 121 compilations)
    logpdf = jax.jit(lambda m: m.logpdf(pars, data))
    grad = jax.jit(jax.grad(lambda m: m.logpdf(pars, data)))(model)
    h = 1e-5
    nominal = np.asarray(model.nominal)
    for i, j in ((0, 0), (1, 1)):
        up = model.with_yields(nominal=jnp.asarray(nominal).at[i, j].add(h))
        down = model.with_yields(nominal=jnp.asarray(nominal).at[i, j].add(-h))
        fd = (float(logpdf(up)) - float(logpdf(down))) / (2 * h)
        assert float(grad.nominal[i, j]) == pytest.approx(fd, rel=1e-6)
    fit = jax.jit(lambda m, d: diffhep.infer.fit(m, d).bestfit)
    mapped = jax.tree.map(lambda x: x * 1.0, model)
    np.testing.assert_array_equal(np.asarray(fit(mapped, data)), np.asarray(fit(model, data)))


def test_interpolation_codes_differ():
    """Guard against a comparison that passes trivially: the codes give different numbers."""
    _, d4 = case_models("combined_code4")
    _, d1 = case_models("combined_code1")
    pars = np.asarray(d4.config.suggested_init(), dtype=float)
    for name in ("jes", "wjets_shape", "sig_theory"):
        pars[d4.config.par_slice(name)] = 0.5
    pars = jnp.asarray(pars)
    assert not np.allclose(
        _jit_call(d4, "expected_actualdata", pars),
        _jit_call(d1, "expected_actualdata", pars),
        rtol=1e-6,
    )


def test_partial_modifier_settings_match_pyhf():
    """pyhf applies modifier_settings as given: a type left out gets the modifier's own
    default code (normsys code1, histosys code0), not the model default."""
    model_spec = _spec_combined()
    for settings in (
        {"normsys": {"interpcode": "code4"}},
        {"histosys": {"interpcode": "code4p"}},
        {},
    ):
        pmodel, dmodel = build_pair(model_spec, "mu", settings)
        data = datasets(pmodel, seed=4)["poisson"]
        for pars in random_points(pmodel, 2, seed=5, alpha_range=(-0.8, 0.8)):
            np.testing.assert_allclose(
                diffhep_logpdf(dmodel, pars, data),
                pyhf_logpdf(pmodel, pars, data),
                rtol=RTOL,
                err_msg=f"modifier_settings={settings}",
            )


def test_negative_yield_is_clipped_where_pyhf_gives_nan():
    """The one documented difference: a yield driven below zero is floored, not NaN."""
    model_spec = spec(
        channel(
            "SR",
            sample("signal", [1.0, 2.0], normfactor("mu")),
            sample("bkg", [10.0, 10.0], histosys("shape", [2.0, 9.0], [12.0, 11.0])),
        )
    )
    pmodel, dmodel = build_pair(model_spec, "mu", CODES_1)
    pars = np.zeros(2)
    pars[pmodel.config.par_slice("shape")] = -2.0  # bin 0: 10 - 2 * 8 = -6
    pars[pmodel.config.poi_index] = 0.0
    p = jnp.asarray(pars)
    np.testing.assert_allclose(_jit_call(dmodel, "expected_actualdata", p), [-6.0, 8.0])
    data = np.concatenate([[3.0, 9.0], pmodel.config.auxdata])
    with np.errstate(invalid="ignore", divide="ignore"):
        assert not np.isfinite(pyhf_logpdf(pmodel, pars, data))
    assert np.isfinite(diffhep_logpdf(dmodel, pars, data))
    assert int(_jit_call(dmodel, "n_clipped", p)) == 1
    grad = jax.grad(lambda q: dmodel.logpdf(q, jnp.asarray(data)))(p)
    assert np.all(np.isfinite(np.asarray(grad)))


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case_id", ["combined_code4", "correlated_code4", "user_parameters"])
def test_gradient_matches_finite_differences(case_id):
    pmodel, dmodel = case_models(case_id)
    data = jnp.asarray(datasets(pmodel, seed=6)["poisson"])
    # stay away from the kinks of the piecewise codes (|alpha| = 1) and from zero
    (pars,) = random_points(pmodel, 1, seed=7, alpha_range=(-0.9, 0.9))
    pars = jnp.asarray(pars)
    f = jax.jit(lambda p, d: dmodel.logpdf(p, d))
    grad = np.asarray(jax.jit(jax.grad(lambda p, d: dmodel.logpdf(p, d)))(pars, data))
    assert np.all(np.isfinite(grad))
    h = 1e-5
    fd = np.empty_like(grad)
    for i in range(pars.shape[0]):
        e = jnp.zeros_like(pars).at[i].set(h)
        fd[i] = (float(f(pars + e, data)) - float(f(pars - e, data))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(fd)))


def test_gradient_with_respect_to_yields():
    """d logpdf / d nominal (the path a network's histograms take) equals finite differences."""
    pmodel, dmodel = case_models("combined_code4")
    data = jnp.asarray(datasets(pmodel, seed=8)["poisson"])
    (pars,) = random_points(pmodel, 1, seed=9, alpha_range=(-0.9, 0.9))
    pars = jnp.asarray(pars)

    def loss(nominal):
        return dmodel.with_yields(nominal=nominal).logpdf(pars, data)

    nominal = dmodel.nominal
    grad = np.asarray(jax.jit(jax.grad(loss))(nominal))
    f = jax.jit(loss)
    h = 1e-5
    mask = np.asarray(nominal) > 0
    fd = np.zeros_like(grad)
    for s, b in zip(*np.nonzero(mask), strict=True):
        e = jnp.zeros_like(nominal).at[s, b].set(h)
        fd[s, b] = (float(f(nominal + e)) - float(f(nominal - e))) / (2 * h)
    np.testing.assert_allclose(grad[mask], fd[mask], rtol=1e-6, atol=1e-6 * np.max(np.abs(fd)))


# --------------------------------------------------------------------------- with_yields
def _respec(model_spec, scale):
    """The spec with every sample's yields scaled per sample and bin (templates unchanged)."""
    new = copy.deepcopy(model_spec)
    for ci, ch in enumerate(new["channels"]):
        for si, s in enumerate(ch["samples"]):
            s["data"] = [x * scale(ci, si, b) for b, x in enumerate(s["data"])]
    return new


def _nominal_matrix(dmodel, model_spec):
    """(samples x bins) nominal in diffhep's documented order, from a spec."""
    cfg = dmodel.config
    out = np.zeros((len(cfg.samples), cfg.nmaindata))
    slices = cfg.channel_slices
    for ch in model_spec["channels"]:
        for s in ch["samples"]:
            out[cfg.samples.index(s["name"]), slices[ch["name"]]] = s["data"]
    return out


def _scale(ci, si, b):
    return 1.0 + 0.1 * ci + 0.07 * si - 0.05 * b


def test_with_yields_equals_model_from_spec_with_those_yields():
    base = _spec_combined()
    new_spec = _respec(base, _scale)
    _, dmodel = build_pair(base, "mu", None)
    pnew, dnew = build_pair(new_spec, "mu", None)
    swapped = dmodel.with_yields(nominal=_nominal_matrix(dmodel, new_spec))
    np.testing.assert_allclose(np.asarray(swapped.nominal), np.asarray(dnew.nominal), rtol=0)
    # auxiliary data of shapesys depend on the yields
    np.testing.assert_allclose(np.asarray(_jit_auxdata(swapped)), pnew.config.auxdata, rtol=RTOL)
    data_sets = datasets(pnew, seed=10)
    for pars in random_points(pnew, 4, seed=11):
        for data in data_sets.values():
            expected = pyhf_logpdf(pnew, pars, data)
            np.testing.assert_allclose(diffhep_logpdf(swapped, pars, data), expected, rtol=RTOL)
            np.testing.assert_allclose(diffhep_logpdf(dnew, pars, data), expected, rtol=RTOL)
        np.testing.assert_allclose(
            np.asarray(_jit_call(swapped, "expected_data", jnp.asarray(pars))),
            pnew.expected_data(pars),
            rtol=RTOL,
        )


def test_with_yields_all_templates_equals_model_from_spec():
    """Replacing every kind of template gives the model of the modified spec."""
    base = _spec_combined()
    new_spec = _respec(base, _scale)
    for ch in new_spec["channels"]:
        for s in ch["samples"]:
            for m in s["modifiers"]:
                if m["type"] == "normsys":
                    m["data"] = {"lo": m["data"]["lo"] - 0.02, "hi": m["data"]["hi"] + 0.03}
                elif m["type"] == "histosys":
                    m["data"] = {
                        "lo_data": _scaled(m["data"]["lo_data"], 0.97),
                        "hi_data": _scaled(m["data"]["hi_data"], 1.04),
                    }
                elif m["type"] in ("staterror", "shapesys"):
                    m["data"] = _scaled(m["data"], 1.3)
    _, dmodel = build_pair(base, "mu", CODES_4)
    pnew, dnew = build_pair(new_spec, "mu", CODES_4)
    names = YIELD_TEMPLATES
    for name in names:
        assert not np.allclose(getattr(dmodel, name), getattr(dnew, name)), name
    swapped = dmodel.with_yields(**{name: getattr(dnew, name) for name in names})
    data = datasets(pnew, seed=12)["poisson"]
    for pars in random_points(pnew, 3, seed=13):
        np.testing.assert_allclose(
            diffhep_logpdf(swapped, pars, data), pyhf_logpdf(pnew, pars, data), rtol=RTOL
        )


def test_with_yields_rejects_wrong_shape():
    _, dmodel = case_models("combined_code4")
    with pytest.raises(ValueError, match="nominal"):
        dmodel.with_yields(nominal=np.ones((1, 1)))


def test_with_yields_does_not_retrace():
    base = _spec_combined()
    _, dmodel = build_pair(base, "mu", None)
    swapped = dmodel.with_yields(nominal=_nominal_matrix(dmodel, _respec(base, _scale)))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def nll(model, pars, data):
        return -model.logpdf(pars, data)

    pars = jnp.asarray(dmodel.config.suggested_init())
    data = jnp.asarray(_jit_call(dmodel, "expected_data", pars))
    a = nll(dmodel, pars, data)
    b = nll(swapped, pars, data)
    c = nll(swapped, pars * 1.01, data)
    assert np.isfinite([a, b, c]).all()
    assert float(a) != float(b)
    np.testing.assert_allclose(float(b), -diffhep_logpdf(swapped, pars, data), rtol=RTOL)
    np.testing.assert_allclose(float(a), -diffhep_logpdf(dmodel, pars, data), rtol=RTOL)


# --------------------------------------------------------------------------- published models
def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sbottom_pair(sbottom_dir, region, point, pyhf_too=True, diffhep_too=True, **kwargs):
    """(pyhf model, diffhep model, pyhf data, diffhep data) of a signal point of a region."""
    spec_ = _load_json(sbottom_dir / region / "BkgOnly.json")
    patch = _load_json(sbottom_dir / region / f"patch.{point}.json")
    pmodel = dmodel = pdata = ddata = None
    if pyhf_too:
        pws = pyhf.Workspace(copy.deepcopy(spec_))
        # pyhf's own schema validation is not under test here (and costs seconds)
        pmodel = pws.model(patches=[copy.deepcopy(patch)], validate=False, **kwargs)
        pdata = np.asarray(pws.data(pmodel), dtype=float)
    if diffhep_too:
        dws = diffhep.Workspace(copy.deepcopy(spec_)).patched(copy.deepcopy(patch))
        dmodel = dws.model(**kwargs)
        ddata = np.asarray(dws.data(dmodel), dtype=float)
    return pmodel, dmodel, pdata, ddata


@pytest.mark.parametrize("point", SBOTTOM_POINTS)
@pytest.mark.parametrize("region", ["RegionA", "RegionB", "RegionC"])
def test_sbottom_matches_pyhf(sbottom_dir, region, point):
    pmodel, dmodel, pdata, ddata = sbottom_pair(sbottom_dir, region, point)
    assert_config_matches(pmodel, dmodel)
    np.testing.assert_allclose(ddata, pdata, rtol=0, atol=0)
    points = [
        np.asarray(pmodel.config.suggested_init(), dtype=float),
        *random_points(pmodel, 5, seed=14, alpha_range=(-2.0, 2.0)),
    ]
    data_sets = {"observed": pdata, "asimov": np.asarray(pmodel.expected_data(points[1]))}
    assert_numbers_match(pmodel, dmodel, points, data_sets)


def test_sbottom_code1_code0_matches_pyhf(sbottom_dir):
    pmodel, dmodel, pdata, _ = sbottom_pair(
        sbottom_dir, "RegionA", "sbottom_1300_850_60", modifier_settings=CODES_1
    )
    points = random_points(pmodel, 3, seed=15, alpha_range=(-2.0, 2.0))
    assert_numbers_match(pmodel, dmodel, points, {"observed": pdata})


def _all_sbottom_patches():
    tarball = Path(__file__).parent / "data" / "pyhf-ins1748602-probability-models.tar.gz"
    with tarfile.open(tarball, "r:gz") as tar:
        names = [m.name for m in tar.getmembers() if "/patch.sbottom_" in m.name]
    out = []
    for name in sorted(names):
        region, fname = name.split("/")[-2:]
        out.append((region, fname[len("patch.") : -len(".json")]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("region", "point"), _all_sbottom_patches())
def test_sbottom_all_patches_match_pyhf(sbottom_dir, region, point):
    try:
        pmodel, _, pdata, _ = sbottom_pair(sbottom_dir, region, point, diffhep_too=False)
    except pyhf.exceptions.InvalidModel as err:
        # a few patches only remove a channel and leave no signal: the POI is then missing,
        # and diffhep must refuse the model as pyhf does
        assert "mu_SIG" in str(err)
        with pytest.raises(diffhep.DiffhepError, match="mu_SIG"):
            sbottom_pair(sbottom_dir, region, point, pyhf_too=False)
        return
    _, dmodel, _, ddata = sbottom_pair(sbottom_dir, region, point, pyhf_too=False)
    np.testing.assert_allclose(ddata, pdata, rtol=0, atol=0)
    init = np.asarray(pmodel.config.suggested_init(), dtype=float)
    (pars,) = random_points(pmodel, 1, seed=16, alpha_range=(-1.5, 1.5))
    assert_numbers_match(pmodel, dmodel, [init, pars], {"observed": pdata})
