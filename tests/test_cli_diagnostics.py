"""The diagnostics commands (diffhep pulls|ranking|correlations|yields|scan|significance|gof)
through click: numbers against pyhf's exact Hessian, cabinetry 0.6.0's ranking, yields and
pulls, closed forms on counting models; figures written; bad input exits 2, a fit that does
not converge exits 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import specs
from diagnostics_refs import small, small_cabinetry_ranking, small_reference, small_workspace
from diffhep.cli import main
from oracle import pyhf_numpy

CASE = "combined"


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture(scope="module")
def ws_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("diag") / "ws.json"
    path.write_text(json.dumps(small_workspace(CASE)))
    return path


def run(args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def _json(args):
    return json.loads(run(args).stdout)


def _png(path):
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_pulls_and_correlations_match_pyhf_and_cabinetry(ws_file, tmp_path):
    import cabinetry

    post, (b, _, unc, corr) = small_reference(CASE)
    with pyhf_numpy():
        pmodel, _ = small(CASE)[2]()
        nominal = cabinetry.model_utils.asimov_parameters(pmodel)
        width = cabinetry.model_utils.prefit_uncertainties(pmodel)
    names = list(pmodel.config.par_names)
    out = _json(["pulls", ws_file, "--plot", tmp_path / "pulls.png"])
    assert out["parameters"]
    for p in out["parameters"]:
        k = names.index(p["name"])
        np.testing.assert_allclose(p["pull"], (b[k] - nominal[k]) / width[k], atol=1e-4)
        np.testing.assert_allclose(p["constraint"], unc[k] / width[k], rtol=1e-4)
    for p in out["normfactors"]:
        k = names.index(p["name"])
        np.testing.assert_allclose(p["bestfit"], b[k], atol=1e-4)
        np.testing.assert_allclose(p["uncertainty"], unc[k], rtol=1e-4)
    _png(tmp_path / "pulls.png")
    out = _json(["correlations", ws_file, "--plot", tmp_path / "corr.png"])
    idx = [names.index(n) for n in out["parameters"]]
    assert len(idx) == int((~post.fixed).sum())
    np.testing.assert_allclose(out["correlation"], corr[np.ix_(idx, idx)], atol=1e-4)
    _png(tmp_path / "corr.png")
    few = _json(["correlations", ws_file, "--threshold", "0.3"])
    assert 0 < len(few["parameters"]) < len(out["parameters"])


def test_ranking_json_matches_cabinetry(ws_file, tmp_path):
    post, _ = small_reference(CASE)
    ref = small_cabinetry_ranking(CASE)
    listed = _json(["ranking", ws_file, "--json", "--plot", tmp_path / "rank.png"])
    assert [set(r) for r in listed] == [
        {"parameter", "prefit_up", "prefit_down", "postfit_up", "postfit_down"}
    ] * len(ref.labels)
    scale = post.uncertainty[small(CASE)[0].config.poi_index]
    by_name = {r["parameter"]: r for r in listed}
    for k, name in enumerate(ref.labels):
        for field in ("prefit_up", "prefit_down", "postfit_up", "postfit_down"):
            np.testing.assert_allclose(
                by_name[name][field], getattr(ref, field)[k], rtol=1e-3, atol=1e-4 * scale,
                err_msg=f"{name} {field}",
            )  # fmt: skip
    size = [max(abs(r["postfit_up"]), abs(r["postfit_down"])) for r in listed]
    assert size == sorted(size, reverse=True)
    _png(tmp_path / "rank.png")
    full = _json(["ranking", ws_file, "--method", "covariance", "--group", "theory=sig_*,jes"])
    assert full["poi"] == "mu" and full["method"] == "covariance"
    np.testing.assert_allclose(full["poi_bestfit"], post.bestfit[small(CASE)[0].config.poi_index])
    assert full["grouped"][0]["group"] == "theory"
    assert set(full["grouped"][0]["parameters"]) == {"sig_theory", "jes"}


def test_yields_match_cabinetry(ws_file, tmp_path):
    import cabinetry

    post, _ = small_reference(CASE)
    with pyhf_numpy():
        pmodel, _ = small(CASE)[2]()
        per_bin, per_chan = cabinetry.model_utils.yield_stdev(
            pmodel, post.bestfit, post.uncertainty, post.correlation
        )
        pre = cabinetry.model_utils.prediction(pmodel)
    out = _json(["yields", ws_file, "--plot", tmp_path / "yields.png"])
    for c_i, c in enumerate(pmodel.config.channels):
        for s_i, s in enumerate(pmodel.config.samples):
            got = out["postfit"][c]["samples"][s]
            np.testing.assert_allclose(got["stdev"], per_bin[c_i][s_i], rtol=1e-4)
            np.testing.assert_allclose(got["sum_stdev"], per_chan[c_i][s_i], rtol=1e-4)
            got = out["prefit"][c]["samples"][s]
            np.testing.assert_allclose(got["yields"], pre.model_yields[c_i][s_i], rtol=1e-10)
        np.testing.assert_allclose(out["postfit"][c]["total"]["stdev"], per_bin[c_i][-1],
                                   rtol=1e-4)  # fmt: skip
    _png(tmp_path / "yields.png")
    md = run(["yields", ws_file, "--format", "markdown"]).stdout
    c0 = pmodel.config.channels[0]
    assert f"## {c0}" in md and "| data |" in md and "(post-fit)" in md


@pytest.fixture(scope="module")
def counting_file(tmp_path_factory):
    spec = {
        "version": "1.0.0",
        "channels": [{"name": "SR", "samples": [
            {"name": "signal", "data": [10.0],
             "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
            {"name": "bkg", "data": [50.0], "modifiers": []},
        ]}],
        "observations": [{"name": "SR", "data": [65.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    }  # fmt: skip
    path = tmp_path_factory.mktemp("counting") / "ws.json"
    path.write_text(json.dumps(spec))
    return path


def test_scan_significance_gof_closed_forms(counting_file, tmp_path):
    s, b, n = 10.0, 50.0, 65.0
    out = _json(["scan", counting_file, "--range", "0,3", "--points", 7,
                 "--plot", tmp_path / "scan.png"])  # fmt: skip
    mus = np.linspace(0, 3, 7)
    lam = mus * s + b
    np.testing.assert_allclose(out["values"], mus[:, None])
    np.testing.assert_allclose(out["delta_twice_nll"], 2 * (lam - n - n * np.log(lam / n)),
                               atol=1e-8)  # fmt: skip
    _png(tmp_path / "scan.png")
    z = _json(["significance", counting_file])
    np.testing.assert_allclose(z["Z_obs"], np.sqrt(2 * (n * np.log(n / b) - (n - b))), rtol=1e-6)
    np.testing.assert_allclose(z["Z_exp"], np.sqrt(2 * ((s + b) * np.log(1 + s / b) - s)),
                               rtol=1e-6)  # fmt: skip
    assert _json(["ranking", counting_file, "--json"]) == []  # nothing but the POI
    g = _json(["gof", counting_file])  # one bin, one free parameter: a perfect fit
    assert g["ndf"] == 0 and abs(g["chi2"]) < 1e-8


def test_gof_of_a_background_only_workspace(tmp_path):
    """gof needs no parameter of interest: on a background-only workspace (the measurement's
    POI mu belongs to the signal sample, not there) it failed like pyhf ('mu' is not a
    parameter, exit 2). Closed form: two bins, the background's normalisation k free, so
    k = sum(n) / sum(b) and chi2 = 2 sum(k b - n - n log(k b / n)), one degree of freedom.
    The commands that need the POI still refuse it."""
    b, n = np.array([50.0, 30.0]), np.array([65.0, 30.0])
    spec = {
        "version": "1.0.0",
        "channels": [{"name": "SR", "samples": [
            {"name": "bkg", "data": b.tolist(),
             "modifiers": [{"name": "k", "type": "normfactor", "data": None}]},
        ]}],
        "observations": [{"name": "SR", "data": n.tolist()}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    }  # fmt: skip
    bkg = tmp_path / "bkg.json"
    bkg.write_text(json.dumps(spec))
    g = _json(["gof", bkg])
    lam = n.sum() / b.sum() * b
    assert g["ndf"] == 1
    np.testing.assert_allclose(g["chi2"], 2 * np.sum(lam - n - n * np.log(lam / n)), rtol=1e-8)
    r = run(["pulls", bkg], code=2)
    assert "parameter of interest" in r.output


def test_bad_input_exits_2_and_non_convergence_exits_1(counting_file, monkeypatch):
    r = run(["scan", counting_file, "--parameter", "nope"], code=2)
    assert "unknown parameter 'nope'" in r.output and "Traceback" not in r.output
    r = run(["scan", counting_file, "--range", "5,1"], code=2)
    assert "--range" in r.output
    r = run(["pulls", counting_file, "--poi-value", "99"], code=2)
    assert "outside the bounds" in r.output
    r = run(["ranking", counting_file, "--group", "nogroup"], code=2)
    assert "NAME=PATTERN" in r.output
    r = run(["ranking", counting_file, "--group", "g=zzz*"], code=2)
    assert "matches no parameter" in r.output

    from diffhep.errors import FitError
    from diffhep.stats import covariance

    def fails(*a, **k):
        raise FitError("the fit did not converge: max steps", fix="check bounds")

    monkeypatch.setattr(covariance, "postfit", fails)
    r = run(["pulls", counting_file], code=1)
    assert "did not converge" in r.output and r.stdout == ""


@pytest.mark.slow
def test_ranking_sbottom_through_cli_matches_pyhf_refits(sbottom_dir, tmp_path):
    """A published likelihood (sbottom RegionA with a signal patch) end to end: the largest
    impacts against pyhf refits with cabinetry's definition (diagnostics_refs.pyhf_impacts)."""
    from diagnostics_refs import pyhf_impacts, sbottom
    from diffhep.stats import covariance as cv

    dmodel, ddata, make = sbottom(sbottom_dir, "RegionA", "sbottom_1000_205_60")
    root = sbottom_dir / "RegionA"
    bounds = tmp_path / "bounds.json"  # mu_SIG's bounds opened as in diagnostics_refs.sbottom
    bounds.write_text(json.dumps([{
        "op": "add", "path": "/measurements/0/config/parameters/-",
        "value": {"name": "mu_SIG", "bounds": [[-10.0, 10.0]]},
    }]))  # fmt: skip
    listed = _json(["ranking", root / "BkgOnly.json", "-p", root / "patch.sbottom_1000_205_60.json",
                    "-p", bounds, "--json"])  # fmt: skip
    post = cv.postfit(dmodel, ddata)
    top = [r["parameter"] for r in listed[:4]]
    ref = pyhf_impacts(make, post, top, fields=("postfit_up", "postfit_down"))
    scale = post.uncertainty[dmodel.config.poi_index]
    for r in listed[:4]:
        for field, value in ref[r["parameter"]].items():
            np.testing.assert_allclose(r[field], value, rtol=1e-3, atol=1e-4 * scale,
                                       err_msg=f"{r['parameter']} {field}")  # fmt: skip


@pytest.fixture
def ranking_figure(monkeypatch):
    """The ranking figure's impact axis limits and title, captured before it is saved."""
    from diffhep.plotting import diagnostics as fit_plots

    drawn, save = {}, fit_plots.save_figure

    def capture(fig, path):
        (impacts,) = [a for a in fig.axes if a.get_xlabel().startswith(r"$\Delta$")]
        drawn.update(xlim=impacts.get_xlim(), title=fig.get_suptitle(), bars=impacts.patches)
        drawn["heights"] = [abs(p.get_width()) for p in impacts.patches]
        save(fig, path)

    monkeypatch.setattr(fit_plots, "save_figure", capture)
    return drawn


def test_ranking_says_when_the_poi_is_at_its_bound(tmp_path, counting_file, ranking_figure):
    """A new user's trial (sbottom RegionA 1300_850_60): mu_SIG's best fit at its lower bound
    0, every refit ends there again, so every refit impact was 0 without a word, and the
    plot's impact axis spanned 1e-12 with no bars. Here data below the background hold mu at
    0 the same way: the output says so (poi_at_bound, notes, a warning on stderr naming
    --method covariance) and the figure gets an impact axis of +-1 POI uncertainty and a
    note. Inside the bounds nothing is said."""
    path = tmp_path / "low.json"
    path.write_text(json.dumps(specs.bounded_poi_workspace([30.0, 15.0])))
    r = run(["ranking", path, "--plot", tmp_path / "rank.png"])
    out = json.loads(r.stdout)
    assert out["poi_bestfit"] == 0.0 and out["poi_at_bound"] == "lower"
    assert {v for e in out["ranking"] for k, v in e.items() if k != "parameter"} == {0.0}
    (note,) = out["notes"]
    assert note.startswith("the best fit of mu (0) is at its lower bound 0 and every refit "
                           "ends there again: all 8 refit impacts are 0.")  # fmt: skip
    assert "truncated at the bound" in note and "--method covariance" in note
    assert f"diffhep: warning: {note}" in r.stderr
    lo, hi = ranking_figure["xlim"]
    np.testing.assert_allclose([lo, hi], [-out["poi_uncertainty"], out["poi_uncertainty"]])
    assert out["poi_uncertainty"] > 0.1  # not an axis of 1e-12
    assert ranking_figure["title"].startswith("All impacts are 0: the best fit of mu is at its "
                                              "lower bound")  # fmt: skip
    _png(tmp_path / "rank.png")
    # --json prints cabinetry's list only: the warning is still given
    r = run(["ranking", path, "--json"])
    assert isinstance(json.loads(r.stdout), list) and note in r.stderr
    # the linear impacts do not see the bound: said too, and the axis is scaled to them
    r = run(["ranking", path, "--method", "covariance", "--plot", tmp_path / "cov.png"])
    cov = json.loads(r.stdout)
    assert cov["poi_at_bound"] == "lower" and "linear (Hessian) impacts ignore" in cov["notes"][0]
    size = max(abs(e["prefit_up"]) for e in cov["ranking"])
    assert size > 0.01
    np.testing.assert_allclose(ranking_figure["xlim"], [-1.2 * size, 1.2 * size])
    assert "linear impacts ignore the bound" in ranking_figure["title"]
    # inside the bounds: null, no notes, no warning
    r = run(["ranking", counting_file])
    out = json.loads(r.stdout)
    assert out["poi_at_bound"] is None and out["notes"] == [] and "warning" not in r.stderr


def _kg_spec(case):
    """A model whose Hessian is singular along kg (and k_bkg)."""
    spec = specs.bounded_poi_workspace([56.0, 41.0])
    samples = spec["channels"][0]["samples"]
    kg = {"name": "kg", "type": "normfactor", "data": None}
    if case == "two normfactors":
        samples[1]["modifiers"] += [kg, {"name": "k_bkg", "type": "normfactor", "data": None}]
        return spec
    samples.append({"name": "fakes", "data": [0.0, 0.0], "modifiers": [kg]})
    if case == "zero row":  # a Hessian with a zero row that postfit's check refused
        samples[1]["modifiers"] = samples[1]["modifiers"][:1]
    return spec


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("zero row", "kg"),
        ("zero row, positive by rounding", "kg"),
        ("two normfactors", "k_bkg, kg"),
    ],
)
def test_pulls_and_ranking_name_the_undetermined_parameter(tmp_path, case, names):
    """A normfactor kg of a sample without events has no effect: the Hessian is singular
    along kg. 'diffhep fit' named it; pulls and ranking said only 'the Hessian at the best
    fit is not positive definite' (zero row), or passed that check by rounding (smallest
    eigenvalue 4e-16) and printed kg's uncertainty as nan and another's as inf. Two
    normfactors of one sample (k_bkg, kg): pulls printed uncertainties of ~3e5 for them."""
    path = tmp_path / "kg.json"
    path.write_text(json.dumps(_kg_spec(case)))
    said = f"the uncertainties of {names} are undetermined"
    assert said in run(["fit", path], code=1).stderr
    for command in ("pulls", "ranking"):
        r = run([command, path], code=1)
        assert said in r.stderr, command
        assert "\n  fix: " in r.stderr and "fix them" in r.stderr and r.stdout == ""
