"""``diffhep scan`` and ``diffhep gof`` on models whose Hessian at the best fit leaves
parameters undetermined (singular or indefinite: a normfactor without effect, two
normfactors of one sample, the POI degenerate with a normfactor) and on a best fit that does
not converge. The valid numbers against pyhf (``twice_nll`` of its global fit, the profile
from its fixed-value fits, the uncertainty from the profile's curvature); the undetermined
ones null and named with exit 1, as ``diffhep fit``.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pyhf
import pytest
from click.testing import CliRunner
from scipy.special import gammaln, xlogy

import oracle
import specs
from diffhep.cli import main


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


def run(args, code):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "Warning" not in result.output
    return result


def _spec(case):
    """signal x mu over a background (normsys, histosys) in two bins, plus:"""
    spec = specs.bounded_poi_workspace([56.0, 41.0])
    signal, bkg = spec["channels"][0]["samples"]
    if case == "two normfactors":  # kg, k_bkg of one sample: only their product is fixed
        bkg["modifiers"] += [specs.normfactor("kg"), specs.normfactor("k_bkg")]
    elif case == "poi degenerate":  # mu and kg of one sample: the POI undetermined
        signal["modifiers"].append(specs.normfactor("kg"))
    else:  # kg of a sample without events: no effect (a zero row of the Hessian)
        spec["channels"][0]["samples"].append(specs.sample("fakes", [0.0, 0.0],
                                                           specs.normfactor("kg")))  # fmt: skip
        if case == "zero row":  # without the histosys postfit's eigenvalue check refused it
            bkg["modifiers"] = bkg["modifiers"][:1]
    return spec


CASES = ["zero row", "zero row, positive by rounding", "two normfactors", "poi degenerate"]


def _pyhf(spec, poi="mu"):
    model = pyhf.Workspace(spec).model(poi_name=poi)
    return model, pyhf.Workspace(spec).data(model)


def _twice_nll(model, data, value=None):
    _, tn = oracle.fit(data, model, poi_value=value, return_fitted_val=True)
    return float(tn)


@pytest.mark.parametrize("case", CASES)
def test_gof_needs_only_a_converged_best_fit(tmp_path, case):
    """gof refused these models ('the Hessian at the best fit is not positive definite', exit
    1) although its chi2 needs only -log L at the best fit; where the Hessian passed that
    check by rounding it printed p_value NaN (not JSON) for 0 degrees of freedom, with a
    RuntimeWarning of the covariance it did not need. Now: pyhf's twice_nll, the
    saturated model (Poisson terms at the data in closed form, pyhf's constraint terms at
    their maximum), and null where there is no degree of freedom."""
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(_spec(case)))
    g = json.loads(run(["gof", path], code=0).stdout)
    model, data = _pyhf(_spec(case))
    np.testing.assert_allclose(g["twice_nll"], _twice_nll(model, data), rtol=1e-8)
    n = np.asarray(data[: model.config.nmaindata])
    with oracle.pyhf_numpy():  # the constraint terms at the auxiliary data (alphas at 0)
        t = pyhf.tensorlib.astensor
        cons = float(model.constraint_logpdf(t(model.config.auxdata),
                                             t(model.config.suggested_init())))  # fmt: skip
    sat = -2 * (np.sum(xlogy(n, n) - n - gammaln(n + 1)) + cons)
    np.testing.assert_allclose(g["saturated_twice_nll"], sat, rtol=1e-12)
    np.testing.assert_allclose(g["chi2"], g["twice_nll"] - sat, atol=1e-9)
    free_unconstrained = 3 if case == "two normfactors" else 2  # mu, kg (and k_bkg)
    assert g["ndf"] == 2 - free_unconstrained
    assert g["chi2_ndf"] is None and g["p_value"] is None


def _profile_sd(model, data, best, h=0.01):
    """The profile likelihood's curvature at its minimum from three pyhf fixed-value fits:
    the Hessian uncertainty of the scanned parameter with the others profiled."""
    t = [_twice_nll(model, data, best + d) for d in (-h, 0.0, h)]
    return 1.0 / np.sqrt((t[0] - 2 * t[1] + t[2]) / (2 * h * h))


@pytest.mark.parametrize("case", CASES)
def test_scan_profiles_and_names_the_undetermined(tmp_path, case):
    """scan refused these models (not positive definite, nothing named, exit 1) although the
    profile needs only converged refits; where the Hessian passed that check by rounding, a
    scan of kg printed its uncertainty as Infinity (not JSON) with exit 0. Now the profile
    is pyhf's (fixed-value fits), a determined uncertainty is the profile's curvature, and
    an undetermined one is null and named (exit 1, the scan printed); without --range its
    default range does not exist."""
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(_spec(case)))
    model, data = _pyhf(_spec(case))
    values = np.array([0.5, 1.0, 1.5, 2.0])
    r = run(["scan", path, "--range", "0.5,2", "--points", 4],
            code=1 if case == "poi degenerate" else 0)  # fmt: skip
    out = json.loads(r.stdout)
    np.testing.assert_allclose(np.ravel(out["values"]), values)
    ref = [_twice_nll(model, data, v) for v in values]
    np.testing.assert_allclose(out["twice_nll"], ref, rtol=1e-8)
    np.testing.assert_allclose(out["delta_twice_nll"],
                               np.array(ref) - _twice_nll(model, data), atol=1e-7)  # fmt: skip
    if case == "poi degenerate":
        assert out["uncertainty"] == [None] and out["undetermined"] == ["mu"]
        assert "the uncertainties of mu are undetermined (null)" in r.stderr
        r = run(["scan", path], code=1)
        assert r.stdout == "" and "the uncertainty of mu is undetermined" in r.stderr
        assert "--range LO,HI" in r.stderr
    else:
        assert "undetermined" not in out and r.stderr == ""
        np.testing.assert_allclose(out["uncertainty"],
                                   [_profile_sd(model, data, out["bestfit"][0])],
                                   rtol=1e-3)  # fmt: skip
    # the parameter without effect (or only with another one): flat, its uncertainty null
    r = run(["scan", path, "--parameter", "kg", "--range", "0.5,2", "--points", 4], code=1)
    out = json.loads(r.stdout)
    assert out["uncertainty"] == [None] and out["undetermined"] == ["kg"]
    kg_model, _ = _pyhf(_spec(case), poi="kg")
    ref = [_twice_nll(kg_model, data, v) for v in values]
    np.testing.assert_allclose(out["twice_nll"], ref, rtol=1e-8)
    np.testing.assert_allclose(out["delta_twice_nll"], 0.0, atol=1e-7)
    assert "the uncertainties of kg are undetermined (null)" in r.stderr
    assert "\n  fix: " in r.stderr


def test_scan_and_gof_of_a_best_fit_that_did_not_converge(tmp_path, monkeypatch):
    """A best fit stopped after one Newton step (it needs four): gof and scan took theirs
    from postfit, which was not asked; now both go through the fit, and say it did not
    converge (exit 1, nothing printed)."""
    from diffhep.stats import fit

    monkeypatch.setattr(fit, "fit", functools.partial(fit.fit, max_steps=1))
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(specs.bounded_poi_workspace([56.0, 41.0])))
    for args in (["gof", path], ["scan", path], ["scan", path, "--range", "0,2"]):
        r = run(args, code=1)
        assert r.stdout == ""
        assert "the fit did not converge: maximum number of steps reached" in r.stderr, args


def test_scan_keeps_the_rows_whose_refits_converged(tmp_path, monkeypatch):
    """One refit of a scan that does not converge: its row is null and named (exit 1), the
    others are printed and equal pyhf's fixed-value fits; the figure has a gap there (the
    whole scan was lost: exit 1, nothing printed)."""
    from diffhep.stats import diagnostics, solver

    fixed_fits = diagnostics.fixed_fits

    def last_fails(*args, **kwargs):
        best, tn, status = fixed_fits(*args, **kwargs)
        return best, tn, np.where(np.arange(len(status)) == len(status) - 1, solver.MAX_STEPS,
                                  status)  # fmt: skip

    monkeypatch.setattr(diagnostics, "fixed_fits", last_fails)
    spec = specs.bounded_poi_workspace([56.0, 41.0])
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    plot = tmp_path / "scan.png"
    r = run(["scan", path, "--range", "0,2", "--points", "5", "--plot", plot], code=1)
    out = json.loads(r.stdout)
    assert out["not_converged"] == [[2.0]]
    assert out["twice_nll"][-1] is None and out["delta_twice_nll"][-1] is None
    assert "1 of the 5 scan fits did not converge (null rows; first at 2)" in r.stderr
    assert plot.stat().st_size > 0
    model = pyhf.Workspace(spec).model()
    data = pyhf.Workspace(spec).data(model)
    with oracle.pyhf_numpy():
        for mu, got in zip(out["values"][:-1], out["twice_nll"][:-1], strict=True):
            _, tn = pyhf.infer.mle.fixed_poi_fit(mu[0], data, model, return_fitted_val=True)
            np.testing.assert_allclose(got, float(tn), rtol=1e-7)
