"""Upper limits inside the POI bounds (issue 18 item 3, issue 20 item 4).

Only POI values inside the POI's bounds are tested; a limit outside the tested range is null
with a flag saying on which side, never a number such as the last scan point; ``--scan`` and
``--poi-bounds`` as pyhf's; a hypotest that does not converge exits 1 naming the POI values;
``--level`` must lie in (0, 1). The reference is pyhf's CLs at the reported limit (guarded
oracle): a limit is where CLs crosses the level.
"""

from __future__ import annotations

import json

import numpy as np
import pyhf
import pytest
from click.testing import CliRunner

import diffhep
import oracle
from diffhep.cli import main
from diffhep.errors import DiffhepError, FitError
from diffhep.stats.workspace import example_spec

# signal scaled so that the observed limit (~5.95) lies inside the POI bounds [0, 10] and the
# +2 sigma expected limit (~12) above them, as on the workspace of issue 18 item 3
SCALE = 0.17


def weak_signal_spec():
    spec = example_spec()
    sig = spec["channels"][0]["samples"][0]
    sig["data"] = [x * SCALE for x in sig["data"]]
    return spec


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")


@pytest.fixture
def weak_ws(tmp_path):
    path = tmp_path / "weak.json"
    path.write_text(json.dumps(weak_signal_spec()))
    return path


def run(args):
    return CliRunner().invoke(main, args)


def pyhf_cls(mu, spec=None, bounds=None):
    """pyhf's CLs (observed, expected x 5) at ``mu`` on the weak-signal workspace."""
    ws = pyhf.Workspace(spec or weak_signal_spec())
    model = ws.model()
    kwargs = {}
    if bounds is not None:
        par = model.config.suggested_bounds()
        par[model.config.poi_index] = tuple(bounds)
        kwargs["par_bounds"] = par
    obs, exp = oracle.hypotest(mu, ws.data(model), model, return_expected_set=True, **kwargs)
    return [float(obs), *map(float, exp)]


def test_cli_limit_outside_the_poi_bounds_is_null_and_flagged(weak_ws):
    """Before: "CLs does not fall below the level" (exit 1) although the observed limit is
    inside the bounds."""
    result = run(["upper-limit", str(weak_ws)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["poi_range"] == [0.0, 10.0]
    assert out["expected"][4] is None
    assert out["outside_range"] == {
        "observed": None,
        "expected": [None, None, None, None, "above"],
    }
    found = [out["observed"], *out["expected"][:4]]
    assert all(isinstance(x, float) and 0 < x < 10 for x in found)
    ref = pyhf_cls(out["observed"])
    assert ref[0] == pytest.approx(0.05, abs=1e-5)  # the observed limit is pyhf's crossing
    assert pyhf_cls(10.0)[5] > 0.05  # pyhf: +2 sigma CLs still above the level at the bound
    assert 5 < out["observed"] < 7


def test_limits_outside_the_range_get_one_warning_per_side(weak_ws, caplog):
    """A new user's trial: six warning lines for one situation (every limit above the
    range); now one per side, naming the limits and their CLs at the bound."""
    import logging

    with caplog.at_level(logging.WARNING, logger="diffhep"):
        result = run(["upper-limit", str(weak_ws), "--poi-bounds", "0,0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outside_range"]["expected"] == ["above"] * 5
    warned = [r.getMessage() for r in caplog.records if "tested POI range" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("the observed, expected -2 sigma, expected -1 sigma, expected "
                                "median, expected +1 sigma and expected +2 sigma limits are "
                                "above the tested POI range [0, 0.5] (CLs = ")  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffhep"):
        assert run(["upper-limit", str(weak_ws)]).exit_code == 0
    warned = [r.getMessage() for r in caplog.records if "tested POI range" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("the expected +2 sigma limit is above")


def test_cli_poi_bounds_widen_the_range(weak_ws):
    result = run(["upper-limit", str(weak_ws), "--poi-bounds", "0,20"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["poi_range"] == [0.0, 20.0] and out["outside_range"]["expected"][4] is None
    plus2 = out["expected"][4]
    assert 10 < plus2 < 20
    assert pyhf_cls(plus2, bounds=(0, 20))[5] == pytest.approx(0.05, abs=1e-5)


def test_cli_poi_bounds_below_zero_are_reported_apart_from_the_tested_range(weak_ws):
    """A lower POI bound below 0 acts in the fits while the scan starts at 0 (CLs tests
    mu >= 0): the output said only poi_range [0, 20] (a new user's review read it as the
    bounds being ignored); poi_bounds now gives the fits' bounds, and the limit is pyhf's
    crossing with those bounds."""
    result = run(["upper-limit", str(weak_ws), "--poi-bounds", "-1,20"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["poi_range"] == [0.0, 20.0] and out["poi_bounds"] == [-1.0, 20.0]
    assert pyhf_cls(out["observed"], bounds=(-1, 20))[0] == pytest.approx(0.05, abs=1e-5)


def test_api_scan_never_returns_the_last_scan_point():
    """Before: the +2 sigma limit was the last scan point (here 8.0)."""
    ws = diffhep.Workspace(weak_signal_spec())
    model = ws.model()
    scan = np.linspace(0, 8, 17)
    res = diffhep.stats.limits.upper_limit(model, ws.data(model), scan=scan)
    assert res.expected[3] is None and res.outside[4] == "above"
    assert res.expected[4] is None and res.outside[5] == "above"
    obs, exp = oracle.upper_limit(
        pyhf.Workspace(weak_signal_spec()).data(pyhf.Workspace(weak_signal_spec()).model()),
        pyhf.Workspace(weak_signal_spec()).model(),
        scan=scan,
    )
    assert res.observed == pytest.approx(obs, abs=1e-5)
    np.testing.assert_allclose(res.expected[:3], exp[:3], atol=1e-5)


def test_api_scan_outside_the_poi_bounds_is_refused():
    """Before: values above the bound were silently tested at the bound."""
    ws = diffhep.Workspace(weak_signal_spec())
    model = ws.model()
    with pytest.raises(DiffhepError, match=r"outside the POI bounds \[0, 10\]"):
        diffhep.stats.limits.upper_limit(model, ws.data(model), scan=np.linspace(0, 20, 5))


def test_cli_scan_option_and_bad_values(weak_ws):
    result = run(["upper-limit", str(weak_ws), "--scan", "0,20,5"])
    assert result.exit_code == 2 and "outside the POI bounds" in result.output
    assert "--poi-bounds" in result.output  # the fix
    for bad in ("0,10", "a,b,c", "0,10,2.5", "10,0,5"):
        result = run(["upper-limit", str(weak_ws), "--scan", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output
    for bad in ("0", "5,1", "0,inf"):
        result = run(["upper-limit", str(weak_ws), "--poi-bounds", bad])
        assert result.exit_code == 2, (bad, result.output)


@pytest.mark.parametrize("level", ["1.5", "0", "1", "-0.1", "nan"])
def test_cli_level_outside_zero_one_exits_2(weak_ws, level):
    """Before: --level 1.5 gave every limit 0.0."""
    result = run(["upper-limit", str(weak_ws), "--level", level])
    assert result.exit_code == 2, result.output
    assert "level" in result.output and "between 0 and 1" in result.output


def test_cli_unconverged_hypotest_exits_1_naming_the_poi_values(weak_ws, monkeypatch):
    """Issue 20 item 4: the scan's convergence flags were dropped."""
    real = diffhep.stats.limits.cls_scan

    def flaky(model, data, pois, *args, **kwargs):
        vals, conv = real(model, data, pois, *args, **kwargs)
        conv = np.array(conv)
        conv[np.isclose(pois, 2.5)] = False
        return vals, conv

    monkeypatch.setattr(diffhep.stats.limits, "cls_scan", flaky)
    result = run(["upper-limit", str(weak_ws), "--scan", "0,10,5"])
    assert result.exit_code == 1, result.output
    assert "did not converge" in result.output and "2.5" in result.output
    with pytest.raises(FitError, match=r"2\.5"):
        ws = diffhep.Workspace(weak_signal_spec())
        model = ws.model()
        diffhep.stats.limits.upper_limit(model, ws.data(model), scan=np.linspace(0, 10, 5))


def test_unconverged_refinement_hypotest_raises_naming_its_poi_value(weak_ws, monkeypatch):
    """The root finder's hypotests (default: scan, then refine) are checked too: one that did
    not converge stops the limit with its POI value, and the command exits 1."""
    from diffhep.stats import exported, limits

    real, seen = exported.call, []

    def flaky(fn, *args, **kwargs):
        out = real(fn, *args, **kwargs)
        if fn is limits._cls_one:  # the refinement's single hypotests
            seen.append(float(args[1]))
            return (*out[:2], False)
        return out

    monkeypatch.setattr(exported, "call", flaky)
    result = run(["upper-limit", str(weak_ws)])
    assert result.exit_code == 1, result.output
    assert seen and "did not converge" in result.output
    assert f"at POI value(s) {seen[0]:g}" in result.output  # the first refined one, named


def test_cls_poi_value_outside_the_bounds_exits_2(weak_ws):
    """Before: every CLs 1.0 (the fit tested the bound)."""
    for value in ("-1", "11", "nan"):
        result = run(["cls", str(weak_ws), "--poi-value", value])
        assert result.exit_code == 2, result.output
        assert "outside the bounds [0, 10]" in result.output and "fix:" in result.output


def test_scan_in_a_loop_equals_the_batched_scan():
    """The scan's hypothesis tests one after the other (CPU's default) and as one vmapped
    batch (the default on accelerators) give the same CLs, and pyhf's at two of the points."""
    from diffhep.stats.limits import cls_scan

    ws = diffhep.Workspace(weak_signal_spec())
    model = ws.model()
    data = ws.data(model)
    pois = [0.5, 2.0, 5.0, 8.0]
    loop, batched = (cls_scan(model, data, pois, batched=b) for b in (False, True))
    np.testing.assert_allclose(loop[0], batched[0], rtol=1e-10, atol=1e-14)
    assert loop[1].all() and batched[1].all()
    pdf = pyhf.Workspace(weak_signal_spec()).model()
    for i in (0, 2):
        obs, exp = oracle.hypotest(pois[i], data, pdf, test_stat="qtilde", return_expected_set=True)
        ref = [float(obs), *np.asarray(exp, dtype=float).ravel()]
        np.testing.assert_allclose(loop[0][i], ref, rtol=1e-4, atol=1e-8)
