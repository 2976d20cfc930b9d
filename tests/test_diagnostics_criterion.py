"""``diffhep pulls`` and ``diffhep fit`` judge a Hessian by one criterion (the fit's: scaled
to a unit diagonal, per-bin blocks and their Schur complement) on badly conditioned models:
staterror gammas with tiny uncertainties, and a direction near the threshold of
undetermined. Where they print uncertainties, these are pyhf's (the inverse of the exact
Hessian of pyhf's likelihood at the best fit).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest
from click.testing import CliRunner

import oracle
import specs
from diagnostics_refs import pyhf_jax
from diffhep.cli import main


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _spec(staterror, bkg=1000.0, n_normsys=1, effect=0.1):
    """signal x mu over a background of 5 bins with ``n_normsys`` normsys of relative effect
    ``effect`` and a staterror of relative width ``staterror``; Asimov data."""
    b = [bkg] * 5
    s = [0.02 * bkg * (1 + i) for i in range(5)]
    bmods = [specs.normsys(f"a{g}", 1 / (1 + effect), 1 + effect) for g in range(n_normsys)]
    bmods.append(specs.staterror("st", [staterror * x for x in b]))
    return {
        "version": "1.0.0",
        "channels": [specs.channel("SR", specs.sample("sig", s, specs.normfactor("mu")),
                                   specs.sample("bkg", b, *bmods))],
        "observations": [{"name": "SR", "data": [x + y for x, y in zip(s, b, strict=True)]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    }  # fmt: skip


def _pyhf_uncertainties(spec, bestfit):
    """Square roots of the diagonal of the inverse of pyhf's exact Hessian of -log L at
    ``bestfit`` (by name; inverted scaled to a unit diagonal), by name."""
    with pyhf_jax():
        ws = pyhf.Workspace(spec)
        model = ws.model()
        data = jnp.asarray(ws.data(model))
        names = list(model.config.par_names)
        x = jnp.asarray([bestfit[n] for n in names])
        H = np.asarray(jax.hessian(lambda p: -model.logpdf(p, data)[0])(x))
    s = 1.0 / np.sqrt(np.diag(H))
    cov = np.linalg.inv(H * s[:, None] * s[None, :]) * s[:, None] * s[None, :]
    return dict(zip(names, np.sqrt(np.diag(cov)), strict=True))


def _by_name(pulls):
    return {p["name"]: p["uncertainty"] for p in pulls["parameters"] + pulls["normfactors"]}


@pytest.mark.parametrize("staterror", [1e-9, 1e-10, 1e-12])
def test_pulls_of_staterror_gammas_with_tiny_uncertainties(tmp_path, staterror):
    """A staterror of relative width 1e-9 puts 1e18 on the Hessian's diagonal: the rounding
    of the unscaled eigenvalues made the smallest one negative (-15, -1e4, -2e8 for these
    widths; scaled the Hessian is well conditioned, smallest eigenvalue 0.11), and pulls
    said 'not positive definite' (exit 1) while fit printed every uncertainty. Now both
    print them, pyhf's."""
    spec = _spec(staterror)
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    fit = run(["fit", path])
    assert fit.exit_code == 0, fit.output
    fit = json.loads(fit.stdout)
    pulls = run(["pulls", path])
    assert pulls.exit_code == 0, pulls.output
    got = _by_name(json.loads(pulls.stdout))
    # Asimov data: the best fit is where they were made (pyhf's fits fail on this model)
    nominal = {"mu": 1.0, "a0": 0.0, **{f"st[{i}]": 1.0 for i in range(5)}}
    np.testing.assert_allclose([fit["bestfit"][n] for n in nominal], list(nominal.values()),
                               atol=1e-9)  # fmt: skip
    ref = _pyhf_uncertainties(spec, nominal)
    for n in nominal:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-6, err_msg=n)
        np.testing.assert_allclose(fit["uncertainty"][n], ref[n], rtol=1e-6, err_msg=n)
    assert got["st[0]"] < 1e-8 and got["mu"] > 0.1


@pytest.mark.parametrize(("staterror", "undetermined"), [(300.0, False), (1e3, False),
                                                         (1e4, True)])  # fmt: skip
def test_pulls_and_fit_agree_near_the_threshold(tmp_path, staterror, undetermined):
    """A background whose normalisation (two normsys, +-50%) the staterror gammas (relative
    width 1e3) nearly cancel: scaled to a unit diagonal, the Hessian's smallest eigenvalue
    is 5.4e-10 and the Schur complement's (per-bin blocks out) 1.08e-9. pulls compared the
    first with the threshold 1e-9 (dense) and named 6 parameters undetermined (exit 1),
    fit the second and printed them all (pyhf's). Now both judge by the fit's criterion:
    the same uncertainties, or the same parameters named (relative width 1e4: 5.4e-12)."""
    spec = _spec(staterror, n_normsys=2, effect=0.5)
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    fit, pulls = run(["fit", path]), run(["pulls", path])
    assert fit.exit_code == pulls.exit_code == (1 if undetermined else 0), pulls.output
    fit = json.loads(fit.stdout)
    names = list(fit["bestfit"])
    if undetermined:
        said = f"the uncertainties of {', '.join(fit['undetermined'])} are undetermined"
        assert said in pulls.stderr and len(fit["undetermined"]) == 6
        return
    got = _by_name(json.loads(pulls.stdout))
    _, twice_nll = oracle.fit(pyhf.Workspace(spec).data(pyhf.Workspace(spec).model()),
                              pyhf.Workspace(spec).model(), return_fitted_val=True)  # fmt: skip
    np.testing.assert_allclose(fit["twice_nll"], float(twice_nll), rtol=1e-9)
    ref = _pyhf_uncertainties(spec, fit["bestfit"])
    for n in names:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-5, err_msg=n)
        np.testing.assert_allclose(fit["uncertainty"][n], ref[n], rtol=1e-5, err_msg=n)
