"""pyhf's habits work in diffhep (issue 18 items 7 and 12): pyhf's option spellings, its
``fit`` output fields, its ``hypotest`` argument order, and honest fit uncertainties where
the Hessian is singular (references: pyhf through the guarded oracle, and closed forms).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import diffhep
from diffhep.cli import main

pyhf = pytest.importorskip("pyhf")
import oracle  # noqa: E402
from oracle import pyhf_numpy  # noqa: E402

SPEC = diffhep.stats.workspace.example_spec()


@pytest.fixture
def ws_file(tmp_path):
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(SPEC))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_pyhf_spellings_and_output_file(ws_file, tmp_path):
    """``pyhf cls --test-poi 1 --teststat qtilde --backend numpy --optimizer scipy
    --output-file F`` runs: the ignored options get a note, the JSON goes to F only and
    equals what ``--poi-value`` prints."""
    ref = invoke("cls", ws_file, "--poi-value", 1.0)
    assert ref.exit_code == 0, ref.stderr
    out = tmp_path / "cls.json"
    pyhf_args = ["--teststat", "qtilde", "--backend", "numpy", "--optimizer", "scipy"]
    res = invoke("cls", ws_file, "--test-poi", 1.0, *pyhf_args, "--output-file", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert "--backend numpy" in res.stderr and "ignored" in res.stderr
    assert json.loads(out.read_text()) == json.loads(ref.stdout)
    # a missing directory is made (as for --plot); a place no file can go exits 2
    res = invoke("cls", ws_file, "--output-file", tmp_path / "missing" / "x.json")
    assert res.exit_code == 0 and (tmp_path / "missing" / "x.json").exists()
    res = invoke("cls", ws_file, "--output-file", out / "x.json")  # under a file
    assert res.exit_code == 2 and "--output-file" in res.stderr


def test_every_command_with_a_test_statistic_takes_pyhf_teststat():
    """cls, upper-limit and exclusion share one --test-stat option: each parses pyhf's
    ``--teststat q`` (exclusion did not before) and offers the same choices and help."""
    from diffhep.cli.grid import exclusion
    from diffhep.cli.stats import cls, upper_limit

    options = []
    for cmd, args in ((cls, ["ws.json"]), (upper_limit, ["ws.json"]),
                      (exclusion, ["ws.json", "patch.json"])):  # fmt: skip
        assert cmd.make_context(cmd.name, [*args, "--teststat", "q"]).params["test_stat"] == "q"
        opt = next(p for p in cmd.params if p.name == "test_stat")
        options.append((tuple(opt.opts), tuple(opt.type.choices), opt.default, opt.help))
    assert len(set(options)) == 1, options


def test_fit_has_pyhf_fields(ws_file):
    """``fit --value`` gives pyhf's ``mle_parameters`` (values by parameter set) and
    ``twice_nll`` beside the by-name fields; compared with pyhf's ``mle.fit``."""
    res = invoke("fit", ws_file, "--value")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    with pyhf_numpy():
        ws = pyhf.Workspace(SPEC)
        model = ws.model()
    best, twice_nll = oracle.fit(ws.data(model), model, return_fitted_val=True)
    ref = {n: np.asarray(best)[s["slice"]].tolist() for n, s in model.config.par_map.items()}
    assert set(out["mle_parameters"]) == set(ref)
    for name, values in ref.items():
        np.testing.assert_allclose(out["mle_parameters"][name], values, rtol=1e-5, atol=1e-6)
    assert out["twice_nll"] == pytest.approx(float(twice_nll), rel=1e-8)
    assert out["uncertainty_ok"] is True and "undetermined" not in out


def two_normfactors() -> dict:
    """Two free normfactors on one sample: only their product is measured, so the Hessian
    is singular along (a, -b) and neither has an uncertainty of its own."""
    return {
        "version": "1.0.0",
        "channels": [{"name": "ch", "samples": [
            {"name": "sig", "data": [5.0, 8.0], "modifiers": [
                {"name": "mu", "type": "normfactor", "data": None},
                {"name": "k", "type": "normfactor", "data": None}]},
            {"name": "bkg", "data": [50.0, 40.0], "modifiers": [
                {"name": "b_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]}]}],
        "observations": [{"name": "ch", "data": [57.0, 49.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    }  # fmt: skip


def test_fit_singular_hessian_is_said_not_printed_as_zero(tmp_path):
    """Two normfactors of one sample: the fit converges, but their uncertainties are null
    (they were +-0.0), ``uncertainty_ok`` is false, and the command exits 1 naming them;
    the constrained parameter keeps its number."""
    path = tmp_path / "ws.json"
    path.write_text(json.dumps(two_normfactors()))
    res = invoke("fit", path)
    assert res.exit_code == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["uncertainty_ok"] is False
    assert sorted(out["undetermined"]) == ["k", "mu"]
    assert out["uncertainty"]["mu"] is None and out["uncertainty"]["k"] is None
    assert "mu" in res.stderr and "k" in res.stderr and "singular" in res.stderr
    assert out["uncertainty"]["b_norm"] > 0  # constrained: determined, a number


def test_hypotest_accepts_pyhf_argument_order():
    """``diffhep.stats.hypotest.hypotest(poi, data, model)`` (pyhf's order) equals the diffhep
    order; anything else that is not a model is a clear TypeError."""
    diffhep.enable_x64()
    ws = diffhep.Workspace(SPEC)
    model = ws.model()
    data = jnp.asarray(ws.data(model))
    a = diffhep.stats.hypotest.hypotest(1.0, model, data)
    b = diffhep.stats.hypotest.hypotest(1.0, data, model)
    assert float(a.cls_obs) == float(b.cls_obs)
    with pytest.raises(TypeError, match="diffhep Model"):
        diffhep.stats.hypotest.hypotest(1.0, data, data)


def test_discovery_fields_are_named_p0():
    """discovery() reports p-values as p0 / p0_exp (they were in cls_obs / cls_exp); p0 is
    pyhf's q0 p-value."""
    diffhep.enable_x64()
    ws = diffhep.Workspace(SPEC)
    model = ws.model()
    r = diffhep.stats.hypotest.discovery(model, jnp.asarray(ws.data(model)))
    assert not hasattr(r, "cls_obs")
    with pyhf_numpy():
        pws = pyhf.Workspace(SPEC)
        pmodel = pws.model()
    ref = oracle.hypotest(0.0, pws.data(pmodel), pmodel, test_stat="q0")
    assert float(r.p0) == pytest.approx(float(ref), rel=1e-5)
    assert r.p0_exp.shape == (5,)
