"""Fit uncertainties: structured (linear in the bins) and honest where the Hessian is singular.

References are closed forms: one channel with a free normfactor on the signal and one
per-bin gamma (staterror or shapesys) on the background has the Hessian of ``-log L``

    H_mu,mu = sum n s^2 / lam^2,  H_mu,gi = n s b / lam^2,  H_gi,gi = n b^2 / lam^2 + c_i

(``lam = mu s + gamma b``; ``c_i = 1 / sigma^2`` for staterror, ``tau / gamma^2`` for
shapesys), whose inverse is the Schur complement of the diagonal gamma block. The CLI runs
in a subprocess, so that a crash (it segfaulted at 300+ bins) fails the test instead of
killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import diffhep

SRC = str(Path(diffhep.__file__).resolve().parents[1])
REL_UNC = 0.1  # background uncertainty per bin, relative


def one_channel(nbins: int, kind: str) -> dict:
    i = np.arange(nbins)
    sig = 1.0 + (i % 5)
    bkg = 50.0 + (i % 7) + 0.01 * (i % 97)
    obs = np.round(bkg + 0.5 * sig + 3.0 * np.sin(i)).astype(float)
    name = {"staterror": "stat", "shapesys": "unc"}[kind]
    return {
        "channels": [
            {
                "name": "ch",
                "samples": [
                    {
                        "name": "sig",
                        "data": sig.tolist(),
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "bkg",
                        "data": bkg.tolist(),
                        "modifiers": [
                            {"name": name, "type": kind, "data": (REL_UNC * bkg).tolist()}
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "ch", "data": obs.tolist()}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def closed_form(spec: dict, kind: str, mu: float, gammas, mu_free: bool = True):
    """Standard deviations of (mu, gammas) from the analytic Hessian (module docstring)."""
    sig, bkg = (np.asarray(s["data"]) for s in spec["channels"][0]["samples"])
    n = np.asarray(spec["observations"][0]["data"])
    g = np.asarray(gammas)
    lam = mu * sig + g * bkg
    if kind == "staterror":
        c = np.full_like(g, 1.0 / REL_UNC**2)
    else:
        c = (1.0 / REL_UNC**2) / g**2  # tau = (b / delta)^2
    d = n * bkg**2 / lam**2 + c
    if not mu_free:
        return None, np.sqrt(1.0 / d)
    a = np.sum(n * sig**2 / lam**2)
    off = n * sig * bkg / lam**2
    var_mu = 1.0 / (a - np.sum(off**2 / d))
    return np.sqrt(var_mu), np.sqrt(1.0 / d + (off / d) ** 2 * var_mu)


def run_cli(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": SRC, "DIFFHEP_CACHE_DIR": ""}
    return subprocess.run(
        [sys.executable, "-c", "from diffhep.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


def check_cli_fit(tmp_path, nbins, kind):
    spec = one_channel(nbins, kind)
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(spec))
    proc = run_cli("fit", path)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    out = json.loads(proc.stdout)
    name = {"staterror": "stat", "shapesys": "unc"}[kind]
    gnames = [f"{name}[{i}]" for i in range(nbins)]
    mu = out["bestfit"]["mu"]
    gammas = [out["bestfit"][k] for k in gnames]
    s_mu, s_g = closed_form(spec, kind, mu, gammas)
    assert out["uncertainty"]["mu"] == pytest.approx(s_mu, rel=1e-8)
    np.testing.assert_allclose([out["uncertainty"][k] for k in gnames], s_g, rtol=1e-8)


@pytest.mark.parametrize("kind", ["staterror", "shapesys"])
def test_cli_fit_1000_bins_matches_closed_form(tmp_path, kind):
    check_cli_fit(tmp_path, 1000, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["staterror", "shapesys"])
def test_cli_fit_10000_bins_matches_closed_form(tmp_path, kind):
    check_cli_fit(tmp_path, 10_000, kind)


_fixed_fit = eqx.filter_jit(diffhep.stats.fit.fixed_poi_fit)


@pytest.mark.parametrize("nbins", [1000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_fixed_poi_gamma_uncertainties_are_independent_closed_form(nbins):
    spec = one_channel(nbins, "shapesys")
    ws = diffhep.Workspace(spec)
    model = ws.model()
    res = _fixed_fit(1.3, model, jnp.asarray(ws.data(model)))
    assert bool(res.converged), res.message
    unc = np.asarray(res.uncertainty)
    assert unc[model.config.poi_index] == 0.0
    gam = np.delete(np.asarray(res.bestfit), model.config.poi_index)
    _, ref = closed_form(spec, "shapesys", 1.3, gam, mu_free=False)
    np.testing.assert_allclose(np.delete(unc, model.config.poi_index), ref, rtol=1e-8)
    assert bool(np.all(np.asarray(res.uncertainty_ok)))
