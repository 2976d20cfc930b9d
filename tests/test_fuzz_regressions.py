"""Regressions found by fuzzing random pyhf workspaces against pyhf 0.7.6 and a referee.

The campaign (h5-fuzz, 2026-12-07): seeded random models with shapesys (tiny and zero
uncertainties), staterror over several samples and channels, shapefactor, lumi, normfactors
with unusual bounds and inits, fixed parameters, zero observations, 1e5 and 0.1-event
backgrounds. The referee minimises pyhf's own logpdf (multistart L-BFGS-B), so the points
below are pyhf's, not diffhep's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyhf
import pytest

import diffhep
from oracle import pyhf_numpy

# Two channels; ch0's first bin observes 0 events. The global minimum has mu = 0 (and the
# b1 shapesys gamma of that bin near 0); diffhep's free fit from the suggested values ended in
# another minimum (staterror_ch0[0] at its lower bound 1e-10, mu = 1.06, 0.395 higher in
# -2 ln L, status 0) while a model of factors alone ran no search for several minima
# (restarts.may_restart: products of factors make -log L non-convex).
ZERO_BIN_SPEC = {
    "channels": [
        {"name": "ch0", "samples": [
            {"name": "signal", "data": [27.6885, 24.3124, 16.5938, 11.2618], "modifiers": [
                {"name": "mu", "type": "normfactor", "data": None},
                {"name": "staterror_ch0", "type": "staterror",
                 "data": [1.5786, 1.47923, 1.22207, 1.00676]}]},
            {"name": "b0", "data": [58.5441, 64.4353, 53.0822, 27.9582], "modifiers": [
                {"name": "shapesys_ch0_b0", "type": "shapesys",
                 "data": [7.31802, 4.02721, 0.829409, 0.0]},
                {"name": "nf_ch0", "type": "normfactor", "data": None}]},
            {"name": "b1", "data": [46.3675, 45.6153, 21.3555, 15.5484], "modifiers": [
                {"name": "staterror_ch0", "type": "staterror",
                 "data": [13.7521, 2.21623, 3.40308, 6.00415]},
                {"name": "shapesys_ch0_b1", "type": "shapesys",
                 "data": [46.3675, 11.4038, 0.0, 3.88711]}]}]},
        {"name": "ch2", "samples": [
            {"name": "signal", "data": [51.6696],
             "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "b0", "data": [149.958], "modifiers": [
                {"name": "shapesys_ch2_b0", "type": "shapesys", "data": [0.000572043]}]}]},
    ],
    "observations": [
        {"name": "ch0", "data": [0.0, 112.0, 67.0, 55.0]},
        {"name": "ch2", "data": [143.0]},
    ],
    "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": [
        {"name": "nf_ch0", "bounds": [[0.0, 20.0]], "inits": [3.15273]},
        {"name": "mu", "bounds": [[0.0, 30.0]], "inits": [1.25304]}]}}],
    "version": "1.0.0",
}  # fmt: skip

# The referee's minimum (multistart L-BFGS-B on pyhf's logpdf), pyhf's parameter order
ZERO_BIN_MINIMUM = [0.394077, 0.0, 0.735033, 1.012908, 1.002601, 1.0, 0.02187, 1.59041, 1.0,
                    1.548239, 1.0, 0.96457, 1.013533, 1.098478, 1.338037]  # fmt: skip


def _pyhf_twice_nll(spec, point, dmodel) -> float:
    """-2 ln L of pyhf's model of ``spec`` at ``point`` (pyhf's parameter order, which must
    be diffhep's ``dmodel``'s)."""
    with pyhf_numpy():
        ws = pyhf.Workspace(spec)
        model = ws.model()
        data = np.asarray(ws.data(model))
        reference = float(-2.0 * model.logpdf(np.asarray(point), data)[0])
    assert list(dmodel.config.par_names) == list(model.config.par_names)
    return reference


def test_free_fit_is_not_above_a_point_of_pyhfs_likelihood_with_a_zero_count_bin():
    """A converged free fit is never above a point of the same likelihood (pyhf's, at both
    points: its value of this model rounds by ~2e-4, the Poisson constraint of a shapesys
    with tau = 7e10, the same at both points, which hold that gamma at 1)."""
    dws = diffhep.Workspace(ZERO_BIN_SPEC)
    dmodel = dws.model()
    reference = _pyhf_twice_nll(ZERO_BIN_SPEC, ZERO_BIN_MINIMUM, dmodel)
    result = diffhep.infer.fit(dmodel, dws.data(dmodel))
    assert bool(result.converged)
    found = _pyhf_twice_nll(ZERO_BIN_SPEC, np.asarray(result.bestfit), dmodel)
    assert found <= reference + 1e-6, (found, reference)
    assert float(result.twice_nll) == pytest.approx(found, abs=1e-3)


# Three channels with 1e5-event bins: ch2's single bin holds a normfactor (init at its lower
# bound 0.2), a normsys shared with ch0 and one staterror gamma; ch1's b0 has zero yield. The
# fit at mu = 1 ended 0.167 above a point of pyhf's likelihood in a narrow valley (nf_ch2, ns0),
# reported as converged; the hypothesis test's CLs was 0.0499 where pyhf's formulae on the
# referee's fits give 0.0554 (the exclusion at 95% CL flipped). A genuine local minimum: the
# profile in ns0 is bimodal (-0.43 and -1.41) behind a plateau of code4's polynomial (hi
# 1.249, lo 0.967), reached since by the turn restart (restarts._restarts, starts.turn_start).
VALLEY_SPEC = {'channels': [{'name': 'ch0',
               'samples': [{'name': 'signal',
                            'data': [29.2904, 18.8622, 0.0, 25.1143, 41.6685, 52.4444],
                            'modifiers': [{'name': 'mu',
                                           'type': 'normfactor',
                                           'data': None}]},
                           {'name': 'b0',
                            'data': [61.9396, 165.882, 59.5502, 182.68, 132.924, 211.169],
                            'modifiers': [{'name': 'staterror_ch0',
                                           'type': 'staterror',
                                           'data': [22.4208, 9.62412, 17.631, 71.973,
                                                    44.259, 34.8942]},
                                          {'name': 'ns0',
                                           'type': 'normsys',
                                           'data': {'hi': 1.24881, 'lo': 0.967416}},
                                          {'name': 'ns1',
                                           'type': 'normsys',
                                           'data': {'hi': 1.28116, 'lo': 0.943389}}]}]},
              {'name': 'ch1',
               'samples': [{'name': 'signal',
                            'data': [532.442],
                            'modifiers': [{'name': 'mu',
                                           'type': 'normfactor',
                                           'data': None},
                                          {'name': 'staterror_ch1',
                                           'type': 'staterror',
                                           'data': [6.92241]}]},
                           {'name': 'b0',
                            'data': [0.0],
                            'modifiers': [{'name': 'staterror_ch1',
                                           'type': 'staterror',
                                           'data': [0.0]},
                                          {'name': 'shapesys_ch1_b0',
                                           'type': 'shapesys',
                                           'data': [0.0]},
                                          {'name': 'nf_ch1',
                                           'type': 'normfactor',
                                           'data': None}]},
                           {'name': 'b1',
                            'data': [110461.0],
                            'modifiers': [{'name': 'shapesys_ch1_b1',
                                           'type': 'shapesys',
                                           'data': [0.0526717]},
                                          {'name': 'ns1',
                                           'type': 'normsys',
                                           'data': {'hi': 1.26176, 'lo': 0.936538}},
                                          {'name': 'lumi',
                                           'type': 'lumi',
                                           'data': None}]}]},
              {'name': 'ch2',
               'samples': [{'name': 'b0',
                            'data': [74798.8],
                            'modifiers': [{'name': 'staterror_ch2',
                                           'type': 'staterror',
                                           'data': [1079.76]},
                                          {'name': 'nf_ch2',
                                           'type': 'normfactor',
                                           'data': None}]},
                           {'name': 'b1',
                            'data': [144859.0],
                            'modifiers': [{'name': 'staterror_ch2',
                                           'type': 'staterror',
                                           'data': [33390.4]},
                                          {'name': 'ns0',
                                           'type': 'normsys',
                                           'data': {'hi': 1.05398, 'lo': 0.906842}}]},
                           {'name': 'b2',
                            'data': [101698.0],
                            'modifiers': [{'name': 'staterror_ch2',
                                           'type': 'staterror',
                                           'data': [25773.7]}]}]}],
 'observations': [{'name': 'ch0', 'data': [88.0, 160.0, 52.0, 175.0, 166.0, 225.0]},
                  {'name': 'ch1', 'data': [130242.0]},
                  {'name': 'ch2', 'data': [323164.0]}],
 'measurements': [{'name': 'meas',
                   'config': {'poi': 'mu',
                              'parameters': [{'name': 'nf_ch1',
                                              'bounds': [[0.0001, 100.0]],
                                              'inits': [1.0]},
                                             {'name': 'nf_ch2',
                                              'bounds': [[0.2, 3.0]],
                                              'inits': [0.2]},
                                             {'name': 'mu', 'bounds': [[0.0, 30.0]]},
                                             {'name': 'lumi',
                                              'auxdata': [1.0],
                                              'sigmas': [0.1],
                                              'bounds': [[0.5, 1.5]],
                                              'inits': [1.0]},
                                             {'name': 'staterror_ch0', 'fixed': True}]}}],
 'version': '1.0.0'}  # fmt: skip

# The referee's minimum at mu = 1 (pyhf's parameter order) and the referee's CLs (pyhf's
# hypotest with its fits replaced by the referee's multistart minimisation of pyhf's logpdf)
# pyhf's numpy logpdf rounds by ~0.01 here (a shapesys tau of 4e12), far below the 0.17 gap
VALLEY_MU1_MINIMUM = [1.218879, 1.0, 1.75553, 1.276729, -1.428938, -0.391253, 1.0, 1.0, 1.0,
                      1.0, 1.0, 1.0, 1.0, 1.0, 1.000019, 1.0]  # fmt: skip
VALLEY_CLS_REFEREE = 0.05535546


def _valley():
    ws = diffhep.Workspace(VALLEY_SPEC)
    model = ws.model()
    return model, ws.data(model)


def test_fixed_poi_fit_is_not_above_a_point_of_pyhfs_likelihood_in_a_narrow_valley():
    dmodel, ddata = _valley()
    # the referee's point in diffhep's likelihood: pyhf's logpdf is 0.0126 lower at every
    # point of this model (its rounding, above), far below the 0.167 gap
    point = np.asarray(VALLEY_MU1_MINIMUM)
    reference = float(-2.0 * dmodel.logpdf(point, np.asarray(ddata)))
    assert reference == pytest.approx(_pyhf_twice_nll(VALLEY_SPEC, point, dmodel), abs=0.02)
    result = diffhep.infer.fixed_poi_fit(1.0, dmodel, ddata)
    assert not bool(result.converged) or float(result.twice_nll) <= reference + 1e-6, (
        float(result.twice_nll),
        reference,
    )


def test_hypotest_in_a_narrow_valley_matches_the_referee_or_is_flagged():
    model, data = _valley()
    result = diffhep.infer.hypotest(1.0, model, data)
    # within the referee's own precision: its minimisation of pyhf's logpdf (which rounds by
    # ~0.01 here) gives q 0.001 above the q of pyhf's logpdf at the true minima (CLs 7e-4
    # relative); the missed minimum moves CLs by 10%
    assert not bool(result.converged) or float(result.cls_obs) == pytest.approx(
        VALLEY_CLS_REFEREE, rel=2e-3
    )


# The same structure as VALLEY_SPEC before reduction (tests/data/fuzz_asimov_origin.json: a
# shapefactor and a normfactor on one 1e5-event bin, a histosys, lumi, staterror_ch0 fixed).
# The test's fit at mu = 0 (the Asimov data's origin) stopped at -2 ln L 106.82509, status 0,
# above fixed_poi_fit(0.0)'s 106.82230 (the referee's minimum) at XLA's optimisation level 0
# (at the default level the rounding led it to the minimum); the Asimov data differed by up to
# 30% in a bin and q_A was 13.589 instead of 14.331, the expected band 1.5 times the referee's
# (median 2.28e-4 instead of 1.53e-4), reported as converged. A genuine local minimum: the
# profile in ns0 is bimodal (~0.65 and ~0.95) near a plateau of code4's polynomial (hi 1.061,
# lo 0.811), reached since by the turn restart. The referee's expected band (pyhf's hypotest
# on the referee's fits; pyhf's own fits fail on this model):
ASIMOV_ORIGIN_CLS_EXP_REFEREE = [1.587257e-07, 5.370494e-06, 1.532903e-04, 3.174440e-03,
                                 3.793885e-02]  # fmt: skip


def test_hypotest_expected_band_from_the_minimum_at_the_asimov_value():
    spec = json.loads((Path(__file__).parent / "data" / "fuzz_asimov_origin.json").read_text())
    ws = diffhep.Workspace(spec)
    model = ws.model()
    result = diffhep.infer.hypotest(1.0, model, ws.data(model))
    assert not bool(result.converged) or np.allclose(
        np.asarray(result.cls_exp), ASIMOV_ORIGIN_CLS_EXP_REFEREE, rtol=1e-4, atol=0
    ), np.asarray(result.cls_exp)
