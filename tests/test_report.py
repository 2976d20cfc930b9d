"""Run artefacts for people: the self-contained HTML report, experiment-style plots (mplhep
without global side effects), the uncertainty band, and ``diffhep.load_run`` histograms
(``hist.Hist``) against workspace.json and a brute-force recomputation."""

from __future__ import annotations

import base64
import html
import json
from html.parser import HTMLParser

import hist
import matplotlib
import numpy as np
import pytest

import diffhep
from diffhep.errors import FitError
from diffhep.plotting import runs as plotting
from diffhep.runs.config import ConfigError, load_config
from diffhep.runs.report import _band
from diffhep.stats import covariance
from diffhep.stats import diagnostics as stats_diagnostics
from diffhep.stats.workspace import Workspace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.pre, self.tables = [], [], [], 0
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag in ("script", "link", "iframe"):
            self.links.append(tag)
        self._in_pre = tag == "pre"
        self.tables += tag == "table"

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._in_pre:
            self.pre.append(data)


@pytest.fixture(scope="module")
def diag_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with the report's fit diagnostics (off in the tests' trainings:
    ``DIFFHEP_REPORT_DIAGNOSTICS=0``), written as ``diffhep evaluate`` writes them."""
    import shutil

    from diffhep.runs.diagnostics import write_diagnostics
    from diffhep.runs.report import write_html

    run = tmp_path_factory.mktemp("diag_run") / "run"
    shutil.copytree(tiny_run, run)
    assert write_diagnostics(run, run / "plots", style="ATLAS") == {}
    write_html(run)
    return run


def test_html_report_embeds_every_plot(diag_run):
    page = _Page()
    page.feed((diag_run / "report.html").read_text(encoding="utf-8"))
    plots = {p.name: p.read_bytes() for p in (diag_run / "plots").glob("*.png")}
    expected = {"training.png", "cuts.png", "histograms_SR.png", "cutflow.png", "roc.png",
                "observable_vs_features.png", "observable_2d.png",
                "pulls.png", "ranking.png", "yields_fit.png"}  # fmt: skip
    assert set(plots) == expected
    decoded = {}
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix) :], validate=True)
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        decoded[img["alt"]] = data
    assert decoded == plots  # every plot, byte for byte, and nothing else
    assert page.links == []  # no external resources
    assert "".join(page.pre) == (diag_run / "config.yaml").read_text()
    summary = json.loads((diag_run / "summary.json").read_text())
    text = (diag_run / "report.html").read_text()
    assert f"{summary['expected_cls']:.6g}" in text
    assert html.escape(summary["selection"]["expression"]) in text
    # metrics, yields, variation templates, bins of SR, training weights, cut flow; fit
    # diagnostics: pulls, unconstrained parameters, ranking, pre-/post-fit yields of SR
    assert page.tables == 10
    assert "<h2>Training weights</h2>" in text


def test_plot_styles_are_contexts(tmp_path):
    before = dict(matplotlib.rcParams)
    edges, samples = [0, 1, 2, 3], {"b": [5.0, 3.0, 1.0], "s": [0.5, 1.0, 2.0]}
    band = plotting.uncertainty_band([5.5, 4.0, 3.0], [([6, 4.2, 3], [5, 3.9, 3])], [1, 1, 1])
    images = {}
    for style in plotting.STYLES:
        path = tmp_path / f"{style}.png"
        plotting.plot_stacked(edges, samples, "s", path, band=band, style=style)
        images[style] = path.read_bytes()
        assert dict(matplotlib.rcParams) == before
    assert len(set(images.values())) == len(plotting.STYLES)  # every style looks different
    with pytest.raises(ValueError, match="unknown plot style 'D0'"):
        plotting.plot_stacked(edges, samples, "s", tmp_path / "x.png", style="D0")
    with pytest.raises(ConfigError, match=r"report\.style"):
        load_config(
            text="data: {generator: blobs}\nanalysis: {channels: [{name: SR, bins: 2}], samples: "
            "[{name: s, role: signal}, {name: b, role: background}]}\nreport: {style: D0}"
        )


def test_uncertainty_band_brute_force():
    rng = np.random.default_rng(3)
    total = rng.uniform(5, 10, 6)
    shifts = [tuple(total + rng.normal(0, 1, 6) for _ in range(2)) for _ in range(4)]
    stat = rng.uniform(0, 1, 6)
    lo, hi = plotting.uncertainty_band(total, shifts, stat)
    for k in range(6):
        ups = [max(a[k] - total[k], b[k] - total[k], 0.0) for a, b in shifts]
        downs = [min(a[k] - total[k], b[k] - total[k], 0.0) for a, b in shifts]
        assert hi[k] == pytest.approx(total[k] + np.sqrt(stat[k] ** 2 + sum(u * u for u in ups)))
        assert lo[k] == pytest.approx(total[k] - np.sqrt(stat[k] ** 2 + sum(d * d for d in downs)))


def test_band_of_a_run_follows_its_workspace(tiny_run):
    """The band drawn for the run: stat from the staterror widths, the normsys from its
    lo/hi factors, the histosys from its templates (all read from workspace.json)."""
    from diffhep.runs.prepare import restore_run

    _, pipe, _, _ = restore_run(tiny_run)
    ws = json.loads((tiny_run / "workspace.json").read_text())
    (channel,) = ws["channels"]
    res = diffhep.load_run(tiny_run)
    hists = {("SR", n): (h.values(), h.variances()) for n, h in res.hists["SR"].items()}
    total = sum(np.asarray(s["data"]) for s in channel["samples"])
    shifts, stat2 = [], 0.0
    for s in channel["samples"]:
        for m in s["modifiers"]:
            if m["type"] == "staterror":
                stat2 = stat2 + np.asarray(m["data"]) ** 2
            elif m["type"] == "normsys":
                d = np.asarray(s["data"])
                shifts.append(
                    (total + (m["data"]["hi"] - 1) * d, total + (m["data"]["lo"] - 1) * d)
                )
            elif m["type"] == "histosys":
                d = np.asarray(s["data"])
                shifts.append(
                    tuple(total - d + np.asarray(m["data"][k]) for k in ("hi_data", "lo_data"))
                )
    assert len(shifts) == 2
    lo, hi = _band(pipe, hists, "SR", total)
    ref_lo, ref_hi = plotting.uncertainty_band(total, shifts, np.sqrt(stat2))
    np.testing.assert_allclose(lo, ref_lo, rtol=1e-12)
    np.testing.assert_allclose(hi, ref_hi, rtol=1e-12)
    assert (hi >= total).all() and (hi > total).any() and (lo < total).any()


def test_load_run_histograms(tiny_run):
    res = diffhep.load_run(tiny_run)
    assert res.config == load_config(tiny_run / "config.yaml")
    assert res.metrics == json.loads((tiny_run / "summary.json").read_text())
    assert [h["epoch"] for h in res.history] == [1, 2]
    ws = json.loads((tiny_run / "workspace.json").read_text())
    edges = json.loads((tiny_run / "model.json").read_text())["edges"]
    for channel in ws["channels"]:
        hs = res.hists[channel["name"]]
        for s in channel["samples"]:
            h = hs[s["name"]]
            assert isinstance(h, hist.Hist) and h.storage_type is hist.storage.Weight
            np.testing.assert_allclose(h.axes[0].edges, edges[channel["name"]], rtol=0)
            np.testing.assert_allclose(h.values(), s["data"], rtol=1e-14)
            for m in s["modifiers"]:
                if m["type"] == "staterror":  # the width is sqrt(sum w^2)
                    np.testing.assert_allclose(np.sqrt(h.variances()), m["data"], rtol=1e-14)
                if m["type"] == "histosys":
                    np.testing.assert_allclose(
                        hs["background_up"].values(), m["data"]["hi_data"], rtol=1e-14
                    )
                    np.testing.assert_allclose(
                        hs["background_down"].values(), m["data"]["lo_data"], rtol=1e-14
                    )
    # brute force: the test events through the saved model, numpy histograms with overflow
    from diffhep.runs.prepare import restore_run

    _, _, parts, params = restore_run(tiny_run)
    e = np.asarray(edges["SR"])
    for name, ev in parts["test"].items():
        x, w = np.asarray(ev.x), np.asarray(ev.w)
        keep = np.asarray(params.selection.passes(x))
        score = np.asarray(params.observable(x), dtype=np.float64)
        idx = np.clip(np.searchsorted(e, score, side="right") - 1, 0, len(e) - 2)[keep]
        h = res.hists["SR"][name]
        np.testing.assert_allclose(h.values(), np.bincount(idx, w[keep], 4), rtol=1e-12)
        np.testing.assert_allclose(h.variances(), np.bincount(idx, w[keep] ** 2, 4), rtol=1e-12)


def test_score_plots_show_the_selected_events(tiny_run, tmp_path, monkeypatch):
    """The ROC curve (and its AUC) is that of the events the hard selection keeps: compared
    with roc_curve on a brute-force selection of the test events."""
    from diffhep.runs.prepare import restore_run
    from diffhep.runs.report import write_plots

    _, pipe, parts, params = restore_run(tiny_run)
    seen = {}
    roc = plotting.plot_roc

    def spy(ss, ws, sb, wb, path, **kw):
        seen["args"] = (ss, ws, sb, wb)
        return roc(ss, ws, sb, wb, path, **kw)

    monkeypatch.setattr(plotting, "plot_roc", spy)
    res = diffhep.load_run(tiny_run).hists["SR"]
    hists = {("SR", n): (h.values(), h.variances()) for n, h in res.items()}
    auc = write_plots(tmp_path, pipe, params, parts["test"], hists)["auc"]
    a = pipe.analysis
    picked = {}
    for name in a.samples:
        x, w = np.asarray(parts["test"][name].x), np.asarray(parts["test"][name].w)
        keep = np.asarray(params.selection.passes(x))
        assert 0 < keep.sum() < len(x)  # the selection does select
        picked[name] = (np.asarray(params.observable(x[keep])), w[keep])
    sb = np.concatenate([picked[n][0] for n in a.backgrounds])
    wb = np.concatenate([picked[n][1] for n in a.backgrounds])
    _, _, ref = plotting.roc_curve(*picked[a.signal], sb, wb)
    np.testing.assert_allclose(seen["args"][0], picked[a.signal][0], rtol=1e-6)
    np.testing.assert_array_equal(seen["args"][3], wb)
    assert auc == pytest.approx(max(ref, 1.0 - ref), abs=1e-12)  # (the side that selects)


def test_test_pass_gives_the_plot_events_of_the_events_in_memory(tiny_run):
    """The accumulator of a streamed run's test pass (runs.streaming_finish), fed an
    in-memory run's test events in chunks of 300 (two features: every event set kept; a '>'
    and a window cut), gives plot_events' cut flow, selected events (all: fewer than k) and
    scores, and an AUC from the binned logit within 1e-3 of the per-event one."""
    from diffhep.runs import streaming_finish
    from diffhep.runs.plots import plot_events
    from diffhep.runs.prepare import restore_run

    _, pipe, parts, params = restore_run(tiny_run)
    test = streaming_finish.TestPass(pipe, params, 300, seed=0)
    for n in pipe.analysis.event_sets:
        x, w = np.asarray(parts["test"][n].x), np.asarray(parts["test"][n].w)
        for i in range(0, len(w), 300):
            test(x[i : i + 300], {n: w[i : i + 300]})
    got, ref = test.plot_events(), plot_events(pipe, params, parts["test"])
    assert [r["cut"] for r in got.cutflow] == [r["cut"] for r in ref.cutflow]
    for a, b in zip(got.cutflow, ref.cutflow, strict=True):
        for s in pipe.analysis.samples:
            assert a[s]["events"] == b[s]["events"]
            assert a[s]["yield"] == pytest.approx(b[s]["yield"], rel=1e-12)
    assert list(got.events) == list(ref.events) == list(pipe.analysis.event_sets)
    for n, (x, w) in ref.events.items():
        np.testing.assert_array_equal(got.events[n][0], x)
        np.testing.assert_array_equal(got.events[n][1], w)
    for n, score in ref.scores.items():
        np.testing.assert_allclose(got.scores[n], score, rtol=1e-5, atol=1e-7)
    assert ref.cutflow[-1]["background"]["events"] < ref.cutflow[0]["background"]["events"]
    auc = plotting.roc_curve(*got.roc)[2]
    assert auc == pytest.approx(plotting.roc_curve(*ref.roc)[2], abs=1e-3)


def test_load_run_of_a_non_run_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a finished diffhep run"):
        diffhep.load_run(tmp_path)


def test_a_failed_plot_leaves_the_run_incomplete_not_finished(
    tiny_run, diag_run, tmp_path, monkeypatch
):
    """A plot that raises (issue 18 item 2: the report crashed on a constant feature) or a
    fit diagnostic that fails keeps the other artefacts, but summary.json says "incomplete"
    and names them, the report shows it, ``run.ranking`` says so, and the command exits 1;
    evaluating again without the faults gives "finished" and the diagnostics back."""
    import json
    import shutil

    from click.testing import CliRunner

    from diffhep.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.setenv("DIFFHEP_REPORT_DIAGNOSTICS", "1")  # as users have them

    def broken(*args, **kwargs):
        raise ValueError("'list' argument must have no negative elements")

    def no_ranking(*args, **kwargs):
        raise FitError("3 impact fit(s) did not converge (parameters: bkg_norm)")

    monkeypatch.setattr(plotting, "plot_roc", broken)
    monkeypatch.setattr(stats_diagnostics, "ranking", no_ranking)  # a failed fit diagnostic
    res = CliRunner().invoke(main, ["evaluate", str(run)])
    assert res.exit_code == 1, res.output
    assert "incomplete" in res.output and "roc" in res.output
    assert "diagnostics.json" in res.output and "impact fit" in res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "incomplete"
    assert any("roc" in k for k in summary["failed"])
    assert "did not converge" in summary["failed"]["diagnostics.json"]
    assert (run / "report.html").is_file() and (run / "workspace.json").is_file()
    assert not (run / "diagnostics.json").exists() and not (run / "plots/pulls.png").exists()
    page = (run / "report.html").read_text()
    assert "impact fit(s) did not converge" in page and "Fit diagnostics" not in page
    with pytest.raises(ConfigError, match=r"no fit diagnostics \(they failed: FitError"):
        _ = diffhep.load_run(run).ranking
    monkeypatch.undo()
    monkeypatch.setenv("DIFFHEP_REPORT_DIAGNOSTICS", "1")
    res = CliRunner().invoke(main, ["evaluate", str(run)])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "failed" not in summary
    _assert_close(diffhep.load_run(run).ranking, diffhep.load_run(diag_run).ranking)
    assert (run / "plots" / "ranking.png").is_file() and "Fit diagnostics" in (
        run / "report.html"
    ).read_text()


class _Tables(HTMLParser):
    """Every table of a page as ``{preceding heading: rows of cell texts}``."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self._cell, self._in = {}, "", None, False

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self._in, self.heading = True, ""
        elif tag == "table":
            self.tables[self.heading] = []
        elif tag == "tr":
            self.tables[self.heading].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[self.heading][-1].append(self._cell)
            self._cell = None
        elif tag in ("h2", "h3"):
            self._in = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._in:
            self.heading += data


def _assert_close(a, b, path="") -> None:
    """Nested dicts/lists equal, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_run_diagnostics_are_the_library_on_its_workspace(diag_run):
    """``run.pulls``/``ranking``/``yields`` (diagnostics.json) are diffhep.stats' pulls,
    ranking (batched refits) and yields of the run's workspace.json on its Asimov data at the
    nominal parameters, and that fit is the training's: its post-fit uncertainties are the
    summary's sigma_mu and sigma_<parameter> (inverse Fisher information at mu = 1), every
    pull is 0 and the post-fit yields are the workspace's histograms."""
    run = diffhep.load_run(diag_run)
    spec = json.loads((diag_run / "workspace.json").read_text())
    model = Workspace(spec).model()
    data = model.expected_data(covariance.nominal_parameters(model))
    post = covariance.postfit(model, data)
    r = stats_diagnostics.ranking(model, data, post)
    _assert_close(run.pulls, stats_diagnostics.pulls(model, post))
    _assert_close(run.ranking["ranking"], r.to_list())
    assert run.ranking["poi"] == "mu" and run.ranking["method"] == "refit"
    assert run.ranking["poi_bestfit"] == pytest.approx(r.poi_bestfit, rel=1e-9)
    pre, postfit = (
        covariance.prefit_yields(model, data),
        covariance.postfit_yields(model, data, post),
    )
    _assert_close(run.yields, {"prefit": pre, "postfit": postfit})
    assert run.diagnostics["data"] == "asimov" and run.diagnostics["poi_value"] == 1.0
    # the references of the training (summary.json) and of the workspace itself
    summary = run.metrics
    assert run.ranking["poi_bestfit"] == pytest.approx(1.0, abs=1e-6)
    assert run.ranking["poi_uncertainty"] == pytest.approx(summary["sigma_mu"], rel=1e-6)
    assert run.ranking["poi_at_bound"] is None and run.ranking["notes"] == []  # (as ranking's)
    params = run.pulls["parameters"]
    assert {p["modifier"] for p in params} == {"histosys", "normsys", "staterror"}
    for p in params:
        assert p["pull"] == pytest.approx(0.0, abs=1e-6)
        assert p["uncertainty"] == pytest.approx(summary[f"sigma_{p['name']}"], rel=1e-6)
    (channel,) = spec["channels"]
    yields = run.yields["postfit"]["SR"]
    for s in channel["samples"]:
        np.testing.assert_allclose(yields["samples"][s["name"]]["yields"], s["data"], rtol=1e-9)
    np.testing.assert_allclose(yields["data"], yields["total"]["yields"], rtol=1e-9)
    ranked = [x["parameter"] for x in run.ranking["ranking"]]
    assert ranked[0] in ("bkg_shape", "bkg_norm") and set(ranked) == {
        n for n in model.config.par_names if n != "mu"
    }
    assert any(x["postfit_down"] > 0 > x["postfit_up"] for x in run.ranking["ranking"])


def test_an_impact_refit_that_fails_leaves_the_linear_ranking_not_nothing(monkeypatch):
    """A new user's trial: one impact refit that did not converge (staterror_SR[1]) lost the
    whole diagnostics.json (pulls and yields too), the run exited 1 and the fix named an
    option train/evaluate do not have. Now the ranking is the linear (covariance) one, with
    the refit's message in its notes."""
    from diffhep.errors import FitError
    from diffhep.runs import diagnostics as run_diagnostics
    from diffhep.stats import diagnostics
    from diffhep.stats.workspace import example_spec

    real = diagnostics.ranking

    def refit_fails(model, data, post, method="refit", **kw):
        if method == "refit":
            raise FitError("1 impact fit(s) did not converge (parameters: x)", fix="...")
        return real(model, data, post, method=method, **kw)

    monkeypatch.setattr(diagnostics, "ranking", refit_fails)
    doc = run_diagnostics.compute(example_spec(), observed=True)
    assert doc["ranking"]["method"] == "covariance" and doc["ranking"]["ranking"]
    assert doc["ranking"]["notes"][0].startswith("1 impact fit(s) did not converge")
    assert doc["pulls"] and doc["yields"]["postfit"]


def test_report_shows_the_run_diagnostics(diag_run):
    """report.html's fit-diagnostics tables hold the numbers of ``diagnostics.json``, with its
    three figures embedded in that section."""
    run = diffhep.load_run(diag_run)
    text = (diag_run / "report.html").read_text(encoding="utf-8")
    page = _Tables()
    page.feed(text)
    t = page.tables
    g = "{:.6g}".format
    assert t["Pulls"][1:] == [[p["name"], p["modifier"], g(p["pull"]), g(p["constraint"])]
                              for p in run.pulls["parameters"]]  # fmt: skip
    (mu,) = run.pulls["normfactors"]
    assert t["Unconstrained parameters"][1:] == [
        ["mu", "normfactor", f"{g(mu['bestfit'])} ± {g(mu['uncertainty'])}"]
    ]
    keys = ("prefit_up", "prefit_down", "postfit_up", "postfit_down")
    assert t["Ranking (impact on mu)"][1:] == [[r["parameter"], *(g(r[k]) for k in keys)]
                                               for r in run.ranking["ranking"]]  # fmt: skip
    rows = {r[0]: r[1:] for r in t["Yields in SR (pre- and post-fit)"][1:]}
    for label in ("prefit", "postfit"):
        res = run.yields[label]["SR"]
        for name, e in [*res["samples"].items(), ("total", res["total"])]:
            row = rows[f"{name} ({label[:-3]}-fit)"]
            cells = [f"{g(y)} ± {g(s)}" for y, s in zip(e["yields"], e["stdev"], strict=True)]
            assert row == [*cells, f"{g(e['sum'])} ± {g(e['sum_stdev'])}"]
    assert rows["data"] == [*(g(d) for d in run.yields["postfit"]["SR"]["data"]),
                            g(run.yields["postfit"]["SR"]["data_sum"])]  # fmt: skip
    section = text[text.index("<h2>Fit diagnostics</h2>") : text.index("<h2>Plots</h2>")]
    for name in ("pulls.png", "ranking.png", "yields_fit.png"):
        data = base64.b64encode((diag_run / "plots" / name).read_bytes()).decode("ascii")
        assert f'alt="{name}" src="data:image/png;base64,{data}"' in section
        assert text.count(f'alt="{name}"') == 1


def test_run_with_observed_data_fits_them(tiny_run, tmp_path):
    """With a data sample (workspace.json's observations are its histograms) the diagnostics
    are those of ``diffhep pulls``/``ranking``/``yields`` on the workspace as written: its
    observations, not the Asimov data; the report says which."""
    import shutil

    from diffhep.runs.diagnostics import write_diagnostics
    from diffhep.runs.report import write_html

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    spec = json.loads((run / "workspace.json").read_text())
    spec["observations"][0]["data"] = [0.0, 58.0, 41.0, 0.0]
    (run / "workspace.json").write_text(json.dumps(spec))
    assert write_diagnostics(run, run / "plots", observed=True) == {}
    write_html(run)
    res = diffhep.load_run(run)
    ws = Workspace(spec)
    model = ws.model()
    data = ws.data(model)
    post = covariance.postfit(model, data)
    _assert_close(res.pulls, stats_diagnostics.pulls(model, post))
    _assert_close(res.ranking["ranking"], stats_diagnostics.ranking(model, data, post).to_list())
    _assert_close(res.yields["postfit"], covariance.postfit_yields(model, data, post))
    assert res.diagnostics["data"] == "observed" and res.diagnostics["poi_value"] is None
    assert res.yields["postfit"]["SR"]["data"] == [0.0, 58.0, 41.0, 0.0]
    assert max(abs(p["pull"]) for p in res.pulls["parameters"]) > 0.05
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "to the observed data (workspace.json" in page


def test_run_without_diagnostics_says_how_to_get_them(tiny_run):
    assert not (tiny_run / "diagnostics.json").exists()  # DIFFHEP_REPORT_DIAGNOSTICS=0
    assert "Fit diagnostics" not in (tiny_run / "report.html").read_text()
    res = diffhep.load_run(tiny_run)
    assert res.diagnostics is None
    with pytest.raises(ConfigError, match=r"(?s)no fit diagnostics.*diffhep evaluate"):
        _ = res.pulls


def test_diagnostics_switches(monkeypatch):
    """``report.diagnostics`` and ``DIFFHEP_REPORT_DIAGNOSTICS=0`` (the tests' setting)."""
    from diffhep.runs.config import ReportConfig
    from diffhep.runs.diagnostics import enabled

    assert ReportConfig().diagnostics is True  # users get them by default
    monkeypatch.delenv("DIFFHEP_REPORT_DIAGNOSTICS")
    assert enabled(True) and not enabled(False)
    monkeypatch.setenv("DIFFHEP_REPORT_DIAGNOSTICS", "0")
    assert not enabled(True)
