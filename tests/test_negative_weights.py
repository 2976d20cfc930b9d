"""Signed event weights everywhere: histograms and their gradients, the staterror width,
losses, the cut flow, bins with a net yield <= 0 (warning, finite likelihood), the training
weight strategies of the config, and ``diffhep reweight``.

References: central finite differences, brute-force numpy sums, pyhf, hand-computed
strategies."""

from __future__ import annotations

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diffhep.analysis import losses
from diffhep.analysis.cuts import CutSpec, Selection
from diffhep.analysis.histograms import Binning, soft_histogram
from diffhep.analysis.pipeline import Events, Pipeline
from diffhep.analysis.spec import Analysis, Channel
from diffhep.cli import main
from diffhep.io.datasets import split
from diffhep.runs.config import load_config
from diffhep.runs.prepare import _analysis, load_events, prepare
from diffhep.runs.train import train_run
from diffhep.stats.model import Model
from diffhep.weights.weighting import (
    NetYieldWarning,
    apply_strategies,
    apply_strategy,
    check_net_yields,
    effective_sample_size,
)
from oracle import pyhf_numpy


# ------------------------------------------------------------------ histograms
def test_soft_histogram_gradients_with_negative_weights_match_finite_differences():
    """d/d(values, weights, bin logits, bandwidth) of a linear function of (sumw, sumw2)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 0.35, 40)
    w = rng.normal(0.3, 1.0, 40)
    assert (w < 0).sum() > 5
    theta = rng.normal(0, 0.3, 5)
    c1, c2 = rng.normal(size=5), rng.normal(size=5)

    @jax.jit
    def f(x, w, theta, h):
        edges = Binning(theta).edges()
        sumw, sumw2 = soft_histogram(x, edges, h, w)
        return jnp.sum(c1 * sumw) + jnp.sum(c2 * sumw2 * sumw2)

    args = [jnp.asarray(x), jnp.asarray(w), jnp.asarray(theta), jnp.asarray(0.07)]
    grads = jax.grad(f, argnums=(0, 1, 2, 3))(*args)
    eps = 1e-6
    for k, (a, g) in enumerate(zip(args, grads, strict=True)):
        a = np.asarray(a, dtype=np.float64)
        fd = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            up, dn = a.copy(), a.copy()
            up[i] += eps
            dn[i] -= eps
            au, ad = list(args), list(args)
            au[k], ad[k] = jnp.asarray(up), jnp.asarray(dn)
            fd[i] = (f(*au) - f(*ad)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ staterror with signed weights
def _staterror_spec(bkg):
    return {
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "signal",
                        "data": [5.0, 3.0, 2.0],
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            {"name": "staterror_SR", "type": "staterror", "data": [1.0, 0.8, 0.7]},
                        ],
                    },
                    {
                        "name": "bkg",
                        "data": bkg,
                        "modifiers": [
                            {"name": "staterror_SR", "type": "staterror", "data": [3.0, 2.5, 2.0]},
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "SR", "data": [12.0, 3.0, 5.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def test_staterror_width_with_a_negative_sample_matches_pyhf():
    """A sample with sum w < 0 in a bin whose total stays positive: pyhf's relative width
    sqrt(sum_s sumw2_s) / sum_s sumw_s, and the same log-likelihood."""
    import pyhf

    spec = _staterror_spec([10.0, -1.5, 4.0])
    model = Model.from_spec(spec)
    data = np.array([12.0, 3.0, 5.0, *model.auxdata])
    with pyhf_numpy():
        pm = pyhf.Workspace(spec).model()
        for pars in (pm.config.suggested_init(), [1.3, 0.9, 1.2, 0.8]):
            want = float(pm.logpdf(np.array(pars), np.array(data))[0])
            np.testing.assert_allclose(
                float(model.logpdf(jnp.asarray(pars), data)), want, rtol=1e-10
            )
    sigma = np.asarray(model._constraint_terms()[0])
    np.testing.assert_allclose(sigma[1], np.hypot(0.8, 2.5) / 1.5, rtol=1e-12)


def test_staterror_width_when_the_bin_total_is_not_positive():
    """Total nominal <= 0 in a bin: the documented 100% width (pyhf would divide by it)."""
    model = Model.from_spec(_staterror_spec([10.0, -3.0, 4.0]))  # bin 1: 3 - 3 = 0
    sigma = np.asarray(model._constraint_terms()[0])
    assert sigma[1] == 1.0 and np.all(np.isfinite(sigma))
    model = Model.from_spec(_staterror_spec([10.0, -5.0, 4.0]))  # bin 1: -2
    pars = jnp.asarray(model.config.suggested_init())
    data = jnp.concatenate([jnp.array([12.0, 3.0, 5.0]), model.auxdata])
    assert np.asarray(model._constraint_terms()[0])[1] == 1.0
    assert np.isfinite(float(model.logpdf(pars, data)))
    assert np.isfinite(np.asarray(jax.grad(model.logpdf)(pars, data))).all()


# ------------------------------------------------------------------ net yield <= 0
FEATURES = ("x0", "x1")


def _signed_events(n=400, seed=0):
    """Signal and background in x0 in [0, 3); the background's events in [2, 3) have a net
    negative weight (bin 2 of a 3-bin x0 histogram)."""
    rng = np.random.default_rng(seed)
    xs = np.column_stack([rng.uniform(0, 3, n), rng.normal(1, 1, n)]).astype("f4")
    xb = np.column_stack([rng.uniform(0, 3, n), rng.normal(-1, 1, n)]).astype("f4")
    wb = np.where((xb[:, 0] >= 2) & (rng.uniform(size=n) < 0.8), -1.0, 1.0)
    return {"signal": Events(xs, np.full(n, 0.05)), "background": Events(xb, wb * 0.5)}


@pytest.fixture(scope="module")
def neg_pipe():
    analysis = Analysis(
        ("signal", "background"),
        "signal",
        (Channel("SR", 3, "x0", (0.0, 1.0, 2.0, 3.0)),),
        mc_stat=True,
    )
    pipe = Pipeline(analysis, FEATURES)
    events = _signed_events()
    params = pipe.init_params(events, key=jax.random.key(0))
    return pipe, params, events


def test_negative_net_yield_bins_warn_by_name_and_likelihood_stays_finite(neg_pipe):
    pipe, params, events = neg_pipe
    hists = jax.device_get(pipe.histograms(params, events))
    sumw = np.asarray(hists[("SR", "background")][0])
    assert sumw[2] < 0 and np.all(sumw[:2] > 0)
    with pytest.warns(NetYieldWarning) as rec:
        bad = check_net_yields(hists, what="test histograms")
    text = str(rec[0].message)
    assert "test histograms" in text and "channel 'SR' sample 'background' bin 2" in text
    assert "POISSON_FLOOR" in text and "fix:" in text
    assert [(b["sample"], b["bin"]) for b in bad] == [("background", 2), ("(total)", 2)]
    np.testing.assert_allclose(bad[0]["sumw"], sumw[2])
    # the model of these hard histograms: the bin's expected yield is clipped at the Poisson
    # floor; the likelihood and its gradient are finite (exact metrics: see the run test)
    model = pipe.model(hists)
    pars = jnp.asarray(model.config.suggested_init())
    data = model.expected_data(pars)
    assert float(model.expected_actualdata(pars)[2]) < 0 and int(model.n_clipped(pars)) == 1
    assert np.isfinite(float(model.logpdf(pars, data)))
    assert np.all(np.isfinite(np.asarray(jax.grad(model.logpdf)(pars, data))))

    # the CLs loss on soft histograms and its derivative w.r.t. the scale of the background
    # weights, against central finite differences (without staterror, whose finiteness with a
    # bin total <= 0 is checked on the model above and in the staterror tests: 3x cheaper)
    plain = Pipeline(dataclasses.replace(pipe.analysis, mc_stat=False), FEATURES)
    soft = plain.histograms(params, events, 0.3)[("SR", "background")][0]
    assert float(soft[2]) < 0  # the soft histogram keeps the negative bin

    @jax.jit
    def cls(scale):
        bkg = events["background"]
        ev = dict(events, background=Events(bkg.x, bkg.w * scale))
        return plain.loss_terms(params, ev, ("cls",), 0.3)["cls"]

    value, g = jax.value_and_grad(cls)(jnp.asarray(1.0))
    assert np.isfinite(float(value)) and 0 < float(value) < 1
    eps = 1e-5
    fd = (float(cls(jnp.asarray(1.0 + eps))) - float(cls(jnp.asarray(1.0 - eps)))) / (2 * eps)
    np.testing.assert_allclose(float(g), fd, rtol=1e-4)


def test_empty_bins_and_variations_in_the_total():
    """Empty bins are not reported; the total of a bin sums the nominal samples only."""
    hists = {("SR", "signal"): ([1.0, 0.0], [1.0, 0.0]), ("SR", "bkg"): ([2.0, 0.0], [4.0, 0.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_net_yields(hists) == []
        # a variation below -3 in bin 0 is a sample of its own, not part of the total
        hists[("SR", "bkg_up")] = ([-4.0, 0.0], [4.0, 0.0])
    with pytest.warns(NetYieldWarning, match="sample 'bkg_up' bin 0"):
        bad = check_net_yields(hists, samples=("signal", "bkg"))
    assert [b["sample"] for b in bad] == ["bkg_up"]
    with pytest.warns(NetYieldWarning):
        assert "(total)" in [b["sample"] for b in check_net_yields(hists)]


def test_signed_weights_in_soft_yields_bce_and_cut_flow(neg_pipe):
    _, _, events = neg_pipe
    analysis = Analysis(("signal", "background"), "signal", (Channel("SR", 2),))
    pipe = Pipeline(analysis, FEATURES)
    params = pipe.init_params(events, key=jax.random.key(1), hidden=(8,))
    got = pipe.loss_terms(params, events, ("s_sqrt_sb", "bce"), 0.3)
    f = {n: np.asarray(params.observable(events[n].x), np.float64) for n in events}
    w = {n: np.asarray(events[n].w) for n in events}
    s = np.sum(w["signal"] * f["signal"]) + losses.YIELD_EPS
    b = np.sum(w["background"] * f["background"]) + losses.YIELD_EPS
    np.testing.assert_allclose(float(got["s_sqrt_sb"]), (s + b) / s**2, rtol=1e-6)
    bce = (
        -np.sum(w["signal"] * np.log(f["signal"])) / w["signal"].sum()
        - np.sum(w["background"] * np.log1p(-f["background"])) / w["background"].sum()
    )
    np.testing.assert_allclose(float(got["bce"]), bce, rtol=1e-5)
    # cut flow: signed yields after each cut, brute force
    sel = Selection.create(
        [CutSpec("x0", "<", 2.5), CutSpec("x1", ">", -2.0)], FEATURES, events["background"].x
    )
    flow = sel.cutflow({n: (np.asarray(e.x), np.asarray(e.w)) for n, e in events.items()}, FEATURES)
    xb, wb = np.asarray(events["background"].x), w["background"]
    m1 = xb[:, 0] < 2.5
    assert flow[0]["background"]["yield"] == pytest.approx(wb.sum())
    assert flow[1]["background"]["yield"] == pytest.approx(wb[m1].sum())
    assert flow[2]["background"]["yield"] == pytest.approx(wb[m1 & (xb[:, 1] > -2)].sum())


@pytest.mark.parametrize(
    "loss",
    [
        losses.inverse_s_over_sqrt_s_plus_b,
        losses.b_over_s2,
        lambda s, b: losses.inverse_asimov_significance(s, b, 0.3),
    ],
)
@pytest.mark.parametrize("s, b", [(5.0, -2.0), (-1.0, 10.0), (-1.0, -1.0)])
def test_soft_yield_losses_floor_negative_yields(loss, s, b):
    """A soft yield made negative by negative weights counts as 0 (finite, no NaN)."""
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(b))
    assert np.isfinite(float(value)) and all(np.isfinite(float(g)) for g in grads)
    np.testing.assert_allclose(float(value), float(loss(max(s, 0.0), max(b, 0.0))), rtol=1e-12)


# ------------------------------------------------------------------ strategies
def test_strategies_change_the_training_weights_as_documented():
    x = np.arange(6, dtype="f4")[:, None]
    w = np.array([2.0, -1.0, 1.0, 0.5, -0.5, 1.0])  # sum 3
    ev = Events(x, w)
    expect = {
        "signed": (w, np.arange(6)),
        "abs": (np.abs(w) * 3 / 6, np.arange(6)),
        "drop-negative": (np.array([2.0, 1.0, 0.5, 1.0]) * 3 / 4.5, [0, 2, 3, 5]),
        "ignore": (np.full(6, 0.5), np.arange(6)),
    }
    for strategy, (want_w, rows) in expect.items():
        new, info = apply_strategy(ev, strategy)
        np.testing.assert_allclose(new.w, want_w, rtol=1e-12)
        np.testing.assert_array_equal(new.x[:, 0], x[rows, 0])
        assert info["strategy"] == strategy and info["sum_w"] == 3.0
        assert info["negative_fraction_before"] == pytest.approx(2 / 6)
        assert info["ess_before"] == pytest.approx(effective_sample_size(w))
        assert info["ess_after"] == pytest.approx(effective_sample_size(want_w))
    with pytest.raises(ValueError, match="unknown weight strategy"):
        apply_strategy(ev, "clip")
    # the talk's example through the 'learned' strategy: 1/3 for the three events at x = 15
    talk = Events(
        np.array([[15.0], [23.0], [15.0], [15.0], [90.0]], "f4"),
        np.array([1.0, 1.0, 1.0, -1.0, 1.0]),
    )
    new, info = apply_strategy(
        talk, "learned", folds=1, epochs=300, hidden=(16,), learning_rate=0.05
    )
    np.testing.assert_allclose(new.w, [1 / 3, 1, 1 / 3, 1 / 3, 1], atol=0.03)
    assert info["negative_fraction_after"] == 0.0 and new.w.sum() == pytest.approx(3.0)
    # a sample and its variations get the strategy; sets without negative weights are kept
    sets = {"b": ev, "b_up": ev, "s": Events(x, np.ones(6))}
    out, report = apply_strategies(sets, {"b": "abs", "s": "abs"}, {"b": ("b", "b_up")})
    assert set(report) == {"b", "b_up"} and out["s"] is sets["s"]
    np.testing.assert_allclose(out["b_up"].w, expect["abs"][0])


def _npz_config(tmp_path, strategy, epochs=1):
    """Signal and background files; the background has a net negative bin in CR."""
    events = _signed_events(n=600, seed=2)
    files = {}
    for name, ev in events.items():
        files[name] = str(tmp_path / f"{name}.npz")
        np.savez(files[name], x=ev.x, w=ev.w)
    doc = {
        "seed": 1,
        "data": {"files": files, "features": list(FEATURES)},
        "analysis": {
            "samples": [
                {"name": "signal", "role": "signal", "yield": 10},
                {"name": "background", "role": "background", "weights": strategy},
            ],
            "shape_systematics": [],
            "channels": [
                {"name": "SR", "bins": 2},
                {"name": "CR", "bins": 3, "observable": "x0", "edges": [0.0, 1.0, 2.0, 3.0]},
            ],
        },
        "observable": {"hidden": [8]},
        "training": {"epochs": epochs, "batch_size": 200, "loss": "bce"},
    }
    return load_config(text=yaml.safe_dump(doc))


def test_strategy_applies_to_the_training_split_only(tmp_path):
    cfg = _npz_config(tmp_path, "abs")  # no warning: 'abs' training data has no negative bin
    analysis = _analysis(cfg)
    raw = split(load_events(cfg, analysis)[1], cfg.data.split.model_dump(), cfg.seed)
    _, parts, _ = prepare(cfg)
    for k in ("validation", "test"):  # signed weights kept
        for n in ("signal", "background"):
            np.testing.assert_array_equal(parts[k][n].w, raw[k][n].w)
    tb, rb = parts["train"]["background"].w, raw["train"]["background"].w
    assert np.all(tb >= 0) and np.any(rb < 0)
    np.testing.assert_allclose(tb, np.abs(rb) * rb.sum() / np.abs(rb).sum())
    np.testing.assert_array_equal(parts["train"]["signal"].w, raw["train"]["signal"].w)
    rec = parts["training_weights"]
    assert rec["strategies"] == {"signal": "signed", "background": "abs"}
    assert rec["event_sets"]["background"]["negative_fraction_after"] == 0.0


def test_run_warns_on_negative_bins_and_records_the_strategy(tmp_path):
    """Signed training data with a net negative bin: warned at data preparation and for the
    test histograms of workspace.json; the run finishes with finite metrics and records
    the strategy in summary.json."""
    cfg = _npz_config(tmp_path, "signed", epochs=2)
    with pytest.warns(NetYieldWarning) as rec:
        summary = train_run(cfg, tmp_path / "run", progress=False, plots=False)
    texts = [str(r.message) for r in rec]
    assert any(
        t.startswith("training data") and "'CR' sample 'background' bin 2" in t for t in texts
    )
    assert any(t.startswith("test-set histograms") and "workspace.json" in t for t in texts)
    assert all(np.isfinite(summary[k]) for k in ("expected_cls", "z0", "sigma_mu"))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["training_weights"]["strategies"]["background"] == "signed"
    info = saved["training_weights"]["event_sets"]["background"]
    assert info["negative_fraction_before"] == info["negative_fraction_after"] > 0.1
    # report.html states the strategy of every sample, with the numbers of summary.json
    from diffhep.runs.report import write_html

    page = write_html(tmp_path / "run").read_text()
    row = "".join(
        f"<td>{v}</td>"
        for v in ["background", "signed", *(f"{info[k]:.6g}" for k in
                  ("negative_fraction_before", "negative_fraction_after", "ess_before",
                   "ess_after"))]
    )  # fmt: skip
    assert "<h2>Training weights</h2>" in page and f"<tr>{row}</tr>" in page
    assert "<tr><td>signal</td><td>signed</td><td></td>" in page


def test_unknown_strategy_is_a_config_error():
    from diffhep.runs.config import ConfigError

    text = (
        "analysis: {samples: [{name: s, role: signal}, {name: b, role: background, "
        "weights: clip}], channels: [{name: SR, bins: 2}], shape_systematics: []}"
    )
    with pytest.raises(ConfigError, match=r"analysis.samples.1.weights"):
        load_config(text=text)


# ------------------------------------------------------------------ diffhep reweight
@pytest.fixture
def npz(tmp_path):
    from diffhep.problems.weight_toys import gaussian_toy

    x, w = gaussian_toy(3000, seed=1)
    path = tmp_path / "sample.npz"
    np.savez(path, x=x, w=w, run=np.arange(3))
    return path


def _reweight(*args):
    return CliRunner().invoke(main, ["reweight", *map(str, args)])


def test_reweight_cli_writes_the_column_and_the_report(npz, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFHEP_CACHE_DIR", "")
    out = tmp_path / "out.npz"
    # the classifier formulation never gives E[w|x] < 0 (no clipping warning here)
    res = _reweight(
        npz,
        "--out",
        out,
        "--names",
        "x,z,u",
        "--inputs",
        "x",
        "--hidden",
        "8",
        "--epochs",
        "5",
        "--method",
        "classifier",
        "--region",
        "centre=x > -0.5 && x < 0.5",
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    with np.load(out) as f:
        assert set(f.files) == {"x", "w", "run", "w_learned"}
        with np.load(npz) as g:
            np.testing.assert_array_equal(f["w"], g["w"])
            np.testing.assert_array_equal(f["run"], g["run"])
        assert f["w_learned"].shape == f["w"].shape and np.all(f["w_learned"] >= 0)
    report = json.loads((tmp_path / "out_reweight" / "reweight_report.json").read_text())
    assert report["inputs"] == ["x"] and set(report["features"]) == {"x", "z", "u"}
    assert "centre" in report["regions"] and info["column"] == "w_learned"
    md = (tmp_path / "out_reweight" / "reweight_report.md").read_text()
    assert "| u | no |" in md and (tmp_path / "out_reweight" / "plots" / "u.png").is_file()


@pytest.mark.parametrize(
    "make, args, message",
    [
        (None, [], "file not found"),
        (lambda p: np.savez(p, x=np.zeros((3, 1))), [], "no array 'w'"),
        (lambda p: np.savez(p, x=np.zeros((3, 1)), w=[1.0, np.nan, 1.0]), [], "NaN/inf"),
        (lambda p: np.savez(p, x=np.zeros((3, 1)), w=np.ones(2)), [], "weights have shape"),
        (lambda p: np.savez(p, x=np.zeros((3, 1)), w=-np.ones(3)), [], "sum of weights"),
        (
            lambda p: np.savez(p, x=np.zeros((3, 1)), w=np.ones(3), w_learned=np.ones(3)),
            [],
            "exists already",
        ),
        (
            lambda p: np.savez(p, x=np.zeros((3, 2)), w=np.ones(3)),
            ["--inputs", "q"],
            "at --inputs: 'q' is not a feature",
        ),
        (
            lambda p: np.savez(p, x=np.zeros((3, 2)), w=np.ones(3)),
            ["--names", "a"],
            "--names gives 1 names for 2 features",
        ),
        (lambda p: p.write_text("not an npz"), [], "cannot read"),
    ],
)
def test_reweight_cli_bad_input(tmp_path, make, args, message):
    path = tmp_path / "in.npz"
    if make is not None:
        make(path)
    out = tmp_path / "out.npz"
    res = _reweight(path, "--out", out, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and str(path) in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_reweight_cli_bad_region_writes_nothing(npz, tmp_path):
    out = tmp_path / "o.npz"
    res = _reweight(npz, "--out", out, "--epochs", "1", "--hidden", "4", "--region", "r=q > 1")
    assert res.exit_code == 2 and "unknown feature 'q'" in res.output
    assert not out.exists() and not (tmp_path / "o_reweight").exists()


@pytest.mark.slow
def test_negative_weights_study_smoke(tmp_path):
    """The study end to end on a tiny configuration (slow: ~10 trainings)."""
    from diffhep.studies.negative_weights import STRATEGY_LABELS, negative_weights_study

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # net-yield and clipping warnings of tiny samples
        path = negative_weights_study(
            tmp_path / "out",
            seeds=1,
            epochs=2,
            stress=False,
            reduced=False,
            overrides=("data.n_per_blob=400",),
            runs_dir=tmp_path / "runs",
        )
    md = path.read_text()
    for strategy in STRATEGY_LABELS:
        assert f"| {strategy} |" in md
    data = json.loads((tmp_path / "out" / "negative-weights.json").read_text())
    assert set(data["results"]) == {"BCE classifier", "CLs-trained"}
    assert (tmp_path / "out" / "negative-weights.png").is_file()


# ------------------------------------------------------------------ joint vs two-stage report
def _rec(z0, sum_sigma=0.5, p=(0.3, 0.6)):
    check = {
        "sum_ratio": 1.0,
        "sum_sigma": sum_sigma,
        "sum_pull": 0.0,
        "chi2_ndf": {"x1": 1.0, "x2": 1.2},
        "p_value": {"x1": p[0], "x2": p[1]},
        "max_pull": 2.0,
    }
    return {
        "selected": {"z0": z0, "expected_cls": 1e-3},
        "last": {"z0": z0},
        "best_epoch": 3,
        "train_cpu_seconds": None,
        "weights_selected": check,
        "weights_last": check,
    }


def test_joint_findings_are_paired_by_seed_and_count_unbiased_runs():
    """The verdicts of the joint section against hand-computed differences and counts."""
    from diffhep.studies.negative_weights_report import _joint

    full = {
        "learned": [_rec(3.7), _rec(3.8), _rec(3.6)],
        "learned-joint": [_rec(3.75, 1.5), _rec(3.85, -0.2), _rec(3.65, 0.1, (0.01, 0.9))],
    }
    short = {
        "learned": [_rec(3.5), _rec(3.9), _rec(3.4)],
        "learned-joint": [_rec(3.6), _rec(3.7), _rec(3.5)],
    }
    lines = _joint({"BCE classifier": full, "BCE classifier, 15 epochs": short})
    text = "\n".join(lines)
    # full budget: joint - two-stage = +0.05 in every seed
    assert "per seed +0.050, +0.050, +0.050 (higher in every seed)" in text
    # 15 epochs: joint vs two-stage at 60 epochs: -0.1, -0.1, -0.1; vs 15 epochs +0.1, -0.2, +0.1
    assert "per seed -0.100, -0.100, -0.100 (lower in every seed)" in text
    assert "+0.100, -0.200, +0.100 (no consistent difference)" in text
    # joint's sum within 1 sigma in 2 of 3 runs, every feature p > 0.05 in 2 of 3
    assert (
        "joint (selected): sum within 1 sigma in 2/3, shapes consistent (p > 0.05 in every "
        "feature) in 2/3" in text
    )
    assert "| BCE classifier | learned-joint | selected epoch | 1.000 | +0.10 (2/3 within 1) |" in (
        text
    )


def test_weight_check_from_verify_matches_hand_computed_sums():
    from diffhep.studies.negative_weights import _weight_check
    from diffhep.weights.verify import verify

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2))
    w = np.where(rng.uniform(size=2000) < 0.2, -1.0, 1.0)
    new = np.full(2000, 0.62)
    c = _weight_check(verify(x, w, new, names=["a", "b"], inputs=[0, 1], bins=10), 0.62 / 0.6)
    expected = (new.sum() - w.sum()) / np.sqrt(np.sum(w**2))
    np.testing.assert_allclose(c["sum_sigma"], expected, rtol=1e-12)
    assert set(c["chi2_ndf"]) == set(c["p_value"]) == {"a", "b"}
    assert c["max_pull"] >= 0


def test_ttbar_check_features_match_a_loop_over_events():
    """The ttbar check's six features and preselection against a per-event loop over the
    generator's jagged columns; its reference has the signed weights' sum in expectation."""
    from diffhep.problems.ttbar_resonance import generate_chunk
    from diffhep.studies.negative_weights_ttbar import _flat, ttbar_events

    chunk = generate_chunk("ttbar", 300, np.random.default_rng(5))
    x, keep = _flat(chunk)
    njet, jet = chunk["Jet"]
    mu_n, mu = chunk["Muon"]
    el = chunk["Electron"][1]
    rows, start, i_mu, i_el = [], 0, 0, 0
    for i, n in enumerate(njet):
        pt, tag = jet["pt"][start : start + n], jet["btagDeepFlavB"][start : start + n]
        start += n
        if mu_n[i]:
            lep, i_mu = mu["pt"][i_mu], i_mu + 1
        else:
            lep, i_el = el["pt"][i_el], i_el + 1
        good = pt > 30
        if good.sum() >= 4 and lep > 30 and chunk["MET_pt"][i] > 20:
            btags = (good & (tag > 0.3)).sum()
            rows.append([chunk["MET_pt"][i], lep, pt[good].sum(), good.sum(), btags, pt.max()])
    assert keep.sum() == len(rows) > 50
    np.testing.assert_allclose(x, np.asarray(rows, np.float32), rtol=1e-6)
    ev, ref = ttbar_events(4000, 0)
    w = ev["background"].w
    assert 0.1 < np.mean(w < 0) < 0.2
    np.testing.assert_allclose(ref, 0.7 * np.abs(w))
    # E[ref] = E[w]: the sums agree within the signed sum's uncertainty
    assert abs(ref.sum() - w.sum()) < 3 * np.sqrt(np.sum(w**2))


def test_cli_joint_only_runs_the_joint_form_of_the_study(monkeypatch, tmp_path):
    """``diffhep study negative-weights --joint-only`` is the study's joint-only form (the
    command its document names); the flag is refused for the other studies."""
    import diffhep.studies.negative_weights as nw

    seen = {}

    def fake(out, **kwargs):
        seen.update(kwargs)
        return tmp_path / "negative-weights-joint.md"

    monkeypatch.setattr(nw, "negative_weights_study", fake)
    res = CliRunner().invoke(
        main, ["study", "negative-weights", "--joint-only", "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert seen["joint_only"] is True and seen["seeds"] == 3 and seen["epochs"] == 60
    res = CliRunner().invoke(main, ["study", "cuts", "--joint-only"])
    assert res.exit_code == 2 and "--joint-only applies to the negative-weights" in res.output
